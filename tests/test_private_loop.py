"""The private trainer: DP-SGD steps (sampling, clipping, noise, accounting) inside the ordinary loop's
schedule (logging, evaluation per expected epoch, stop and resume), its records and its state."""
from __future__ import annotations

import copy
import signal

import pytest
import torch

from jrft_cli.core.errors import JrftError
from jrft_cli.dp.accounting import epsilon_for
from jrft_cli.dp.plan import PrivacyPlan
from jrft_cli.tasks.evaluation import loss_fn
from jrft_cli.training.checkpoint import TrainingFailed, TrainingInterrupted
from jrft_cli.training.loop import LoopConfig
from jrft_cli.training.private_loop import PrivateTrainer
from private_helpers import MASK, TASK, build, collate, tiny_data, tiny_roberta  # noqa: F401 (a fixture)


def make_trainer(model, method, n=40, steps=3, sigma=1.0, records=None, plan=None, **loop):
    data = tiny_data(n)
    p = PrivacyPlan(**{"noise_multiplier": sigma, "sample_rate": 0.25, "steps": steps, "delta": 1e-3,
                       "max_grad_norm": 1.0, "batch_size": 10, "micro_batch_size": 4, **(plan or {})})
    hooks = {k: loop.pop(k) for k in ("should_stop", "on_checkpoint") if k in loop}
    cfg = LoopConfig(**{"epochs": 1, "lr": 1e-2, "log_every": 1, "seed": 3, **loop})
    return PrivateTrainer(model, data, {"validation": tiny_data(8, seed=1)}, collate, TASK, cfg,
                          torch.device("cpu"), p, method, on_metrics=(records.append if records is not None else None),
                          **hooks)


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


@pytest.mark.parametrize("method", ["jr", "lora", "full"])   # the shift path, opacus hooks, opacus ghost clipping
def test_private_training_under_bf16_autocast(tiny_roberta, method):
    """bf16 on CPU (eager attention, as `jrft train` loads it): every per-example gradient path trains
    with a finite loss; jr's shifts stay fp32, so its per-example z gradients come back in z's dtype."""
    from jrft_cli.core.backbone import SequenceClassifier
    from jrft_cli.core.registry import apply_method

    torch.manual_seed(0)
    model = SequenceClassifier(tiny_roberta, 2, head="mask", dropout=0.0, mask_token_id=MASK,
                               attn_implementation="eager")
    apply_method(model, method, **({"d": 8} if method == "jr" else {}))
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    records: list[dict] = []
    data = tiny_data(40)
    p = PrivacyPlan(noise_multiplier=1.0, sample_rate=0.25, steps=3, delta=1e-3, max_grad_norm=1.0, batch_size=10,
                    micro_batch_size=4)
    trainer = PrivateTrainer(model, data, {"validation": tiny_data(8, seed=1)}, collate, TASK,
                             LoopConfig(epochs=1, lr=1e-2, log_every=1, seed=3), torch.device("cpu"), p, method,
                             "bf16", on_metrics=records.append)
    assert trainer.amp == torch.bfloat16 and model.config._attn_implementation == "eager"
    trainer.run()
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    assert len(losses) == 3 and all(0 < v < 10 for v in losses)
    assert all(torch.isfinite(p).all() and not torch.equal(before[n], p)
               for n, p in model.named_parameters() if p.requires_grad)
    if method == "jr":
        batch = collate(data[:4])
        labels = batch.pop("labels")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            losses = loss_fn(model(**batch), labels, TASK.kind, reduction="none")
        z = trainer.sampler.per_example_grads(losses)[[id(q) for q in trainer.params].index(id(model.adapter.z))]
        assert z.shape == (4, 8) and z.dtype == torch.float32 and torch.isfinite(z).all()


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


def test_a_non_finite_loss_stops_the_private_run_before_the_update_and_the_accounting(tiny_roberta):
    model = build(tiny_roberta, MASK, "jr", d=8)
    trainer = make_trainer(model, "jr", steps=3)
    with torch.no_grad():
        model.head.weight[0, 0] = float("nan")      # every logit of class 0 becomes NaN
    z = model.adapter.z.detach().clone()
    with pytest.raises(TrainingFailed, match=r"^the training loss is nan \(the run diverged") as err:
        trainer.run()
    assert err.value.step == 1
    assert torch.equal(model.adapter.z, z) and trainer.accountant.steps == 0


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


# ---------------------------------------------------------------- the ordinary loop's schedule

