"""Interrupt and resume: stop signals, atomic checkpoints, Trainer.state_dict round trips, and a real
kill-and-resume of `jrft train` that must end with the uninterrupted run's metrics."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from jrft_cli.training.checkpoint import (CHECKPOINT_FILE, INTERRUPTED_EXIT_CODE, StopSignals, TrainingInterrupted,
                                 load_checkpoint, rng_state, save_checkpoint, set_rng_state)
from jrft_cli.training.loop import LoopConfig, Trainer
from jrft_cli.tasks.evaluation import TaskInfo
from jrft_cli.training.recipe import config_difference, is_private

from conftest import REPO, jrft_cmd, needs_glue, run_jrft, subprocess_env


# -- signals and files ---------------------------------------------------------------------------

def test_stop_signals_flag_instead_of_dying_and_hand_on_the_previous_handler():
    calls = []
    old = signal.signal(signal.SIGUSR2, lambda s, f: calls.append(s))
    try:
        with StopSignals() as stop:
            assert stop() is None
            os.kill(os.getpid(), signal.SIGUSR2)
            os.kill(os.getpid(), signal.SIGTERM)          # a later signal does not overwrite the first
            assert stop() == signal.SIGUSR2
        assert calls == []                                # ours ran, not the previous one
        stop.hand_on()                                    # e.g. submitit's requeue handler
        assert calls == [signal.SIGUSR2]
        assert signal.getsignal(signal.SIGTERM) is not stop._handle   # handlers restored on exit
    finally:
        signal.signal(signal.SIGUSR2, old)


def test_save_checkpoint_is_atomic_and_loads_with_weights_only(tmp_path):
    path = tmp_path / CHECKPOINT_FILE
    save_checkpoint(path, {"trainer": {"step": 3, "t": torch.arange(4.0), "best": None}})
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT_FILE]     # no temp file left
    state = load_checkpoint(path)
    assert state["trainer"]["step"] == 3 and torch.equal(state["trainer"]["t"], torch.arange(4.0))


def test_rng_state_round_trip_restores_every_generator():
    state = rng_state()
    first = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(state)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]


def test_config_difference_ignores_machine_and_logging_but_not_training_settings():
    old = {"seed": 0, "train": {"lr": 1e-3}, "logger": {"enabled": True}, "hardware": {"device": "cpu"},
           "data": {"dir": "/a", "limit_train": 8}}
    same = {**old, "logger": {"enabled": False}, "hardware": {"device": "cuda"}, "data": {"dir": "/b", "limit_train": 8}}
    assert config_difference(old, same) is None
    assert config_difference(old, {**old, "train": {"lr": 2e-3}}) == "train.lr: 0.001 -> 0.002"


def test_is_private_reads_the_privacy_section():
    assert not is_private({}) and not is_private({"privacy": None})
    assert is_private({"privacy": {"enabled": True, "epsilon": 8}})
    assert not is_private({"privacy": {"epsilon": 8, "enabled": False}})


# -- Trainer.state_dict: an interrupted and resumed run equals an uninterrupted one --------------

class TinyClassifier(nn.Module):
    """Embedding bag + dropout + linear: trainable, with dropout drawing from the global torch RNG."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.EmbeddingBag(50, 16)
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(16, 2)

    def forward(self, input_ids, attention_mask):
        return self.head(self.drop(self.emb(input_ids)))


def _tiny_data(n: int, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 50, (n, 6), generator=g)
    return [{"input_ids": ids[i], "labels": int(ids[i, 0] < 25)} for i in range(n)]


def _collate(items):
    return {"input_ids": torch.stack([it["input_ids"] for it in items]),
            "attention_mask": torch.ones(len(items), 6, dtype=torch.long),
            "labels": torch.tensor([it["labels"] for it in items])}


def _trainer(stop=None, on_checkpoint=None) -> Trainer:
    torch.manual_seed(0)
    cfg = LoopConfig(epochs=3, batch_size=8, lr=1e-2, grad_accum=2, eval_every=3, log_every=1, seed=0)
    return Trainer(TinyClassifier(), _tiny_data(40, 1), {"dev": _tiny_data(16, 2)}, _collate,
                   TaskInfo(False, ["accuracy"], "accuracy"), cfg, torch.device("cpu"),
                   should_stop=stop, on_checkpoint=on_checkpoint)


def _losses(history):
    return [(h["step"], h.get("train/loss"), h.get("dev/accuracy")) for h in history]


