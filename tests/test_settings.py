"""jrft_cli.training.settings: the composed config's types and ranges, checked in one place; every shipped
config passes; Hydra's own composition errors become one line (cli/train.py)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from jrft_cli.cli.config import compose, group_choices
from jrft_cli.core.errors import JrftError
from jrft_cli.training import settings
from jrft_cli.training.recipe import validate

from conftest import REPO


def plain(*overrides: str) -> dict:
    return OmegaConf.to_container(compose(["logger=none", "hardware=cpu", *overrides]), resolve=True)


@pytest.mark.parametrize("overrides, message", [
    (["train.lr=abc"], "train.lr='abc' is not valid; it must be a number or null (null = the method's default)"),
    (["train.lr=nan"], "train.lr=nan is not valid; it must be a finite number"),
    (["train.lr=inf"], "train.lr=inf is not valid; it must be a finite number"),
    (["seed=abc"], "seed='abc' is not valid; it must be an integer"),
    (["seed=-1"], "seed=-1 is not valid; it must be an integer >= 0"),
    (["seed=1.5"], "seed=1.5 is not valid; it must be an integer"),
    (["method=lora", "d=abc"], "d='abc' is not valid; it must be an integer"),
    (["privacy=dp", "privacy.epsilon=abc"], "privacy.epsilon='abc' is not valid; it must be a number or null"),
    (["privacy=dp", "privacy.batch_size=1.5"], "privacy.batch_size=1.5 is not valid; it must be an integer"),
    (["privacy=dp", "privacy.constant_lr=yes"], "privacy.constant_lr='yes' is not valid; it must be true or false"),
    (["hardware.device=tpu"], "hardware.device='tpu' is not valid; choose one of auto, cpu, cuda, cuda:<index>, mps"),
    (["hardware.precision=fp8"], "hardware.precision='fp8' is not valid; choose one of auto, fp32, bf16, fp16"),
    (["hardware.num_threads=0"], "hardware.num_threads=0 is not valid; it must be a positive integer"),
    (["data.max_length=0"], "data.max_length=0 is not valid; it must be >= 8"),
    (["data.max_length=64.5"], "data.max_length=64.5 is not valid; it must be an integer"),
    (["data.limit_train=0"], "data.limit_train=0 is not valid; it must be a positive integer (null = every row)"),
    (["data.limit_train=-3"], "data.limit_train=-3 is not valid; it must be a positive integer"),
    (["data.limit_eval=abc"], "data.limit_eval='abc' is not valid; it must be an integer or null"),
    (["train.warmup_ratio=1.5"], "train.warmup_ratio=1.5 is not valid; it must be in [0, 1)"),
    (["train.warmup_ratio=1"], "train.warmup_ratio=1 is not valid; it must be in [0, 1)"),
    (["train.warmup_ratio=-0.1"], "train.warmup_ratio=-0.1 is not valid; it must be in [0, 1)"),
    (["train.eval_every=-1"], "train.eval_every=-1 is not valid; it must be an integer >= 0 (0 = once per epoch)"),
    (["train.checkpoint_every=-2"], "train.checkpoint_every=-2 is not valid; it must be an integer >= 0"),
    (["train.max_steps=2.5"], "train.max_steps=2.5 is not valid; it must be an integer"),
    (["train.log_every=0"], "train.log_every=0 is not valid; it must be a positive integer"),
    (["train.weight_decay=-1"], "train.weight_decay=-1 is not valid; it must be >= 0"),
    (["run.save_trainable=maybe"], "run.save_trainable='maybe' is not valid; it must be true or false"),
    (["train.group_by_length=3"], "train.group_by_length=3 is not valid; it must be true or false"),
    (["model.name=3"], "model.name=3 is not valid; it must be a string"),
    (["method.lr=abc"], "method.lr='abc' is not valid; it must be a number"),
    (["method.head=pooler"], "method.head='pooler' is not valid; choose one of mask, last, first, tokens, cls"),
    (["method.dropout=1"], "method.dropout=1 is not valid; it must be in [0, 1)"),
    (["+train.lrr=1"], "train.lrr is not a setting of the train section (did you mean 'train.lr'?)"),
    (["+seeed=1"], "seeed is not a setting of the config (did you mean 'seed'?)"),
    (["+privacy.epsilon=3"], "privacy.epsilon is not a setting of the privacy section; valid keys: enabled"),
])
def test_bad_values_are_one_line_naming_key_value_and_what_it_must_be(overrides, message):
    with pytest.raises(JrftError) as err:
        validate(plain(*overrides))
    assert str(err.value).startswith(message), str(err.value)
    assert "\n" not in str(err.value)


def test_wandb_logger_settings_are_typed():
    with pytest.raises(JrftError, match=r"^logger.mode='loud' is not valid; choose one of auto, online"):
        validate(plain("logger=wandb", "logger.mode=loud"))
    with pytest.raises(JrftError, match=r"^logger.tags='a' is not valid; it must be a list of strings"):
        validate(plain("logger=wandb", "logger.tags=a"))


def test_a_deleted_required_key_is_named():
    cfg = plain()
    del cfg["train"]["warmup_ratio"]
    with pytest.raises(JrftError, match=r"^train.warmup_ratio is missing from the config"):
        settings.check(cfg)


def test_every_shipped_config_passes():
    """Each experiment preset, table row and config-group option composes into a valid config."""
    cases = []
    for group in ("experiment", "model", "task", "method", "hardware", "privacy"):
        choices = group_choices(group)
        assert choices, f"conf/{group}/ offers no choice"
        cases += [[f"{group}={choice}"] for choice in choices]
    rows = sorted(p.stem for p in (REPO / "conf" / "row").glob("*.yaml"))
    assert rows, "conf/row/ holds no row"
    cases += [[f"+row={row}", *extra] for row in rows for extra in ([], ["privacy=dp"])]
    cases.append(["logger=wandb", "hardware.device=cuda:1", "data.limit_train=5", "train.lr=1"])
    refused = []
    for overrides in cases:
        try:
            validate(plain(*overrides))
        except JrftError as err:
            refused.append(f"{' '.join(overrides)}: {err}")
    assert refused == []


def test_max_length_against_the_models_limit():
    settings.check_max_length(512, 512, "m")
    settings.check_max_length(600, None, "m")      # an unknown limit is not invented
    with pytest.raises(JrftError, match=r"^data.max_length=513 is not valid for model 'm'; it must be <= 512"):
        settings.check_max_length(513, 512, "m")


def test_hydra_composition_errors_become_one_line():
    from hydra.errors import HydraException

    from jrft_cli.cli.train import hydra_error_line

    with pytest.raises(HydraException) as err:
        compose(["privacy.epsilon=abc"])            # privacy=none has no epsilon
    line = hydra_error_line(err.value)
    assert line.startswith("privacy.epsilon is not a setting of this config (privacy.* settings other than "
                           "enabled need privacy=dp)") and "\n" not in line
    with pytest.raises(HydraException) as err:
        compose(["train.lr=["])
    assert re.match(r"^override 'train.lr=\[': ", hydra_error_line(err.value))
    assert "\n" not in hydra_error_line(err.value)


def test_preflight_checks_a_single_run_before_hydra_and_leaves_sweeps_to_their_jobs(tmp_path):
    from jrft_cli.cli.train import preflight

    run_dir = tmp_path / "run"
    assert preflight(["train.lr=abc", f"hydra.run.dir={run_dir}"]).startswith("train.lr='abc' is not valid")
    assert preflight(["privacy.epsilon=abc"]).startswith("privacy.epsilon is not a setting")
    assert preflight(["logger=none", f"hydra.run.dir={run_dir}"]) is None
    assert preflight(["-m", "train.lr=abc,1"]) is None          # each sweep job is checked when it runs
    assert preflight(["--cfg", "job", "train.lr=abc"]) is None  # Hydra's informational flags
    assert not run_dir.exists()
