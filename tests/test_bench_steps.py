"""bench.steps on a tiny random RoBERTa: train, eval and private rows timed on the same Poisson batches.

The tiny model has no tokenizer; the bench needs only its mask and pad ids, so a namespace holds them."""
from __future__ import annotations

import statistics
from types import SimpleNamespace

import pytest
import torch

from jrft_cli.bench.rows import method_rows
from jrft_cli.bench.steps import step_sections
from jrft_cli.bench.workload import Workload
from jrft_cli.tasks.evaluation import TaskInfo
from jrft_cli.tasks.glue import make_collate

MASK, PAD = 4, 1
TOKENIZER = SimpleNamespace(mask_token_id=MASK, pad_token_id=PAD)


@pytest.fixture(scope="module")
def tiny_roberta(tmp_path_factory) -> str:
    from transformers import RobertaConfig, RobertaModel

    torch.manual_seed(0)
    cfg = RobertaConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=48, max_position_embeddings=40, pad_token_id=PAD)
    path = tmp_path_factory.mktemp("tiny-roberta")
    RobertaModel(cfg, add_pooling_layer=False).save_pretrained(path)
    return str(path)


def tiny_data(n: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        length = int(torch.randint(3, 9, (1,), generator=g))
        ids = torch.randint(5, 60, (length,), generator=g).tolist()
        ids[0], ids[-1] = 0, MASK
        out.append({"input_ids": ids, "attention_mask": [1] * length, "labels": i % 2})
    return out


def test_every_row_in_every_section_on_the_same_batches(tiny_roberta):
    from jrft_cli.dp.samplers import sampler_label

    rows = method_rows(["jr", "lora"], {}, d=8, seed=0, naive=True)
    work = Workload(tiny_data(40), make_collate(TOKENIZER, False), batch_size=8, micro_batch_size=4, poisson=True)
    drawn: list[int] = []
    draw = work.draw

    def spy(r: int) -> None:
        draw(r)
        drawn.append(len(work.items))
    work.draw = spy
    out = step_sections(rows, lambda row: row.build(tiny_roberta, TOKENIZER, 2, 0), ["private", "eval", "train"],
                        work, TaskInfo(False, ["accuracy"], "accuracy"), torch.device("cpu"), rounds=2, warmup=1)
    assert list(out) == ["train", "eval", "private"]
    for section in out.values():
        assert [r["label"] for r in section] == ["jr", "lora", "naive_jr"]
        for r in section:
            assert r["rounds"] == 2 and r["warmup"] == 1 and len(r["times_ms"]) == 2
            assert r["q1_ms"] <= r["median_ms"] <= r["q3_ms"] and r["memory_kind"] == "rss_growth"
            # examples/s: median over the timed rounds of the round's batch over the call's time
            want = statistics.median(n / (ms / 1e3) for n, ms in zip(drawn[1:], r["times_ms"]))
            assert r["examples_per_s"] == pytest.approx(want) and r["mean_batch"] == statistics.mean(drawn[1:])
    assert drawn[0] > 0 and len(drawn) == 3                     # round 0 (warm-up) + 2 timed rounds
    train = {r["label"]: r for r in out["train"]}
    assert train["jr"]["trainable_params"] == 8 + 32 * 2 + 2 == train["naive_jr"]["trainable_params"]
    assert train["jr"]["lr"] == rows[0].lr and train["jr"]["options"]["d"] == 8
    private = {r["label"]: r for r in out["private"]}
    assert private["jr"]["path"] == sampler_label("jr") and private["lora"]["path"] == sampler_label("lora")
    assert private["naive_jr"]["path"].startswith("opacus GradSampleModule")
    assert private["jr"]["lr"] == rows[0].dp_lr and private["jr"]["noise_multiplier"] == 1.0


def test_nothing_asked_nothing_built():
    assert step_sections([], lambda row: None, ["train"], None, None, torch.device("cpu"), rounds=1, warmup=1) == {}


def test_run_axes_rows_step_on_their_orderings_batches_at_their_precision(tiny_roberta):
    from jrft_cli.bench.rows import run_axes
    from jrft_cli.training.loop import attention_implementation, autocast_dtype

    cpu = torch.device("cpu")
    axes = run_axes(["fp32", "bf16"], ["random", "grouped"])
    rows = method_rows(["linear"], {}, d=8, seed=0, naive=False, axes=axes)
    work = Workload(tiny_data(40), make_collate(TOKENIZER, False), batch_size=4, micro_batch_size=4, poisson=True,
                    orderings=("random", "grouped"), window=3)

    def build(row):
        return row.build(tiny_roberta, TOKENIZER, 2, 0, attention_implementation(autocast_dtype(row.precision, cpu), cpu))
    out = step_sections(rows, build, ["train", "eval", "private"], work, TaskInfo(False, ["accuracy"], "accuracy"),
                        cpu, rounds=2, warmup=1)
    assert [r["label"] for r in out["train"]] == ["linear fp32 random", "linear fp32 grouped", "linear bf16 random",
                                                 "linear bf16 grouped"]
    # eval and private rows only for the random ordering (evaluation sorts; DP draws Poisson batches)
    assert [r["label"] for r in out["eval"]] == [r["label"] for r in out["private"]] == \
        ["linear fp32 random", "linear bf16 random"]
    for r in out["train"]:
        assert r["batches"] == "loop" and r["examples"] == [12, 12]      # 3 loop batches of 4 per call
        assert r["attn_implementation"] == ("eager" if r["precision"] == "bf16" else "sdpa")
        assert r["examples_per_s"] == pytest.approx(statistics.median(12e3 / t for t in r["times_ms"]))
    assert all(r["batches"] == "round" for r in out["eval"] + out["private"])