@pytest.mark.parametrize("stop_at", [1, 3, 5])   # mid-epoch, at an epoch end (3 steps/epoch), later
def test_interrupted_trainer_resumes_to_the_uninterrupted_result(tmp_path, stop_at):
    full = _trainer()
    expected = full.run()

    saved = {}
    first = _trainer(stop=lambda: signal.SIGTERM if first.step == stop_at else None,
                     on_checkpoint=lambda state: save_checkpoint(tmp_path / "ck.pt", {"trainer": state}))
    with pytest.raises(TrainingInterrupted) as info:
        first.run()
    assert info.value.step == stop_at
    torch.manual_seed(1234)                       # the resumed process starts from another RNG state
    resumed = _trainer()
    resumed.load_state_dict(load_checkpoint(tmp_path / "ck.pt")["trainer"])
    got = resumed.run()
    for key in ("dev", "best_dev", "steps", "epochs"):
        assert got[key] == expected[key], key
    assert _losses(resumed.history) == _losses(full.history)
    assert torch.equal(resumed.model.head.weight, full.model.head.weight)


def test_a_periodic_checkpoint_at_an_epoch_end_holds_that_epochs_evaluation(tmp_path):
    """Evaluation per epoch (3 steps) and a checkpoint every 3 steps: the checkpoint at an epoch's end is
    written after that epoch's evaluation, so a run resumed from it logs the same evaluations."""
    def trainer(**hooks) -> Trainer:
        torch.manual_seed(0)
        cfg = LoopConfig(epochs=3, batch_size=8, lr=1e-2, grad_accum=2, log_every=1, seed=0, checkpoint_every=3)
        return Trainer(TinyClassifier(), _tiny_data(40, 1), {"dev": _tiny_data(16, 2)}, _collate,
                       TaskInfo(False, ["accuracy"], "accuracy"), cfg, torch.device("cpu"), **hooks)

    full = trainer(on_checkpoint=lambda state: save_checkpoint(tmp_path / f"ck{state['step']}.pt", {"trainer": state}))
    expected = full.run()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck3.pt", "ck6.pt"]
    assert [h["step"] for h in full.history if "dev/accuracy" in h] == [3, 6, 9]
    resumed = trainer()
    resumed.load_state_dict(load_checkpoint(tmp_path / "ck3.pt")["trainer"])
    assert [h["step"] for h in resumed.history if "dev/accuracy" in h] == [3]
    got = resumed.run()
    assert _losses(resumed.history) == _losses(full.history)
    assert got["best_dev"] == expected["best_dev"] and got["dev"] == expected["dev"]


class MeanBagClassifier(nn.Module):
    """Masked mean of embeddings + dropout + linear, for padded inputs of different lengths."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(16, 2)

    def forward(self, input_ids, attention_mask):
        mask = attention_mask.unsqueeze(-1).float()
        return self.head(self.drop((self.emb(input_ids) * mask).sum(1) / mask.sum(1)))


def _varied_data(n: int, seed: int) -> list[dict]:
    """n rows of 2..12 tokens: batches grouped by length differ from random ones."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        ids = torch.randint(1, 50, (int(torch.randint(2, 13, (1,), generator=g)),), generator=g).tolist()
        rows.append({"input_ids": ids, "labels": int(ids[0] < 25)})
    return rows


def _pad_collate(items):
    width = max(len(it["input_ids"]) for it in items)
    return {"input_ids": torch.tensor([it["input_ids"] + [0] * (width - len(it["input_ids"])) for it in items]),
            "attention_mask": torch.tensor([[1] * len(it["input_ids"]) + [0] * (width - len(it["input_ids"]))
                                            for it in items]),
            "labels": torch.tensor([it["labels"] for it in items])}


def _grouped_trainer(group: bool = True, **hooks) -> Trainer:
    torch.manual_seed(0)
    # 120 rows in batches of 4: megabatches of 50 batches = 200 rows, so the whole epoch is one megabatch
    cfg = LoopConfig(epochs=2, batch_size=4, lr=1e-2, eval_every=10, log_every=1, seed=0, group_by_length=group)
    return Trainer(MeanBagClassifier(), _varied_data(120, 1), {"dev": _varied_data(16, 2)}, _pad_collate,
                   TaskInfo(False, ["accuracy"], "accuracy"), cfg, torch.device("cpu"), **hooks)


