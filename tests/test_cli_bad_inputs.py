"""Bad input across every `jrft` command, as a hostile or careless user would give it: each case exits
non-zero with exactly one line on stderr (no traceback), writes no results.json, and changes or deletes no
file it was not asked to write. Then the faults that need a running process: a second writer on a run
dir, a non-finite loss, a refused relaunch.

Cases run in this process through the dispatcher (`jrft_cli.__main__.main`, Hydra's job machinery
included; the logging set-up Hydra replaces is restored after each); a few run as `python -m jrft_cli`
subprocesses, for real stdin bytes and the process's own exit path.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch
import yaml

from jrft_cli.__main__ import main
from jrft_cli.core.files import ADAPTER_CONFIG, ADAPTER_WEIGHTS, CHECKPOINT_FILE, CONFIG_FILE, RESULTS_FILE, RunDirLock

from conftest import GLUE_MISSING, REPO, find_glue_dir, plain, subprocess_env

GLUE = find_glue_dir() or Path("glue-not-found")

torch.set_num_threads(1)
pytestmark = pytest.mark.skipif(not (GLUE / "RTE" / "dev.tsv").is_file(), reason=GLUE_MISSING)

# The run every case starts from: jr on 16 RTE rows, 2 steps (the same overrides for the in-process run
# and for subprocess relaunches, so their configs agree).
RUN_ARGS = ["task=rte", "method=jr", "d=64", "logger=none", "hardware=cpu", "hardware.num_threads=1",
            "train.max_steps=2", "train.batch_size=8", "train.log_every=1", "data.limit_train=16",
            "data.limit_eval=16", "data.max_length=32"]


@dataclass
class World:
    root: Path
    run: Path       # a completed run dir
    export: Path    # its export (remote code: jr with the mask head)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    from jrft_cli.training.recipe import run

    root = tmp_path_factory.mktemp("world")
    cfg = plain("task=rte", *RUN_ARGS)
    run(cfg, root / "run")
    (root / "run" / "train.log").write_text("")          # as Hydra leaves it
    assert main(["export", str(root / "run"), "--out", str(root / "export")]) == 0
    return World(root, root / "run", root / "export")


def snapshot(*roots: Path) -> dict[str, str]:
    """Every file under `roots` with its content hash (what 'nothing changed or deleted' compares)."""
    out = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            if p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


# ---------------------------------------------------------------------------------------------
# preparing damaged inputs (each gets the case's own tmp dir and returns placeholders for argv)


def copy_run(w: World, tmp: Path, name: str = "run") -> Path:
    return Path(shutil.copytree(w.run, tmp / name))


def edit_json(path: Path, edit: Callable[[dict], None]) -> None:
    info = json.loads(path.read_text())
    edit(info)
    path.write_text(json.dumps(info))


def damaged_weights(w, tmp):
    run = copy_run(w, tmp)
    (run / ADAPTER_WEIGHTS).write_bytes(b"\x00garbage")
    return {"bad": run}


def truncated_adapter_config(w, tmp):
    run = copy_run(w, tmp)
    (run / ADAPTER_CONFIG).write_text((run / ADAPTER_CONFIG).read_text()[:40])
    return {"bad": run}


def edited_projection_seed(w, tmp):
    run = copy_run(w, tmp)
    edit_json(run / ADAPTER_CONFIG, lambda i: i["method_config"].update(projection_seed=3))
    return {"bad": run}


def both_projection_seeds(w, tmp):
    run = copy_run(w, tmp)
    edit_json(run / ADAPTER_CONFIG, lambda i: (i.update(projection_seed=3), i["method_config"].update(projection_seed=3)))
    return {"bad": run}


def nan_weights(w, tmp):
    from safetensors.torch import load_file, save_file

    run = copy_run(w, tmp)
    state = load_file(str(run / ADAPTER_WEIGHTS))
    state["adapter.z"][:] = float("nan")
    save_file(state, str(run / ADAPTER_WEIGHTS))
    edit_json(run / ADAPTER_CONFIG, lambda i: i.pop("weights_sha256"))   # as an artifact from before checksums
    return {"bad": run}


def binary_file(w, tmp):
    (tmp / "in.bin").write_bytes(bytes(range(256)) * 4)
    return {"input": tmp / "in.bin"}


def parent_with_two_runs(w, tmp):
    copy_run(w, tmp / "parent", "run1")
    copy_run(w, tmp / "parent", "run2")
    return {"parent": tmp / "parent"}


def non_export_dir(w, tmp):
    (tmp / "mine").mkdir()
    (tmp / "mine" / "notes.txt").write_text("keep me")
    return {"mine": tmp / "mine"}


def tampered_export(w, tmp):
    bad = Path(shutil.copytree(w.export, tmp / "export"))
    with open(bad / "modeling_jrft.py", "a") as f:
        f.write(f"\nopen({str(tmp / 'FOREIGN_CODE_RAN')!r}, 'w').write('ran')\n")
    return {"bad": bad}


def corrupt_export_note(w, tmp):
    bad = Path(shutil.copytree(w.export, tmp / "export"))
    (bad / "jrft_export.json").write_text('{"format": "jrft-export", ')
    return {"bad": bad}


def glue_with(task_dir: str, train_bytes: bytes):
    """A glue_data/ root whose `task_dir`/train.tsv is `train_bytes` (dev.tsv: the real one)."""
    def prepare(w, tmp):
        root = tmp / "glue"
        (root / task_dir).mkdir(parents=True)
        (root / task_dir / "train.tsv").write_bytes(train_bytes)
        shutil.copyfile(GLUE / task_dir / "dev.tsv", root / task_dir / "dev.tsv")
        return {"glue": root}
    return prepare


RTE_HEADER = b"index\tsentence1\tsentence2\tlabel\n"
STSB_HEADER = b"index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
STSB_ROW = b"0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA plane is taking off.\tAn air plane is taking off.\t"


def relaunch_dir(files: dict[str, bytes]):
    """A run dir of RUN_ARGS' config (config.yaml as the recipe writes it) plus `files`."""
    def prepare(w, tmp):
        cfg = plain("task=rte", *RUN_ARGS)
        d = tmp / "relaunch"
        d.mkdir()
        (d / CONFIG_FILE).write_text(yaml.safe_dump(cfg, sort_keys=False))
        (d / "train.log").write_text("")
        (d / ".jrft.lock").write_text("pid 1 on host since 2026-01-01T00:00:00\n")   # left by the first launch
        for name, content in files.items():
            (d / name).write_bytes(content)
        return {"dir": d}
    return prepare


