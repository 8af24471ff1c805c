"""jrft_cli.core.files: the run-dir lock (one writer; a dead holder's lock is gone) and reading JSON
files jrft wrote with one-line errors."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from jrft_cli.core.errors import JrftError
from jrft_cli.core.files import LOCK_FILE, RunDirBusy, RunDirLock, read_json_file, read_results

from conftest import subprocess_env

HOLD = """
import sys, time
from jrft_cli.core.files import RunDirLock
lock = RunDirLock.acquire(sys.argv[1])
lock.record_holder()
print("held", flush=True)
time.sleep(600)
"""


def test_second_writer_is_refused_naming_the_holder(tmp_path):
    first = RunDirLock.acquire(tmp_path / "run")
    first.record_holder()
    with pytest.raises(RunDirBusy) as err:
        RunDirLock.acquire(tmp_path / "run")
    assert f"pid {os.getpid()}" in str(err.value) and "is in use by another jrft process" in str(err.value)
    assert isinstance(err.value, JrftError) and "\n" not in str(err.value)
    first.release()
    RunDirLock.acquire(tmp_path / "run").release()          # free again once released


def test_lock_of_a_killed_process_does_not_block(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], env=subprocess_env(),
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(RunDirBusy, match=f"pid {proc.pid} "):
            RunDirLock.acquire(run_dir)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert (run_dir / LOCK_FILE).exists()                   # the stale file is still there ...
    lock = RunDirLock.acquire(run_dir)                      # ... and does not block
    lock.release()


def test_acquiring_without_recording_changes_no_file(tmp_path):
    first = RunDirLock.acquire(tmp_path)
    first.record_holder()
    first.release()
    before = ((tmp_path / LOCK_FILE).read_text(), (tmp_path / LOCK_FILE).stat().st_mtime_ns)
    time.sleep(0.01)
    RunDirLock.acquire(tmp_path).release()                  # a refused or skipped relaunch takes and drops it
    assert ((tmp_path / LOCK_FILE).read_text(), (tmp_path / LOCK_FILE).stat().st_mtime_ns) == before


@pytest.mark.parametrize("content, reason", [
    ("", "the file is empty"),
    ('{"status": "comp', "Unterminated string"),
    (b"\xff\xfe\x00garbage", "can't decode"),
])
def test_corrupt_json_is_one_line_naming_the_file_and_what_to_do(tmp_path, content, reason):
    path = tmp_path / "results.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(JrftError) as err:
        read_results(tmp_path)
    message = str(err.value)
    assert message.startswith(f"{path}: results.json is unreadable (") and reason in message
    assert message.endswith("delete it to train this run dir again") and "\n" not in message
    path.write_text(json.dumps([1, 2]))
    with pytest.raises(JrftError, match="is not a JSON object"):
        read_results(tmp_path)
    assert read_json_file(path, "x", "y") == [1, 2]