@pytest.mark.parametrize("stop_at", [7, 30, 41])   # mid-epoch, at the epoch's end (30 steps), in the second
def test_a_grouped_run_resumed_mid_epoch_equals_the_uninterrupted_one(tmp_path, stop_at):
    full = _grouped_trainer()
    expected = full.run()
    ungrouped = _grouped_trainer(group=False)
    ungrouped.run()
    assert _losses(ungrouped.history) != _losses(full.history)      # grouping changed the batches
    first = _grouped_trainer(should_stop=lambda: signal.SIGTERM if first.step == stop_at else None,
                             on_checkpoint=lambda state: save_checkpoint(tmp_path / "ck.pt", {"trainer": state}))
    with pytest.raises(TrainingInterrupted):
        first.run()
    torch.manual_seed(1234)                       # the resumed process starts from another RNG state
    resumed = _grouped_trainer()
    resumed.load_state_dict(load_checkpoint(tmp_path / "ck.pt")["trainer"])
    got = resumed.run()
    for key in ("dev", "best_dev", "steps", "epochs"):
        assert got[key] == expected[key], key
    assert _losses(resumed.history) == _losses(full.history)
    assert torch.equal(resumed.model.head.weight, full.model.head.weight)


def test_config_difference_takes_a_later_added_key_at_its_default():
    """An older run's config.yaml has no train.group_by_length: relaunching it (false) is no change."""
    old = {"train": {"lr": 1e-3}}
    assert config_difference(old, {"train": {"lr": 1e-3, "group_by_length": False}}) is None
    assert config_difference(old, {"train": {"lr": 1e-3, "group_by_length": True}}) == \
        "train.group_by_length: False -> True"


def test_load_state_dict_refuses_a_changed_budget():
    state = _trainer().state_dict()
    state["total_steps"] += 1
    with pytest.raises(ValueError, match="steps"):
        _trainer().load_state_dict(state)


# -- the real thing: SIGTERM a `jrft train` process, relaunch it on the same run dir -------------

# "jr+dp": private jr; the accountant and the Poisson sampler's generator must resume too.
_DP = ["privacy=dp", "privacy.epsilon=8", "privacy.accountant=rdp", "privacy.batch_size=8", "privacy.micro_batch_size=4"]


def _train_args(run_dir: Path, method: str) -> list[str]:
    """`jrft train` arguments (the GLUE root comes from subprocess_env's JRFT_GLUE_DIR)."""
    method, _, dp = method.partition("+")
    return ["train", f"method={method}", *(_DP if dp else []), "task=rte", "logger=none",
            "hardware=cpu", "hardware.num_threads=1", "train.max_steps=14", "train.batch_size=8",
            "train.log_every=1", "train.eval_every=5", "data.limit_train=48", "data.limit_eval=16",
            f"hydra.run.dir={run_dir}"]


@needs_glue("RTE")
@pytest.mark.parametrize("method", ["jr", "bitfit", "jr+dp"])   # bitfit keeps dropout: RNG state matters
def test_kill_and_resume_gives_the_uninterrupted_metrics(tmp_path, method):
    plain, killed = tmp_path / "plain", tmp_path / "killed"
    run_jrft(*_train_args(plain, method), check=True)

    proc = subprocess.Popen(jrft_cmd(*_train_args(killed, method)), cwd=REPO, env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = killed / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        assert proc.poll() is None and time.monotonic() < deadline, "training ended before it could be killed"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == INTERRUPTED_EXIT_CODE, out
    assert (killed / CHECKPOINT_FILE).exists() and not (killed / "results.json").exists()

    again = run_jrft(*_train_args(killed, method))
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming" in again.stdout + again.stderr
    want, got = (json.loads((d / "results.json").read_text()) for d in (plain, killed))
    assert got["resumed_at_step"] >= 1
    for key in ("dev", "best_dev", "steps", "privacy"):
        assert got[key] == want[key], key
    assert not (killed / CHECKPOINT_FILE).exists()     # a finished run leaves no checkpoint
    strip = lambda d: [{k: v for k, v in json.loads(l).items() if k != "train/examples_per_s"}  # noqa: E731
                       for l in (d / "metrics.jsonl").read_text().splitlines()]
    assert strip(killed) == strip(plain)

    # a finished run dir is not trained again
    third = run_jrft(*_train_args(killed, method))
    assert third.returncode == 0 and "already holds a completed run" in third.stdout
    assert json.loads((killed / "results.json").read_text()) == got
