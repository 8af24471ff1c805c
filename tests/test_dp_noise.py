"""`jrft dp-noise`: end to end through the dispatcher, and its error handling."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from jrft_cli.cli import dp_noise
from jrft_cli.dp.accounting import epsilon_for, noise_multiplier_for
from jrft_cli.dp.plan import resolve_plan

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    # this checkout's package first, whatever is installed
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "jrft_cli", "dp-noise", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )


def test_cli_end_to_end_last_line_is_the_noise_multiplier():
    # N=1000, B=50: q=0.05, 2 epochs -> 40 steps; delta defaults to 1/(2N)
    proc = run_cli("--epsilon", "3", "--n", "1000", "--batch-size", "50", "--epochs", "2")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    sigma = float(lines[-1])
    assert sigma == noise_multiplier_for(3.0, 1 / 2000, 0.05, 40, "prv")
    assert "steps=40" in proc.stdout and "delta=0.0005" in proc.stdout and "accountant=prv" in proc.stdout
    assert epsilon_for(sigma, 0.05, 40, 5e-4) <= 3.0


def test_cli_invalid_input_exits_2_with_one_line():
    proc = run_cli("--epsilon", "0", "--n", "1000", "--batch-size", "50", "--epochs", "2")
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "epsilon=0.0 is invalid" in proc.stderr


def test_main_with_delta_and_rdp(capsys):
    assert dp_noise.main(["--epsilon", "2", "--delta", "1e-5", "--n", "500", "--batch-size", "25",
                          "--epochs", "1.5", "--accountant", "rdp"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert float(out[-1]) == noise_multiplier_for(2.0, 1e-5, 0.05, 30, "rdp")
    assert "accountant=rdp" in out[1] and "steps=30" in out[0]



def test_numbers_are_the_plan_jrft_train_resolves(capsys):
    """dp-noise and `jrft train privacy=dp` share dp.plan.resolve_plan: same q, steps, delta, noise."""
    assert dp_noise.main(["--epsilon", "8", "--n", "8000", "--batch-size", "256", "--epochs", "2"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    plan = resolve_plan({"epsilon": 8.0, "delta": None, "noise_multiplier": None, "max_grad_norm": 5.0,
                         "accountant": "prv", "batch_size": 256, "micro_batch_size": 64, "epochs": 2}, 8000)
    assert float(out[-1]) == plan.noise_multiplier
    assert out[0] == f"N=8000 batch_size=256 q={plan.sample_rate:.6g} epochs=2 steps={plan.steps}"
    assert out[1] == f"target epsilon=8 delta={plan.delta:.6g} accountant=prv"

@pytest.mark.parametrize(
    "args,message",
    [
        (["--epsilon", "1", "--n", "100", "--batch-size", "200", "--epochs", "1"], "--batch-size=200 is invalid; it must be <= --n=100"),
        (["--epsilon", "1", "--n", "100", "--batch-size", "10", "--epochs", "1", "--accountant", "gdp"],
         "--accountant='gdp' is invalid; choose one of: prv, rdp"),
        (["--epsilon", "1", "--delta", "1", "--n", "100", "--batch-size", "10", "--epochs", "1"], "--delta=1.0 is invalid; it must be in (0, 1) (omitted = 1/(2N))"),
        (["--epsilon", "1", "--n", "100", "--batch-size", "10", "--epochs", "0"], "--epochs=0.0 is invalid"),
        (["--epsilon", "1", "--n", "0", "--batch-size", "10", "--epochs", "1"], "--n=0 is invalid"),
    ],
)
def test_main_rejects_bad_settings(capsys, args, message):
    assert dp_noise.main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and message in captured.err


@pytest.mark.parametrize(
    "args,message",
    [
        (["--n", "100", "--batch-size", "10", "--epochs", "1"], "--epsilon"),  # missing
        (["--epsilon", "x", "--n", "100", "--batch-size", "10", "--epochs", "1"], "invalid float value: 'x'"),
    ],
)
def test_argparse_errors_are_one_line_exit_2(capsys, args, message):
    with pytest.raises(SystemExit) as info:
        dp_noise.main(args)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