def test_the_ordinary_schedule_drives_the_private_steps(tiny_roberta):
    """q = 0.25: an epoch is 4 steps in expectation; 10 steps log every 3 (and the last), evaluate at the
    epoch ends 4, 8 and after the last step, checkpoint every 5 (not at the end)."""
    records, saved = [], []
    model = build(tiny_roberta, MASK, "jr", d=8)
    trainer = make_trainer(model, "jr", steps=10, records=records, log_every=3, checkpoint_every=5,
                           on_checkpoint=lambda state: saved.append(state["step"]))
    summary = trainer.run()
    assert [r["step"] for r in records if "train/loss" in r] == [3, 6, 9, 10]
    assert [r["step"] for r in records if "dev/accuracy" in r] == [4, 8, 10]
    assert [r["privacy/steps"] for r in records if "dev/accuracy" in r] == [4, 8, 10]
    assert saved == [5]
    assert [r["epoch"] for r in records if "dev/accuracy" in r] == [1.0, 2.0, 2.5]
    assert summary["steps"] == 10 and summary["epochs"] == 2.5 and trainer.accountant.steps == 10
    assert all(r["train/lr"] == 1e-2 for r in records if "train/lr" in r)      # constant lr by default


def test_with_eval_every_the_private_trainer_evaluates_on_steps_not_passes(tiny_roberta):
    records = []
    trainer = make_trainer(build(tiny_roberta, MASK, "linear"), "linear", steps=7, records=records, eval_every=3)
    trainer.run()
    assert [r["step"] for r in records if "dev/accuracy" in r] == [3, 6, 7]


def test_constant_lr_false_takes_the_ordinary_warmup_and_decay(tiny_roberta):
    trainer = make_trainer(build(tiny_roberta, MASK, "linear"), "linear", steps=10, plan={"constant_lr": False},
                           warmup_ratio=0.2)
    factor = trainer.scheduler.lr_lambdas[0]
    assert [factor(s) for s in (0, 1, 2, 6, 10)] == [0.0, 0.5, 1.0, 0.5, 0.0]   # 2 warm-up steps of 10


def test_stopped_and_resumed_private_run_equals_the_uninterrupted_one(tiny_roberta):
    def strip(history):
        return [{k: v for k, v in r.items() if k != "train/examples_per_s"} for r in history]

    full = make_trainer(build(tiny_roberta, MASK, "jr", d=8), "jr", steps=7, log_every=2)
    expected = full.run()

    saved = {}
    first = make_trainer(build(tiny_roberta, MASK, "jr", d=8), "jr", steps=7, log_every=2,
                         should_stop=lambda: signal.SIGTERM if first.step == 5 else None,
                         on_checkpoint=lambda state: saved.setdefault("state", copy.deepcopy(state)))
    with pytest.raises(TrainingInterrupted) as info:
        first.run()
    assert info.value.step == 5 and saved["state"]["accountant"]["history"] == [[1.0, 0.25, 5]]
    torch.manual_seed(1234)                       # the resumed process starts from another RNG state
    resumed = make_trainer(build(tiny_roberta, MASK, "jr", d=8), "jr", steps=7, log_every=2)
    resumed.load_state_dict(saved["state"])
    got = resumed.run()
    for key in ("dev", "best_dev", "steps", "epochs"):
        assert got[key] == expected[key], key
    assert strip(resumed.history) == strip(full.history)
    assert torch.equal(resumed.model.adapter.z, full.model.adapter.z)
    assert resumed.privacy_record() == full.privacy_record()


@pytest.mark.parametrize("plan,loop,message", [
    ({}, {"grad_accum": 2}, "train.grad_accum=2 is not valid with privacy=dp"),
    ({}, {"max_grad_norm": 1.0}, "train.max_grad_norm=1.0 is for non-private runs"),
    ({}, {"group_by_length": True}, "train.group_by_length=true is not valid with privacy=dp"),
    ({"micro_batch_size": 0}, {}, "privacy.micro_batch_size=0 is invalid; it must be an integer >= 1"),
    ({"accountant": "gdp"}, {}, "privacy.accountant='gdp' is invalid; choose one of: prv, rdp"),
])
def test_the_trainer_checks_its_plan_and_loop_as_jrft_train_does(tiny_roberta, plan, loop, message):
    model = build(tiny_roberta, MASK, "full")
    with pytest.raises(JrftError, match=message):
        make_trainer(model, "full", plan=plan, **loop)
    assert model.backbone.embeddings.position_embeddings.weight.requires_grad   # refused before touching the model
