"""The training loop: epoch order, schedule, loss, gradient accumulation, determinism, evaluation and
the run summary."""
from __future__ import annotations

import math

import pytest
import torch

from jrft_cli.tasks.glue import make_collate
from jrft_cli.training import loop
from jrft_cli.training.loop import (LoopConfig, Trainer, attention_implementation, autocast_dtype, epoch_batches,
                                    epoch_order, grouped_batches, precision_name, resolve_device)
from jrft_cli.tasks.evaluation import TaskInfo, evaluate, loss_fn, predict
from jrft_cli.core.registry import apply_method

SST2 = TaskInfo(False, ["accuracy"], "accuracy")
CPU = torch.device("cpu")


def test_epoch_order_is_a_pure_seeded_permutation():
    a = epoch_order(50, seed=3, epoch=0)
    assert sorted(a) == list(range(50))
    assert a == epoch_order(50, seed=3, epoch=0)
    assert a != epoch_order(50, seed=3, epoch=1) and a != epoch_order(50, seed=4, epoch=0)


def test_loss_fn_classification_and_regression():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    expected = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-1))) / 2
    assert loss_fn(logits, torch.tensor([0, 1]), False).item() == pytest.approx(expected)
    pred = torch.tensor([[1.0], [3.0]])
    assert loss_fn(pred, torch.tensor([2.0, 5.0]), True).item() == pytest.approx((1 + 4) / 2)
    assert loss_fn(pred, torch.tensor([2.0, 5.0]), True, reduction="sum").item() == pytest.approx(5.0)


def test_devices_and_precision_on_cpu():
    from jrft_cli.core.errors import JrftError

    assert resolve_device("cpu") == CPU
    if not torch.cuda.is_available():
        assert resolve_device("auto") == CPU
        with pytest.raises(JrftError, match="no CUDA device is available; use hardware=cpu"):
            resolve_device("cuda")
    assert autocast_dtype("fp32", CPU) is None and autocast_dtype("bf16", CPU) == torch.bfloat16
    with pytest.raises(JrftError, match=r"^hardware.precision=fp16 is not supported on CPU; use bf16"):
        autocast_dtype("fp16", CPU)
    assert [precision_name(autocast_dtype(p, CPU)) for p in ("fp32", "bf16")] == ["fp32", "bf16"]
    # bf16 on CPU loads eager attention (SDPA's bf16 backward is slow there); everything else the default
    assert attention_implementation(torch.bfloat16, CPU) == "eager"
    assert attention_implementation(None, CPU) is None
    assert attention_implementation(torch.bfloat16, torch.device("cuda")) is None


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bf16_only_on_a_cpu_with_native_bf16(monkeypatch, native):
    """The capability probe is mocked (this machine has one answer); the probe itself is checked against
    /proc/cpuinfo below."""
    monkeypatch.setattr(loop, "cpu_supports_bf16", lambda: native)
    assert autocast_dtype("auto", CPU) == (torch.bfloat16 if native else None)
    assert autocast_dtype("bf16", CPU) == torch.bfloat16        # asked for: honoured either way


