"""Tracker: console behaviour, W&B mode resolution, and offline runs read back with wandb's reader."""
from __future__ import annotations

import http.server
import io
import json
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from rich.console import Console

from jrft_cli.training.tracking import (
    Tracker,
    read_offline_run,
    resolve_wandb_mode,
    wandb_credentials_available,
)

FAKE_KEY = "0123456789abcdef0123456789abcdef01234567"


def plain_console() -> Console:
    return Console(file=io.StringIO(), force_terminal=False, width=200)


def text_of(console: Console) -> str:
    return console.file.getvalue()


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    """No credentials, HOME and every W&B directory in tmp; wandb's process state reset around."""
    home = tmp_path / "home"
    home.mkdir()
    for var in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_MODE", "WANDB_BASE_URL",
                "WANDB_ENTITY", "WANDB_PROJECT", "WANDB_RUN_ID", "WANDB_RESUME", "NETRC"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(home / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(home / "wandb-cache"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(home / "wandb-data"))
    monkeypatch.setenv("WANDB_ARTIFACT_DIR", str(home / "wandb-artifacts"))
    monkeypatch.setenv("WANDB_DIR", str(home / "wandb-dir-env"))  # dir= must win over this
    monkeypatch.setenv("WANDB_ERROR_REPORTING", "false")
    import wandb

    wandb.teardown()  # the settings singleton caches env values from whoever came first
    yield home
    wandb.teardown()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# console, no W&B


def test_without_wandb_nothing_imports_wandb_and_no_wandb_dir(tmp_path):
    code = (
        "import sys; from pathlib import Path; from jrft_cli.training.tracking import Tracker\n"
        f"t = Tracker(Path({str(tmp_path)!r}), {{'lr': 0.1}}, use_wandb=True, mode='disabled')\n"
        f"u = Tracker(Path({str(tmp_path)!r}), {{'lr': 0.1}}, use_wandb=False)\n"
        "u.print_config(); u.start_progress(2, 'train'); u.log({'train/loss': 0.25}, step=1)\n"
        "u.summary({'acc': 0.5}); u.finish(); t.finish()\n"
        "assert t.wandb_run_id is None and u.wandb_run_id is None\n"
        "print('WANDB_IMPORTED', 'wandb' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "WANDB_IMPORTED False" in out
    assert "loss 0.2500" in out
    assert not (tmp_path / "wandb").exists()
    assert list(tmp_path.iterdir()) == []


def test_plain_console_throttles_progress_and_always_prints_evaluations(tmp_path):
    console = plain_console()
    tracker = Tracker(tmp_path, {}, use_wandb=False, console=console, plain_lines=10)
    tracker.start_progress(100, "train")
    for step in range(1, 101):
        tracker.log({"train/loss": 1.0 / step, "train/examples_per_s": 50.0}, step=step)
        if step == 50:
            tracker.log({"eval/accuracy": 0.875}, step=step)
    tracker.finish()
    lines = text_of(console).splitlines()
    progress = [ln for ln in lines if "loss" in ln]
    # one line every 100 // 10 = 10 steps from step 1, plus the final step
    assert [ln.split()[2] for ln in progress] == [f"{s}/100" for s in (1, 11, 21, 31, 41, 51, 61, 71, 81, 91, 100)]
    assert "loss 0.0100" in progress[-1] and "50.0 ex/s" in progress[-1]
    evals = [ln for ln in lines if "eval/accuracy" in ln]
    assert len(evals) == 1 and "step 50/100" in evals[0] and "0.875" in evals[0]
    assert len(lines) == 12


def test_terminal_console_draws_a_progress_bar(tmp_path):
    console = Console(file=io.StringIO(), force_terminal=True, width=150)
    tracker = Tracker(tmp_path, {}, use_wandb=False, console=console)
    tracker.start_progress(4, "train")
    for step in range(1, 5):
        tracker.log({"train/loss": 0.5, "train/examples_per_s": 12.0}, step=step)
    tracker.finish()
    out = text_of(console)
    assert "━" in out and "4/4" in out and "loss 0.5000" in out and "12.0 ex/s" in out


def test_config_tree_and_summary_table(tmp_path):
    console = plain_console()
    tracker = Tracker(tmp_path, {"task": "sst2", "method": {"name": "jr", "d": 1024}}, use_wandb=False,
                      console=console)
    tracker.print_config()
    tracker.summary({"dev": {"accuracy": 0.83257}, "steps": 750})
    tracker.finish()
    out = text_of(console)
    assert "task: 'sst2'" in out and "method" in out and "d: 1024" in out
    assert "dev/accuracy" in out and "0.8326" in out and "750" in out


def test_bad_mode_names_the_choices(tmp_path):
    with pytest.raises(ValueError, match=r"'cloud'.*auto, online, offline, disabled"):
        Tracker(tmp_path, {}, use_wandb=True, mode="cloud")
    with pytest.raises(ValueError, match=r"'cloud'.*auto, online, offline, disabled"):
        resolve_wandb_mode("cloud")


def test_finish_is_always_safe(tmp_path):
    tracker = Tracker(tmp_path, {}, use_wandb=False, console=plain_console())
    tracker.finish()
    tracker.finish(exit_code=1)
    assert tracker.wandb_run_id is None and list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# W&B mode resolution


def test_auto_mode_without_credentials_is_offline(wandb_env):
    mode, reason = resolve_wandb_mode("auto")
    assert mode == "offline" and "credentials" in reason


def test_auto_mode_with_credentials_but_silent_host_is_offline(wandb_env, monkeypatch):
    url = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setenv("WANDB_BASE_URL", url)
    mode, reason = resolve_wandb_mode("auto")
    assert mode == "offline" and url in reason


def test_auto_mode_with_netrc_credentials_and_answering_host_is_online(wandb_env, monkeypatch):
    class Unauthorized(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):  # any status is an answer
            self.send_response(401)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Unauthorized)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        monkeypatch.setenv("WANDB_BASE_URL", url)
        assert not wandb_credentials_available(url)
        netrc = wandb_env / ".netrc"
        netrc.write_text(f"machine 127.0.0.1:{server.server_port}\n  login user\n  password {FAKE_KEY}\n")
        netrc.chmod(0o600)
        assert wandb_credentials_available(url)
        assert resolve_wandb_mode("auto") == ("online", None)
    finally:
        server.shutdown()
        server.server_close()


def test_auto_mode_honours_wandb_mode_env(wandb_env, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_wandb_mode("auto") == ("disabled", None)
    assert resolve_wandb_mode("offline") == ("offline", None)


# ---------------------------------------------------------------------------------------------
# offline runs, read back with wandb's own reader


def test_auto_mode_without_credentials_writes_an_offline_run_that_reads_back(wandb_env, tmp_path):
    run_dir = tmp_path / "run"
    console = plain_console()
    config = {"task": "sst2", "method": {"name": "jr", "d": 64}, "lr": 0.003}
    tracker = Tracker(run_dir, config, use_wandb=True, mode="auto", console=console, name="t1")
    try:
        tracker.start_progress(3, "train")
        for step, loss in ((1, 0.75), (2, 0.5), (3, 0.25)):
            tracker.log({"train/loss": loss, "train/examples_per_s": 100.0 + step}, step=step)
        tracker.log({"eval/accuracy": 0.8125}, step=3)
        tracker.summary({"dev": {"accuracy": 0.8125}, "best_step": 3})
    finally:
        tracker.finish()

    assert tracker.wandb_mode == "offline"
    sync_dirs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(sync_dirs) == 1 and sync_dirs[0].name.endswith(tracker.wandb_run_id)
    assert f"wandb sync {sync_dirs[0]}" in text_of(console)
    assert not (wandb_env / "wandb-dir-env").exists()

    run = read_offline_run(run_dir)
    assert run["run_id"] == tracker.wandb_run_id
    assert run["config"] == config
    rows = [{k: v for k, v in row.items() if not k.startswith("_") or k == "_step"} for row in run["history"]]
    assert rows == [
        {"_step": 1, "train/loss": 0.75, "train/examples_per_s": 101.0},
        {"_step": 2, "train/loss": 0.5, "train/examples_per_s": 102.0},
        {"_step": 3, "train/loss": 0.25, "train/examples_per_s": 103.0, "eval/accuracy": 0.8125},
    ]
    assert run["summary"]["dev"] == {"accuracy": 0.8125}
    assert run["summary"]["best_step"] == 3
    assert run["summary"]["train/loss"] == 0.25


def test_two_runs_in_one_process_and_a_resume(wandb_env, tmp_path):
    quiet = dict(use_wandb=True, mode="offline")
    first = Tracker(tmp_path / "a", {"seed": 0}, console=plain_console(), **quiet)
    second = Tracker(tmp_path / "b", {"seed": 1}, console=plain_console(), **quiet)
    try:  # interleaved: each Tracker must keep its own run
        first.log({"train/loss": 1.0}, step=1)
        second.log({"train/loss": 2.0}, step=1)
        first.log({"train/loss": 0.5}, step=2)
    finally:
        first.finish()
        second.finish()
    assert first.wandb_run_id != second.wandb_run_id
    a, b = read_offline_run(tmp_path / "a"), read_offline_run(tmp_path / "b")
    assert [r["train/loss"] for r in a["history"]] == [1.0, 0.5]
    assert [r["train/loss"] for r in b["history"]] == [2.0]
    assert (a["config"], b["config"]) == ({"seed": 0}, {"seed": 1})

    resumed = Tracker(tmp_path / "a", {"seed": 0}, resume_id=first.wandb_run_id, console=plain_console(), **quiet)
    try:
        resumed.log({"train/loss": 0.25}, step=3)
        resumed.summary({"acc": 0.9})
    finally:
        resumed.finish()
    assert resumed.wandb_run_id == first.wandb_run_id
    a = read_offline_run(tmp_path / "a")
    assert [(r["_step"], r["train/loss"]) for r in a["history"]] == [(1, 1.0), (2, 0.5), (3, 0.25)]
    assert a["summary"]["acc"] == 0.9


def test_offline_run_never_writes_the_api_key(wandb_env, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    run_dir = tmp_path / "run"
    tracker = Tracker(run_dir, {"lr": 0.1}, use_wandb=True, mode="offline", console=plain_console())
    try:
        tracker.log({"train/loss": 0.5}, step=1)
        tracker.summary({"acc": 0.5})
    finally:
        tracker.finish()
    assert read_offline_run(run_dir)["summary"]["acc"] == 0.5  # the run really was written
    written = [p for root in (run_dir, wandb_env) for p in root.rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in written)
    leaks = [p for p in written if FAKE_KEY.encode() in p.read_bytes()]
    assert leaks == []


def test_read_offline_run_without_a_run_says_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "wandb")):
        read_offline_run(tmp_path)


def test_offline_history_is_json_clean(wandb_env, tmp_path):
    """Values come back as JSON numbers (what results/table code will consume)."""
    tracker = Tracker(tmp_path, {}, use_wandb=True, mode="offline", console=plain_console())
    try:
        tracker.log({"train/loss": 1e-8, "train/lr": 3e-3}, step=7)
    finally:
        tracker.finish()
    row = read_offline_run(tmp_path)["history"][0]
    assert json.loads(json.dumps(row))["train/loss"] == 1e-8 and row["train/lr"] == 3e-3 and row["_step"] == 7
