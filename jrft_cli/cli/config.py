"""The config groups `jrft train` composes with Hydra (files under conf/, see core.conf)."""
from __future__ import annotations

from jrft_cli.core.conf import config_dir, group_choices  # noqa: F401 (the CLI's view of conf/)

GROUPS = ("model", "task", "method", "hardware", "logger", "privacy", "experiment", "row")


def compose(overrides: list[str] | None = None, config_name: str = "config"):
    """Compose the config as `jrft train` would, without running anything (tests, tools)."""
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3", job_name="train"):
        return hydra_compose(config_name=config_name, overrides=list(overrides or []), return_hydra_config=False)