def completed_run_with_record(w, tmp):
    run = copy_run(w, tmp)
    (run / ".hydra").mkdir()
    for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        (run / ".hydra" / name).write_text(f"# the first launch's {name}\n")
    return {"dir": run}


# ---------------------------------------------------------------------------------------------
# the table


@dataclass
class Case:
    argv: list[str]              # after `jrft`; {run} {export} {tmp} and the prepare step's keys are filled in
    message: str                 # must appear in the one stderr line
    prepare: Callable | None = None
    subprocess: bool = False
    stdin: bytes = b""
    absent: list[str] = field(default_factory=list)    # paths that must not exist afterwards


NEW = "hydra.run.dir={tmp}/new_run"
TRAIN = ["train", *RUN_ARGS, f"data.dir={GLUE}"]

CASES: dict[str, Case] = {
    # -- jrft train: every setting typed and range-checked before Hydra makes the run dir
    "train lr=abc": Case([*TRAIN, "train.lr=abc", NEW], "train.lr='abc' is not valid; it must be a number"),
    "train lr=nan": Case([*TRAIN, "train.lr=nan", NEW], "train.lr=nan is not valid; it must be a finite number"),
    "train lr=inf": Case([*TRAIN, "train.lr=inf", NEW], "train.lr=inf is not valid; it must be a finite number"),
    "train seed=abc": Case([*TRAIN, "seed=abc", NEW], "seed='abc' is not valid; it must be an integer"),
    "train epsilon without dp": Case([*TRAIN, "privacy.epsilon=abc", NEW],
                                     "privacy.epsilon is not a setting of this config"),
    "train epsilon=abc": Case([*TRAIN, "privacy=dp", "privacy.epsilon=abc", NEW],
                              "privacy.epsilon='abc' is not valid; it must be a number or null"),
    "train device=tpu": Case([*TRAIN, "hardware.device=tpu", NEW], "hardware.device='tpu' is not valid; choose one of"),
    "train max_length=0": Case([*TRAIN, "data.max_length=0", NEW], "data.max_length=0 is not valid"),
    "train warmup_ratio=1.5": Case([*TRAIN, "train.warmup_ratio=1.5", NEW], "train.warmup_ratio=1.5 is not valid"),
    "train eval_every=-1": Case([*TRAIN, "train.eval_every=-1", NEW], "train.eval_every=-1 is not valid"),
    "train checkpoint_every=-2": Case([*TRAIN, "train.checkpoint_every=-2", NEW],
                                      "train.checkpoint_every=-2 is not valid"),
    "train limit_train=0": Case([*TRAIN, "data.limit_train=0", NEW], "data.limit_train=0 is not valid"),
    "train limit_train=-3": Case([*TRAIN, "data.limit_train=-3", NEW], "data.limit_train=-3 is not valid"),
    "train override syntax": Case([*TRAIN, "train.lr=[", NEW], "override 'train.lr=['"),
    "train unknown key": Case([*TRAIN, "+train.lrr=1", NEW], "train.lrr is not a setting of the train section"),
    # -- jrft train: found once the tokenizer, data or model are loaded (the run dir is removed again)
    "train max_length over the model's": Case([*TRAIN, "data.max_length=600", NEW],
                                              "data.max_length=600 is not valid for model"),
    "train empty tsv": Case([*TRAIN, "data.dir={glue}", NEW], "train.tsv is empty",
                            glue_with("RTE", b""), subprocess=True),   # one train case as its own process
    "train header-only tsv": Case([*TRAIN, "data.dir={glue}", NEW], "train.tsv has no data rows",
                                  glue_with("RTE", RTE_HEADER)),
    "train non-utf8 tsv": Case([*TRAIN, "data.dir={glue}", NEW], "train.tsv is not UTF-8 text",
                               glue_with("RTE", RTE_HEADER + b"0\tA caf\xe9.\tB.\tentailment\n")),
    "train stsb label not a number": Case([*TRAIN, "task=stsb", "data.dir={glue}", NEW],
                                          "label 'high' in", glue_with("STS-B", STSB_HEADER + STSB_ROW + b"high\n")),
    "train stsb label nan": Case([*TRAIN, "task=stsb", "data.dir={glue}", NEW], "label 'nan' in",
                                 glue_with("STS-B", STSB_HEADER + STSB_ROW + b"nan\n")),
    # -- jrft train relaunched on a run dir whose record is damaged: says what to do, deletes nothing
    "train relaunch, truncated checkpoint": Case(
        [*TRAIN, "hydra.run.dir={dir}"], "the checkpoint is unreadable",
        relaunch_dir({CHECKPOINT_FILE: b"PK\x03\x04 truncated"})),
    "train relaunch, truncated results": Case(
        [*TRAIN, "hydra.run.dir={dir}"], "results.json is unreadable",
        relaunch_dir({RESULTS_FILE: b'{"status": "compl'})),
    "train relaunch, another config": Case(
        [*TRAIN, "seed=3", "hydra.run.dir={dir}"], "holds a run with another config",
        completed_run_with_record, subprocess=True),
    # -- jrft eval / predict / export on damaged artifacts, exports and inputs
    "eval damaged weights": Case(["eval", "{bad}"], "adapter.safetensors is not a readable safetensors file",
                                 damaged_weights),
    "eval truncated adapter_config": Case(["eval", "{bad}"], "adapter_config.json is unreadable",
                                          truncated_adapter_config),
    "predict edited method_config": Case(["predict", "{bad}"], "disagrees with itself: projection_seed=0",
                                         edited_projection_seed),
    "eval both seeds edited": Case(["eval", "{bad}"], "does not reproduce the run's outputs", both_projection_seeds),
    "eval nan weights": Case(["eval", "{bad}"], "hold NaN or infinite values", nan_weights),
    "export damaged weights": Case(["export", "{bad}", "--out", "{tmp}/out"], "is not a readable safetensors file",
                                   damaged_weights, absent=["{tmp}/out"]),
    "predict binary input file": Case(["predict", "{run}", "--input", "{input}"], "is not UTF-8 text", binary_file),
    "predict binary stdin": Case(["predict", "{run}"], "stdin is not UTF-8 text", subprocess=True,
                                 stdin=bytes(range(128, 256)) * 8),
    "predict out is a directory": Case(["predict", "{run}", "--out", "{tmp}"], "is a directory"),
    "eval out is a directory": Case(["eval", "{run}", "out={tmp}"], "out= '{tmp}' is a directory"),
    "predict tampered export": Case(["predict", "{bad}"], "is not the modeling code this jrft ships",
                                    tampered_export, absent=["{tmp}/FOREIGN_CODE_RAN"]),
    "eval corrupt export note": Case(["eval", "{bad}"], "jrft_export.json is unreadable", corrupt_export_note),
    "export onto its own run": Case(["export", "{run}", "--out", "{run}", "--overwrite"],
                                    "holds the run being exported"),
    "export onto the runs' parent": Case(["export", "{parent}/run1", "--out", "{parent}", "--overwrite"],
                                         "holds the run being exported", parent_with_two_runs),
    "export onto a non-export dir": Case(["export", "{run}", "--out", "{mine}", "--overwrite"],
                                         "is not an earlier export", non_export_dir),
    # -- the other commands
    "table out is a directory": Case(["table", "{run}", "--out", "{tmp}"], "is a directory"),
    "table bad format": Case(["table", "{run}", "--format", "xml"], "invalid choice: 'xml'"),
    "dp-noise epsilon=0": Case(["dp-noise", "--epsilon", "0", "--n", "100", "--batch-size", "10", "--epochs", "1"],
                               "epsilon=0.0 is invalid"),
    "bench steps=0": Case(["bench", "--steps", "0"], "'0' is not a positive integer"),
    "unknown command": Case(["trian"], "unknown command 'trian'"),
}


