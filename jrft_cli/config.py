"""Where the Hydra configs live, and what each config group offers."""
from __future__ import annotations

import importlib.resources
from pathlib import Path

GROUPS = ("model", "task", "method", "hardware", "logger", "privacy", "experiment")


def config_dir() -> Path:
    """The conf/ directory: shipped as the `jrft_cli.conf` package (editable or not), so it is
    found from any working directory. A source checkout's own conf/ (next to this package) wins, so
    a checkout imported ahead of the editable install (a worktree, PYTHONPATH) uses its own configs."""
    local = Path(__file__).resolve().parent.parent / "conf"
    if (local / "config.yaml").is_file():
        return local
    return Path(str(importlib.resources.files("jrft_cli.conf")))


def group_choices(group: str) -> list[str]:
    """The options of a config group (file names under conf/<group>/, without .yaml)."""
    d = config_dir() / group
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def compose(overrides: list[str] | None = None, config_name: str = "config"):
    """Compose the config as `jrft train` would, without running anything (tests, tools)."""
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3", job_name="train"):
        return hydra_compose(config_name=config_name, overrides=list(overrides or []), return_hydra_config=False)
