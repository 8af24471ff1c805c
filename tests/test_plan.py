"""dp.plan.resolve_plan: the one place privacy settings are validated and resolved (noise multiplier,
q, steps, delta), with or without the training set size, under config or CLI names."""
from __future__ import annotations

import math

import pytest

from jrft_cli.dp import PrivacyError
from jrft_cli.dp.accounting import epsilon_for, noise_multiplier_for
from jrft_cli.dp.plan import Naming, PrivacyPlan, resolve_plan
from jrft_cli.core.errors import JrftError

SETTINGS = {"enabled": True, "epsilon": 8.0, "delta": None, "noise_multiplier": None, "max_grad_norm": 1.0,
            "accountant": "prv", "batch_size": 100, "micro_batch_size": 16, "epochs": None, "constant_lr": True,
            "grad_sample_mode": "auto"}


def test_resolves_q_steps_delta_and_the_smallest_noise_reaching_the_target():
    p = resolve_plan(SETTINGS, n=1000, epochs=2)
    assert isinstance(p, PrivacyPlan)
    assert p.sample_rate == 0.1 and p.steps == 20 and p.delta == 1 / 2000
    assert p.noise_multiplier == noise_multiplier_for(8.0, 1 / 2000, 0.1, 20, "prv")
    assert 7.9 <= epsilon_for(p.noise_multiplier, 0.1, 20, 1 / 2000) <= 8.0
    assert (p.batch_size, p.micro_batch_size, p.max_grad_norm, p.target_epsilon) == (100, 16, 1.0, 8.0)


def test_steps_round_and_settings_epochs_and_max_steps_take_precedence():
    rdp = {**SETTINGS, "accountant": "rdp"}
    assert resolve_plan({**rdp, "batch_size": 3}, n=7, epochs=1).steps == 2        # round(2.333), not ceil
    assert resolve_plan({**rdp, "batch_size": 32}, n=8000, epochs=3).steps == 750
    assert resolve_plan({**rdp, "epochs": 1}, n=1000, epochs=5).steps == 10         # privacy.epochs wins
    assert resolve_plan({**rdp, "epochs": 1}, n=1000, epochs=5, max_steps=7).steps == 7
    assert resolve_plan({**rdp, "delta": 1e-5}, n=1000, epochs=1).delta == 1e-5


def test_without_n_only_the_data_free_checks_run():
    assert resolve_plan(SETTINGS) is None                      # no accounting, no data: nothing resolved
    with pytest.raises(PrivacyError, match=r"^privacy.batch_size=0 is invalid; it must be an integer >= 1$"):
        resolve_plan({**SETTINGS, "batch_size": 0})


@pytest.mark.parametrize("override,message", [
    ({"epsilon": 0}, "privacy.epsilon=0 is invalid; it must be > 0"),
    ({"delta": 1.0}, "privacy.delta=1.0 is invalid; it must be in (0, 1) (null = 1/(2N))"),
    ({"noise_multiplier": -0.5}, "privacy.noise_multiplier=-0.5 is invalid; it must be > 0 (null = derived from epsilon)"),
    ({"epsilon": None}, "privacy.epsilon and privacy.noise_multiplier are both null; give a target epsilon"),
    ({"accountant": "gdp"}, "privacy.accountant='gdp' is invalid; choose one of: prv, rdp"),
    ({"max_grad_norm": 0}, "privacy.max_grad_norm=0 is invalid; it must be > 0"),
    ({"max_grad_norm": None}, "privacy.max_grad_norm=None is invalid; it must be > 0"),
    ({"micro_batch_size": 2.5}, "privacy.micro_batch_size=2.5 is invalid; it must be an integer >= 1"),
    ({"grad_sample_mode": "fast"}, "privacy.grad_sample_mode='fast' is invalid; choose one of: auto, ghost, hooks"),
    ({"epochs": 0}, "privacy.epochs=0 is invalid; it must be > 0"),
])
def test_data_free_checks_name_the_config_key(override, message):
    for n in (None, 1000):            # the same message before and after the data loads
        with pytest.raises(PrivacyError) as info:
            resolve_plan({**SETTINGS, **override}, n, epochs=2)
        assert str(info.value) == message
        assert isinstance(info.value, JrftError)


def test_loop_settings_a_private_run_cannot_honour():
    with pytest.raises(PrivacyError, match=r"^train.grad_accum=2 is not valid with privacy=dp: accumulation"):
        resolve_plan(SETTINGS, grad_accum=2)
    with pytest.raises(PrivacyError, match=r"^train.max_grad_norm=1.0 is for non-private runs; with privacy=dp set "
                                           r"privacy.max_grad_norm"):
        resolve_plan(SETTINGS, loop_max_grad_norm=1.0)


