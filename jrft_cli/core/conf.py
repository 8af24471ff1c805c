"""Where jrft's config files (conf/) live, and what each config group offers.

No Hydra here: the method registry reads each method's defaults (learning rates, head) from its
conf/method yaml through these paths, and the CLI composes the same files with Hydra.
"""
from __future__ import annotations

import importlib.resources
from pathlib import Path


def config_dir() -> Path:
    """The conf/ directory: shipped as the `jrft_cli.conf` package (editable or not), so it is
    found from any working directory. A source checkout (pyproject.toml and conf/ beside the imported
    package) uses its own conf/: an editable install maps `jrft_cli.conf` to the checkout it was
    installed from, which is the wrong one for any other worktree of the repo."""
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").is_file() and (checkout / "conf" / "config.yaml").is_file():
        return checkout / "conf"
    return Path(str(importlib.resources.files("jrft_cli.conf")))


def group_choices(group: str) -> list[str]:
    """The options of a config group (file names under conf/<group>/, without .yaml)."""
    d = config_dir() / group
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []
