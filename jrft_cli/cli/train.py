"""`jrft train [overrides...]`: one run, or a sweep with -m, composed by Hydra from conf/."""
from __future__ import annotations

import sys
from pathlib import Path

HELP = "train one configuration (Hydra overrides, e.g. task=rte method=lora seed=1; -m for sweeps)"


def check_group_choices(argv: list[str]) -> str | None:
    """A one-line error for an override choosing a config-group option that does not exist
    (Hydra's own message spans many lines), else None."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from jrft_cli.cli.config import GROUPS, group_choices

    candidates = [a for a in argv if "=" in a and not a.startswith("-")]
    try:
        overrides = OverridesParser.create().parse_overrides(candidates)
    except Exception:
        return None  # let Hydra report its own syntax errors
    for o in overrides:
        group = o.key_or_group.split("@")[0]
        if group not in GROUPS or o.package is not None and group == "hydra" or o.is_delete():
            continue
        values = list(o.sweep_iterator()) if o.is_sweep_override() else [o.value()]
        choices = group_choices(group)
        for v in values:
            if isinstance(v, str) and v not in choices:
                return f"{group}={v!r} is not a valid choice; choose one of: {', '.join(choices)}"
    return None


def _task(cfg) -> None:
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from jrft_cli.training import recipe as train
    from jrft_cli.training.checkpoint import INTERRUPTED_EXIT_CODE, TrainingInterrupted
    from jrft_cli.core.errors import JrftError

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    plain = OmegaConf.to_container(cfg, resolve=True)
    try:
        train.run(plain, run_dir)
    except JrftError as e:
        print(f"jrft: error: {e}", file=sys.stderr)
        if str(hc.mode) == "RunMode.RUN":
            raise SystemExit(2)
        raise  # in a sweep Hydra records the failed job
    except TrainingInterrupted as e:
        print(f"jrft: {e}; it resumes when relaunched (or requeued) in the same run dir {run_dir}",
              file=sys.stderr, flush=True)
        e.hand_on()   # under submitit: requeue the job (it resumes from the checkpoint) and exit
        raise SystemExit(INTERRUPTED_EXIT_CODE)


def main(argv: list[str]) -> int:
    import hydra

    from jrft_cli.cli.config import config_dir

    err = check_group_choices(argv)
    if err:
        print(f"jrft: error: {err}", file=sys.stderr)
        return 2
    entry = hydra.main(config_path=str(config_dir()), config_name="config", version_base="1.3")(_task)
    sys.argv = ["jrft train", *argv]
    entry()
    return 0