@pytest.mark.parametrize("supported", [True, False])
def test_auto_precision_on_cuda_is_unchanged(monkeypatch, supported):
    """CUDA's capability query is mocked (no GPU here): auto is bf16 where the GPU supports it, else fp32."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: supported)
    cuda = torch.device("cuda")
    assert autocast_dtype("auto", cuda) == (torch.bfloat16 if supported else None)
    assert autocast_dtype("fp16", cuda) == torch.float16 and autocast_dtype("fp32", cuda) is None


def test_the_bf16_probe_agrees_with_the_cpu_flags():
    from pathlib import Path

    info = Path("/proc/cpuinfo")
    if not info.exists():
        pytest.skip("no /proc/cpuinfo to read the CPU flags from")
    flags = set(info.read_text().split())
    assert loop.cpu_supports_bf16() == bool({"avx512_bf16", "amx_bf16", "amx_tile"} & flags)


@pytest.fixture(scope="module")
def sst2_lengths(sst2_train, tokenizer):
    """Token lengths of the first 2,000 SST-2 training rows (mask format, max_length 128)."""
    from jrft_cli.tasks.glue import encode

    return [len(it["input_ids"]) for it in encode(sst2_train[:2000], tokenizer, mask_format=True, max_length=128)]


def padded_tokens(lengths, batches):
    return sum(len(b) * max(lengths[i] for i in b) for b in batches)


def test_grouped_batches_cover_the_epoch_once_in_shuffled_batches_of_similar_lengths(sst2_lengths):
    lengths, bs = sst2_lengths, 32
    got = grouped_batches(lengths, bs, seed=0, epoch=0)
    flat = [i for b in got for i in b]
    assert sorted(flat) == list(range(len(lengths)))                 # every example exactly once
    assert sorted(len(b) for b in got) == sorted(len(b) for b in epoch_batches(lengths, bs, 0, 0))
    assert got == grouped_batches(lengths, bs, seed=0, epoch=0)        # a pure function of (seed, epoch, lengths)
    assert got != grouped_batches(lengths, bs, seed=0, epoch=1) and got != grouped_batches(lengths, bs, seed=1, epoch=0)
    # the batches are those cut from the epoch's random order in megabatches of 50 batches, each sorted
    # by length, but in shuffled order (widths neither rising nor falling through the epoch)
    order = epoch_order(len(lengths), 0, 0)
    size = 50 * bs
    flat = [i for k in range(0, len(order), size) for i in sorted(order[k:k + size], key=lambda j: lengths[j])]
    cut = [flat[k:k + bs] for k in range(0, len(flat), bs)]
    assert sorted(got) == sorted(cut) and got != cut
    widths = [max(lengths[i] for i in b) for b in got]
    assert widths != sorted(widths) and widths != sorted(widths, reverse=True)
    # padding on real SST-2 lengths: random batches pad to about 2.9x the real tokens, grouped ones
    # to a few percent over them
    real = sum(lengths)
    random_pad = padded_tokens(lengths, epoch_batches(lengths, bs, 0, 0))
    grouped_pad = padded_tokens(lengths, got)
    assert random_pad > 2 * real and grouped_pad < 1.15 * real, (real, random_pad, grouped_pad)


def test_the_trainer_steps_on_grouped_batches_with_group_by_length(sst2_encoded):
    data = sst2_encoded[:40]
    lengths = [len(it["input_ids"]) for it in data]
    model = torch.nn.Linear(1, 1)     # _next_window never runs the model
    for group in (False, True):
        cfg = LoopConfig(epochs=2, batch_size=4, grad_accum=2, group_by_length=group)
        trainer = Trainer(model, data, {}, None, SST2, cfg, CPU)
        for step in range(10):
            trainer.step = step
            epoch, window = divmod(step, trainer.steps_per_epoch)
            expect = epoch_batches(lengths, 4, 0, epoch, group_by_length=group)[2 * window:2 * window + 2]
            assert trainer._next_window() == [[data[i] for i in b] for b in expect]


def jr_model(make_model, d=64):
    model = make_model()
    torch.manual_seed(0)
    apply_method(model, "jr", d=d)
    return model


def test_warmup_then_linear_decay_to_zero(make_model, tokenizer, sst2_encoded):
    cfg = LoopConfig(max_steps=10, batch_size=8, lr=1e-2, warmup_ratio=0.2)
    trainer = Trainer(jr_model(make_model), sst2_encoded[:8], {}, make_collate(tokenizer, False), SST2, cfg, CPU)
    lrs = []
    for _ in range(10):
        lrs.append(trainer.scheduler.get_last_lr()[0])
        trainer.train_step([sst2_encoded[:8]])
    # 2 warm-up steps (0, 0.5) then (10 - s) / 8 of the peak
    assert lrs == pytest.approx([0.0, 5e-3] + [1e-2 * (10 - s) / 8 for s in range(2, 10)])
    assert trainer.scheduler.get_last_lr()[0] == 0.0


def equal_length_items(sst2_encoded, tokenizer, n=16):
    """n training rows of one token length (so padding cannot differ between batchings)."""
    from collections import defaultdict

    by_len = defaultdict(list)
    for it in sst2_encoded:
        by_len[len(it["input_ids"])].append(it)
    for items in sorted(by_len.values(), key=len, reverse=True):
        if len(items) >= n and len({it["labels"] for it in items}) == 2:
            return items[:n]
    pytest.skip("no 16 equal-length SST-2 rows with both labels among those encoded")


def grads_after_one_step(make_model, tokenizer, items, micro_batches):
    model = jr_model(make_model)
    trainer = Trainer(model, items, {}, make_collate(tokenizer, False), SST2,
                      LoopConfig(max_steps=10, batch_size=len(micro_batches[0]), lr=1e-3,
                                 grad_accum=len(micro_batches), warmup_ratio=0.0), CPU)
    trainer.optimizer.zero_grad = lambda set_to_none=True: None     # keep the step's gradients to inspect
    loss = trainer.train_step(micro_batches)
    return loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_gradient_accumulation_equals_the_big_batch(make_model, tokenizer, sst2_train):
    from jrft_cli.tasks.glue import encode

    items = equal_length_items(encode(sst2_train[:400], tokenizer, mask_format=True, max_length=32), tokenizer)
    loss_acc, grads_acc = grads_after_one_step(make_model, tokenizer, items, [items[:8], items[8:]])
    loss_big, grads_big = grads_after_one_step(make_model, tokenizer, items, [items])
    assert loss_acc == pytest.approx(loss_big, rel=1e-5)
    assert grads_acc.keys() == grads_big.keys() == {"adapter.z", "head.weight", "head.bias"}
    for n in grads_big:
        assert grads_big[n].abs().max() > 0
        assert torch.allclose(grads_acc[n], grads_big[n], rtol=1e-4, atol=1e-6), n


def test_run_is_deterministic_and_summarises(make_model, tokenizer, sst2_encoded):
    """Same seed, same data: bit-identical losses, metrics and parameters on CPU."""
    records = []

    def one_run():
        torch.manual_seed(0)
        model = jr_model(make_model)
        got = []
        cfg = LoopConfig(max_steps=5, batch_size=8, lr=3e-3, log_every=2, eval_every=2, seed=0)
        trainer = Trainer(model, sst2_encoded[:24], {"dev": sst2_encoded[24:40], "dev_mm": sst2_encoded[40:48]},
                          make_collate(tokenizer, False), SST2, cfg, CPU, on_metrics=got.append)
        summary = trainer.run()
        records.append(got)
        return summary, {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    (s1, p1), (s2, p2) = one_run(), one_run()
    strip = lambda recs: [{k: v for k, v in r.items() if k != "train/examples_per_s"} for r in recs]  # noqa: E731
    assert strip(records[0]) == strip(records[1])
    assert all(torch.equal(p1[n], p2[n]) for n in p1)
    for key in ("dev", "best_dev", "steps", "epochs"):
        assert s1[key] == s2[key]
    # 24 rows / batch 8 = 3 steps per epoch; 5 steps; logs at 2, 4 and the last step; evals at 2, 4, end
    assert s1["steps"] == 5 and s1["epochs"] == pytest.approx(5 / 3)
    train_steps = [r["step"] for r in records[0] if "train/loss" in r]
    dev_steps = [r["step"] for r in records[0] if "dev/accuracy" in r]
    assert train_steps == [2, 4, 5] and dev_steps == [2, 4, 5]
    assert set(s1["dev"]) == {"accuracy", "dev_mm_accuracy"}        # later splits are prefixed
    best = max((r for r in records[0] if "dev/accuracy" in r), key=lambda r: r["dev/accuracy"])
    assert s1["best_dev"]["accuracy"] == best["dev/accuracy"]
    assert s1["best_dev"]["step"] == min(r["step"] for r in records[0] if r.get("dev/accuracy") == best["dev/accuracy"])
    assert s1["wall_time_s"] > 0 and s1["examples_per_s"] > 0 and s1["peak_memory_mb"] > 0
    assert all(math.isfinite(r["train/loss"]) and r["train/lr"] >= 0 for r in records[0] if "train/loss" in r)


def test_epochs_count_with_a_short_last_accumulation_window(make_model, tokenizer, sst2_encoded):
    """10 rows, batch 4 (3 micro-batches), accum 2: 2 optimizer steps per epoch, the last on 1 micro-batch."""
    cfg = LoopConfig(epochs=2, batch_size=4, grad_accum=2, lr=1e-3, log_every=1)
    got = []
    trainer = Trainer(jr_model(make_model), sst2_encoded[:10], {"dev": sst2_encoded[10:14]},
                      make_collate(tokenizer, False), SST2, cfg, CPU, on_metrics=got.append)
    assert trainer.steps_per_epoch == 2 and trainer.total_steps == 4
    summary = trainer.run()
    assert summary["steps"] == 4 and summary["epochs"] == 2.0
    assert [r["step"] for r in got if "dev/accuracy" in r] == [2, 4]      # once per epoch


def test_predict_and_evaluate_keep_order_and_mode(make_model, tokenizer, sst2_encoded):
    model = jr_model(make_model).train()
    collate = make_collate(tokenizer, False)
    logits = predict(model, sst2_encoded[:10], collate, 4, CPU)
    assert logits.shape == (10, 2) and model.training      # mode restored
    one = predict(model, sst2_encoded[3:4], collate, 4, CPU)
    assert torch.allclose(logits[3], one[0], atol=1e-5)
    acc = evaluate(model, sst2_encoded[:10], collate, SST2, 4, CPU)["accuracy"]
    labels = torch.tensor([it["labels"] for it in sst2_encoded[:10]])
    assert acc == pytest.approx((logits.argmax(-1) == labels).float().mean().item())


def test_a_non_finite_loss_stops_training_before_the_update(make_model, sst2_encoded, tokenizer):
    """lr=1e20: the first update overflows the shifts, so step 2's loss is NaN; the trainer raises
    TrainingFailed there (for the recipe to record) instead of stepping on with NaN gradients."""
    from jrft_cli.core.registry import apply_method
    from jrft_cli.tasks.glue import make_collate
    from jrft_cli.training.checkpoint import TrainingFailed

    model = make_model()
    apply_method(model, "jr", d=64)
    cfg = LoopConfig(max_steps=4, batch_size=8, lr=1e20, warmup_ratio=0.0, log_every=1)
    logged = []
    trainer = Trainer(model, sst2_encoded[:32], {"dev": sst2_encoded[:8]}, make_collate(tokenizer, False),
                      TaskInfo(False, ["accuracy"], "accuracy"), cfg, torch.device("cpu"), on_metrics=logged.append)
    with pytest.raises(TrainingFailed, match=r"^the training loss is nan \(the run diverged") as err:
        trainer.run()
    assert err.value.step == 2 and trainer.step == 1
    assert [r["step"] for r in logged] == [1] and math.isfinite(logged[0]["train/loss"])
    z = model.adapter.z.detach().clone()
    assert torch.isfinite(z).all()          # the update that would have used NaN gradients did not happen