@pytest.mark.parametrize("override,n,message", [
    ({"batch_size": 5000}, 1000, "privacy.batch_size=5000 is invalid; it must be <= the training set size N=1000 "
                                 "(it is the expected Poisson batch, q = batch_size / N)"),
    ({}, 0, "the training set size N=0 is invalid; it must be an integer >= 1"),
    ({"epochs": 0.01}, 1000, "privacy.epochs=0.01 at q=0.1 gives 0 steps; it must give >= 1 (epochs >= q/2)"),
])
def test_checks_that_need_n(override, n, message):
    with pytest.raises(PrivacyError) as info:
        resolve_plan({**SETTINGS, **override}, n, epochs=2)
    assert str(info.value) == message


def test_a_given_noise_multiplier_must_reach_the_target():
    # rdp: the exact spend is in the message
    spent = epsilon_for(0.3, 0.01, 100, 1e-5, "rdp")
    settings = {**SETTINGS, "epsilon": 3.0, "delta": 1e-5, "accountant": "rdp", "batch_size": 10, "epochs": 1}
    with pytest.raises(PrivacyError, match=r"^noise multiplier 0.3 is too small for epsilon=3.0: it gives ") as info:
        resolve_plan({**settings, "noise_multiplier": 0.3}, n=1000)
    assert f"epsilon={spent:.4g} (rdp, delta=1e-05, q=0.01, 100 steps)" in str(info.value)
    sigma = noise_multiplier_for(3.0, 1e-5, 0.01, 100, "rdp")
    p = resolve_plan({**settings, "noise_multiplier": sigma}, n=1000)
    assert p.noise_multiplier == sigma and p.target_epsilon == 3.0
    # no target: any accountable noise multiplier is taken as given
    assert resolve_plan({**settings, "epsilon": None, "noise_multiplier": 1.0}, n=1000).noise_multiplier == 1.0


def test_a_tiny_noise_multiplier_is_refused_by_the_rdp_bound_before_prv_runs():
    # PRV at sigma=0.01 (q=0.1, 20 steps) would need GBs; the RDP bound settles it
    with pytest.raises(PrivacyError, match=r"^noise multiplier 0.01 is too small for epsilon=8.0: it gives epsilon=.* "
                                           r"\(rdp bound"):
        resolve_plan({**SETTINGS, "noise_multiplier": 0.01}, n=1000, epochs=2)


def test_without_a_target_a_noise_multiplier_prv_cannot_account_stops_before_training():
    # sigma=0.001 at q=0.032 over 62 steps: PRV would need 458 GiB at the first evaluation
    settings = {**SETTINGS, "epsilon": None, "noise_multiplier": 0.001, "batch_size": 256}
    with pytest.raises(PrivacyError, match=r"noise multiplier 0.001 is too small for the prv accountant: .*use accountant rdp"):
        resolve_plan(settings, n=8000, epochs=2)
    p = resolve_plan({**settings, "accountant": "rdp"}, n=8000, epochs=2)    # rdp accounts it
    assert (p.sample_rate, p.steps, p.noise_multiplier) == (0.032, 62, 0.001)


def test_a_resolved_plan_resolves_to_itself():
    p = resolve_plan(SETTINGS, n=1000, epochs=2)
    assert resolve_plan(p.settings()) is None                   # the trainer's data-free check passes
    assert resolve_plan({**p.settings(), "epochs": 2}, n=1000) == p


def test_cli_naming():
    cli = Naming(prefix="--", dashes=True, unset="omitted", n="--n")
    cases = [({"batch_size": 200}, 100, "--batch-size=200 is invalid; it must be <= --n=100 "
                                        "(it is the expected Poisson batch, q = batch_size / N)"),
             ({"delta": 1.0}, 100, "--delta=1.0 is invalid; it must be in (0, 1) (omitted = 1/(2N))"),
             ({}, 0, "--n=0 is invalid; it must be an integer >= 1"),
             ({"grad_sample_mode": "x"}, 100, "--grad-sample-mode='x' is invalid; choose one of: auto, ghost, hooks")]
    for override, n, message in cases:
        with pytest.raises(PrivacyError) as info:
            resolve_plan({"epsilon": 1.0, "batch_size": 10, "epochs": 1, **override}, n, names=cli)
        assert str(info.value) == message


def test_left_out_keys_take_their_defaults():
    p = resolve_plan({"epsilon": 1.0, "batch_size": 10, "epochs": 1}, 100)
    assert (p.accountant, p.max_grad_norm, p.micro_batch_size, p.constant_lr, p.grad_sample_mode) == \
        ("prv", 1.0, 10, True, "auto")
    assert p.delta == 1 / 200 and math.isfinite(p.noise_multiplier)