@contextlib.contextmanager
def restored_logging():
    """Hydra's job logging replaces the root handlers and disables existing loggers: put them back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    loggers = {n: (lg.disabled, lg.level, lg.handlers[:], lg.propagate)
               for n, lg in logging.Logger.manager.loggerDict.items() if isinstance(lg, logging.Logger)}
    try:
        yield
    finally:
        for h in root.handlers:
            if h not in handlers:
                h.close()
        root.handlers[:] = handlers
        root.setLevel(level)
        for name, (disabled, lvl, hs, propagate) in loggers.items():
            lg = logging.getLogger(name)
            lg.disabled, lg.propagate = disabled, propagate
            lg.setLevel(lvl)
            lg.handlers[:] = hs


def _run_case(case: Case, values: dict, capsys, monkeypatch) -> tuple[int, str, str]:
    argv = [a.format(**values) for a in case.argv]
    if case.subprocess:
        proc = subprocess.run([sys.executable, "-m", "jrft_cli", *argv], cwd=REPO, env=subprocess_env(),
                              input=case.stdin, capture_output=True, timeout=600)
        return proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
    monkeypatch.setattr("sys.stdin", io.StringIO(case.stdin.decode()))
    monkeypatch.setattr("sys.argv", list(sys.argv))     # `jrft train` hands its argv to Hydra through sys.argv
    capsys.readouterr()
    with restored_logging():
        try:
            rc = main(argv)
        except SystemExit as e:     # argparse usage errors and a single run's error exit inside the command
            rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, world, tmp_path, capsys, monkeypatch):
    case = CASES[name]
    values = {"run": world.run, "export": world.export, "tmp": tmp_path}
    if case.prepare:
        values.update(case.prepare(world, tmp_path))
    before = snapshot(world.root, tmp_path)
    rc, out, err = _run_case(case, values, capsys, monkeypatch)
    lines = err.splitlines()
    assert rc not in (0, None), f"rc={rc}\n{err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    assert len(lines) == 1 and lines[0].startswith("jrft"), err[-3000:]
    assert case.message.format(**values) in lines[0], lines[0]
    assert out == ""
    assert snapshot(world.root, tmp_path) == before            # nothing written, changed or deleted
    for path in case.absent + ["{tmp}/new_run"]:
        assert not Path(path.format(**values)).exists(), path


# ---------------------------------------------------------------------------------------------
# faults that need a running process


def jrft_train(*overrides: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jrft_cli", "train", *RUN_ARGS, f"data.dir={GLUE}", *overrides],
                          cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=timeout)


def test_a_second_writer_is_refused_and_changes_nothing(world, tmp_path):
    """While a live process holds a run dir (here this test, holding its lock as a training run would),
    another `jrft train` on it exits non-zero with one line naming the holder, and writes nothing."""
    run = copy_run(world, tmp_path)
    lock = RunDirLock.acquire(run)
    lock.record_holder()
    before = snapshot(run)
    try:
        proc = jrft_train("seed=1", f"hydra.run.dir={run}")
    finally:
        lock.release()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines() == [f"jrft: error: run dir {run} is in use by another jrft process "
                                        f"({(run / '.jrft.lock').read_text().strip()}); wait for it to end, or use "
                                        f"another hydra.run.dir / hydra.sweep.dir"]
    assert snapshot(run) == before


def test_non_finite_loss_fails_the_run_and_table_skips_it(tmp_path):
    """lr=1e20 makes the first step's update overflow: the loss of step 2 is NaN. The run stops there,
    exits non-zero with one line, and records status "failed" with the error and no metrics."""
    run = tmp_path / "diverged"
    proc = jrft_train("train.lr=1e20", f"hydra.run.dir={run}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("jrft: error: training failed at step 2: "), proc.stderr
    results = json.loads((run / RESULTS_FILE).read_text())
    assert results["status"] == "failed" and results["failed_at_step"] == 2
    assert results["error"].startswith("training failed at step 2: ")
    assert not {"dev", "best_dev", "trainable_params"} & set(results)
    assert not (run / ADAPTER_WEIGHTS).exists() and not (run / CHECKPOINT_FILE).exists()
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(isinstance(v, (int, float)) and v == v for r in logged for v in r.values())   # nothing NaN logged
    table = subprocess.run([sys.executable, "-m", "jrft_cli", "table", str(tmp_path)], cwd=REPO,
                           env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert table.returncode == 1 and table.stdout == ""
    assert f"jrft table: skipped {run / RESULTS_FILE}: the run failed (training failed at step 2" in table.stderr


def test_predict_on_a_long_line_never_exceeds_the_models_positions(world, tmp_path, capsys, monkeypatch):
    """A run recorded before data.max_length was checked may hold more than the model takes (here 1000 >
    MiniLM's 512): predict truncates at the model's limit instead of crashing on a long line."""
    run = copy_run(world, tmp_path)
    edit_json(run / ADAPTER_CONFIG, lambda i: i.update(max_length=1000))
    line = " ".join(["word"] * 700) + "\t" + " ".join(["other"] * 300) + "\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(line))
    assert main(["predict", str(run)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[1].split("\t")[0] in ("entailment", "not_entailment")
