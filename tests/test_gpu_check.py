"""scripts/gpu_check.sh (the end-to-end check for a CUDA machine) and its helper scripts/gpu_check_steps.py.

No GPU here, so the CUDA steps themselves do not run: what is checked is the script's syntax, its
no-CUDA skip, the commands its --dry-run prints (each parsed by the parser of the command it calls:
every `jrft train` line composed through the real Hydra config and checked by the recipe's `validate`,
so a typo in an override fails here), and the summary table the helper builds from step records.
"""
from __future__ import annotations

import importlib.util
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, find_glue_dir, plain, subprocess_env

SCRIPT = REPO / "scripts" / "gpu_check.sh"
HELPER = REPO / "scripts" / "gpu_check_steps.py"


def run_script(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env=subprocess_env(PYTHON=sys.executable, **env))


def load_helper():
    spec = importlib.util.spec_from_file_location("gpu_check_steps", HELPER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_parses():
    proc = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: the script would run the check")
def test_without_cuda_it_skips_and_creates_nothing(tmp_path):
    out = tmp_path / "x"
    proc = run_script(OUT=str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["gpu_check: no CUDA device; skipped"]
    assert not out.exists()


def test_unknown_argument_is_refused(tmp_path):
    proc = run_script("--dry-runn", OUT=str(tmp_path / "x"))
    assert proc.returncode == 2
    assert "--dry-runn" in proc.stderr and "--dry-run" in proc.stderr
    assert not (tmp_path / "x").exists()


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """(OUT, the printed command lines as argument lists) of `gpu_check.sh --dry-run`."""
    out = tmp_path_factory.mktemp("gpu_check") / "x"
    proc = run_script("--dry-run", OUT=str(out))
    assert proc.returncode == 0, proc.stderr
    assert not out.exists()
    lines = proc.stdout.splitlines()
    syntax = subprocess.run(["bash", "-n"], input=proc.stdout, capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr          # every line is a valid shell command
    return out, [shlex.split(line) for line in lines]


def _jrft(argv: list[str]) -> tuple[str, list[str]] | None:
    """(jrft subcommand, its arguments) of `python -m jrft_cli CMD ...`, else None."""
    if argv[1:3] == ["-m", "jrft_cli"]:
        return argv[3], argv[4:]
    return None


def _torchrun(argv: list[str]):
    if argv[1:3] == ["-m", "torch.distributed.run"]:
        import torch.distributed.run as torchrun

        return torchrun.parse_args(argv[3:])
    return None


def _train_config(overrides: list[str], out: Path) -> dict:
    """The composed, validated config of one printed `jrft train` command."""
    from jrft_cli.training.recipe import validate

    cfg = plain(*overrides)          # Hydra: an unknown key, group option or bad value fails here
    validate(cfg)                    # jrft's own checks (types, ranges, method options, privacy settings)
    assert cfg["hardware"]["device"] == "cuda" and cfg["hardware"]["precision"] == "bf16"
    assert cfg["logger"]["enabled"] is False
    assert cfg["task"]["name"] == "sst2"
    run_dir = [o.split("=", 1)[1] for o in overrides if o.startswith("hydra.run.dir=")]
    assert len(run_dir) == 1 and Path(run_dir[0]).parent == out
    cfg["_run_dir"] = Path(run_dir[0])
    return cfg


def test_dry_run_commands_parse(dry_run):
    from jrft_cli.cli import bench, eval as eval_cli, export
    from jrft_cli.core.registry import method_names
    from jrft_cli.training.recipe import privacy_plan

    out, commands = dry_run
    helper = load_helper()
    train, seen = [], set()
    for argv in commands:
        assert argv[0] == sys.executable
        jrft, launched = _jrft(argv), _torchrun(argv)
        if launched is not None:
            assert launched.standalone and launched.nproc_per_node == "1"   # no GPU: one process
            if launched.module:
                assert launched.training_script == "jrft_cli" and launched.training_script_args[0] == "train"
                train.append(("torchrun", _train_config(launched.training_script_args[1:], out)))
            else:
                assert launched.training_script == "scripts/gpu_check_steps.py"
                assert helper.parser().parse_args(launched.training_script_args).cmd == "nccl-probe"
            seen.add("torchrun")
        elif jrft is not None:
            cmd, args = jrft
            seen.add(cmd)
            if cmd == "train":
                train.append(("python", _train_config(args, out)))
            elif cmd == "export":
                parsed = export.parser().parse_args(args)
                assert parsed.run_dir == out / "train_jr" and parsed.out == out / "export_jr"
            elif cmd == "eval":
                assert Path(args[0]) == out / "export_jr"
                assert eval_cli.parse_overrides(args[1:])["task"] == "sst2"
            elif cmd == "bench":
                parsed = bench.parser().parse_args(args)
                assert parsed.device == "cuda" and parsed.out == out / "bench"
                bench._settings(parsed, bench._compose(parsed))   # methods, --vary: checked as bench checks them
            else:
                pytest.fail(f"unexpected jrft command: {shlex.join(argv)}")
        else:
            assert argv[1] == "scripts/gpu_check_steps.py", shlex.join(argv)
            parsed = helper.parser().parse_args(argv[2:])
            seen.add(parsed.cmd)
            if parsed.cmd == "reload":
                assert parsed.export == out / "export_jr" and parsed.device == "cuda"
    assert seen == {"environment", "train", "export", "eval", "reload", "bench", "torchrun", "table"}

    # one plain run per registered method, in the registry's order, each in its own run dir
    per_method = [cfg for how, cfg in train if how == "python" and cfg["_run_dir"].name.startswith("train_")]
    assert [cfg["method"]["name"] for cfg in per_method] == list(method_names())
    assert [cfg["_run_dir"].name for cfg in per_method] == [f"train_{m}" for m in method_names()]
    assert all(not cfg["privacy"]["enabled"] and cfg["train"]["max_steps"] > 0 for cfg in per_method)

    private = [cfg for how, cfg in train if cfg["privacy"]["enabled"]]
    assert len(private) == 1 and private[0]["method"]["name"] == "jr"
    cfg = private[0]
    plan = privacy_plan(cfg, cfg["data"]["limit_train"])   # the epsilon is reachable on that many rows
    assert plan.target_epsilon <= 3 and plan.steps > 0

    ddp = [cfg for how, cfg in train if how == "torchrun"]
    assert len(ddp) == 1 and ddp[0]["method"]["name"] == "jr" and not ddp[0]["privacy"]["enabled"]
    assert len({cfg["_run_dir"] for _, cfg in train}) == len(train)


# -- the summary table ----------------------------------------------------------------------------

PUBLISHED_RUN = REPO / "docs" / "results" / "small_glue" / "jr_lr" / "sst2_lr0.03" / "results.json"


def _record(out: Path, name: str, kind: str, rc: str, artifact: Path, log_text: str = "") -> None:
    log = out / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(log_text)
    with (out / "steps.tsv").open("a") as f:
        f.write("\t".join([name, kind, rc, "12.3", str(artifact), str(log)]) + "\n")


def _cuda_run(out: Path, name: str) -> Path:
    # A real results.json (a CPU run published in docs/results) marked as a CUDA run: no GPU here to make one.
    results = json.loads(PUBLISHED_RUN.read_text())
    results["device"] = "cuda:0"
    (out / name).mkdir(parents=True)
    (out / name / "results.json").write_text(json.dumps(results))
    return out / name


def test_table_reads_the_numbers_from_the_files(tmp_path, capsys):
    helper = load_helper()
    out = tmp_path
    run = _cuda_run(out, "train_jr")
    _record(out, "train_jr", "train", "0", run)
    bench_json = out / "bench" / "bench_cuda.json"
    bench_json.parent.mkdir()
    # The shape of a `jrft bench` report (schema jrft-bench/2); the rates are made up, a GPU would measure them.
    bench_json.write_text(json.dumps({"environment": {"device": "cuda"}, "targets": [{"met": True}, {"met": False}],
                                      "train": [{"id": {"method": "full"}, "examples_per_s": 10.0},
                                                {"id": {"method": "jr", "projection": "dense"}, "examples_per_s": 1234.4}],
                                      "eval": [{"id": {"method": "jr", "projection": "dense"}, "examples_per_s": 5678.0}]}))
    _record(out, "bench", "bench", "0", bench_json)
    assert helper.table(out) == 0
    text = capsys.readouterr().out
    results = json.loads(PUBLISHED_RUN.read_text())
    row = next(line for line in text.splitlines() if line.startswith("| train_jr "))
    assert "| ok |" in row and "| 12.3 |" in row
    assert f"accuracy {results['dev']['accuracy']:.4f}" in row
    assert f"{results['examples_per_s']:.0f} train ex/s" in row and f"{results['steps']} steps" in row
    row = next(line for line in text.splitlines() if line.startswith("| bench "))
    assert "| ok |" in row and "train 1234, eval 5678, private -" in row and "targets met 1/2" in row
    assert (out / "summary.md").read_text() in text


def test_table_records_each_failure_and_exits_nonzero(tmp_path, capsys):
    helper = load_helper()
    out = tmp_path
    _record(out, "train_full", "train", "0", _cuda_run(out, "train_full"))
    _record(out, "train_lora", "train", "2", out / "train_lora",
            "Traceback (most recent call last):\n  ...\njrft train: error: method.r=0 is not valid\n====\n")
    cpu_run = _cuda_run(out, "train_bitfit")
    results = json.loads((cpu_run / "results.json").read_text())
    results["device"] = "cpu"
    (cpu_run / "results.json").write_text(json.dumps(results))
    _record(out, "train_bitfit", "train", "0", cpu_run)
    _record(out, "export_jr", "export", "0", out / "export_jr")                  # exit 0 but nothing written
    _record(out, "bench", "bench", "124", out / "bench" / "bench_cuda.json")
    _record(out, "nccl_probe", "nccl", "-", out / "nccl_probe.json", "not run: the BUDGET of 450 s was spent\n")
    assert helper.table(out) == 1
    rows = {line.split(" | ")[0].lstrip("| "): line for line in capsys.readouterr().out.splitlines()
            if line.startswith("| ") and not line.startswith("| step ")}
    assert list(rows) == ["train_full", "train_lora", "train_bitfit", "export_jr", "bench", "nccl_probe"]
    assert "| ok |" in rows["train_full"]
    assert all("| FAILED |" in rows[name] for name in list(rows)[1:])
    assert "exit 2: jrft train: error: method.r=0 is not valid" in rows["train_lora"]
    assert "not on CUDA" in rows["train_bitfit"]
    assert "jrft_export.json" in rows["export_jr"]
    assert "time limit" in rows["bench"]
    assert "BUDGET" in rows["nccl_probe"]


def test_table_without_step_records_fails(tmp_path, capsys):
    assert load_helper().table(tmp_path) == 1
    assert "FAILED" in capsys.readouterr().out


@pytest.mark.skipif(find_glue_dir() is None, reason="GLUE TSVs not found (the dry run still passes data.dir)")
def test_dry_run_uses_the_glue_dir(dry_run):
    _, commands = dry_run
    dirs = {Path(a.split("=", 1)[1]).resolve() for argv in commands for a in argv if a.startswith("data.dir=")}
    assert dirs == {find_glue_dir().resolve()}
