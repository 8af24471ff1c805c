"""`jrft train [overrides...]`: one run, or a sweep with -m, composed by Hydra from conf/."""
from __future__ import annotations

import os
import re
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


def hydra_error_line(err: BaseException) -> str:
    """Hydra's / OmegaConf's multi-line composition error (and its cause) as one line."""
    parts: list[str] = []
    for ex in (err, err.__cause__):
        if ex is None:
            continue
        for line in str(ex).splitlines():
            line = line.strip().rstrip(".")
            # OmegaConf's detail lines (full_key: ..., object_type=...) and Hydra's doc links add nothing
            if not line or re.match(r"^(full_key|object_type|reference_type|value_type|key)\s*[:=]", line) \
                    or line.startswith("See https://hydra.cc"):
                continue
            if line not in parts:
                parts.append(line)
    line = "; ".join(parts) or type(err).__name__
    missing = re.match(r"Could not override '([^']+)'", line)
    if missing and "not in struct" in line:
        key = missing.group(1)
        hint = " (privacy.* settings other than enabled need privacy=dp)" if key.startswith("privacy.") else ""
        return (f"{key} is not a setting of this config{hint}; `jrft train --help` lists the groups and "
                f"settings (+{key}=... would add a new key)")
    override = getattr(err, "override", None)
    if override is not None and str(override) not in line:
        line = f"override {str(override)!r}: {line}"
    return line


def preflight(argv: list[str]) -> str | None:
    """Compose a single run's config as Hydra will and check every value (training.settings via the
    recipe's `validate`), before Hydra makes the run dir. One line of error, or None. Sweeps (-m, or a
    preset with hydra.mode=MULTIRUN) are checked job by job when they run; Hydra's informational
    flags (--help, --cfg, ...) are left to Hydra."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.utils import get_args_parser
    from hydra.errors import HydraException
    from omegaconf import OmegaConf, open_dict
    from omegaconf.errors import OmegaConfBaseException

    from jrft_cli.cli.config import config_dir
    from jrft_cli.core.errors import JrftError
    from jrft_cli.training.recipe import validate

    try:
        args = get_args_parser().parse_args(argv)
    except SystemExit:
        return None   # Hydra reports its own usage errors
    informational = (args.help, args.hydra_help, args.cfg, args.info, args.shell_completion, args.run,
                     args.experimental_rerun, args.package, args.resolve)
    if args.multirun or any(informational) or args.config_path or args.config_name or args.config_dir:
        return None
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3", job_name="train"):
            cfg = compose(config_name="config", overrides=list(args.overrides), return_hydra_config=True)
        if str(cfg.hydra.mode) == "RunMode.MULTIRUN":
            return None
        with open_dict(cfg):
            del cfg["hydra"]
        validate(OmegaConf.to_container(cfg, resolve=True))
    except JrftError as e:
        return str(e)
    except (HydraException, OmegaConfBaseException) as e:
        return hydra_error_line(e)
    return None


def write_hydra_record(run_dir: Path, cfg) -> None:
    """`<run dir>/.hydra/{config,hydra,overrides}.yaml`, as Hydra writes them, but only once the recipe
    has accepted the run dir (hydra.output_subdir is null in conf/config.yaml): a relaunch that is
    refused (another config, another writer) leaves the run's record as it was."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    hc = HydraConfig.instance().cfg
    out = Path(run_dir) / HYDRA_RECORD
    out.mkdir(parents=True, exist_ok=True)
    for name, node in (("config.yaml", cfg), ("hydra.yaml", hc), ("overrides.yaml", hc.hydra.overrides.task)):
        OmegaConf.save(node, out / name)


HYDRA_RECORD = ".hydra"


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
        train.run(plain, run_dir, on_start=lambda: write_hydra_record(run_dir, cfg))
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
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from jrft_cli.cli.config import config_dir
    from jrft_cli.core.errors import JrftError

    err = check_group_choices(argv) or preflight(argv)
    if err:
        print(f"jrft: error: {err}", file=sys.stderr)
        return 2
    entry = hydra.main(config_path=str(config_dir()), config_name="config", version_base="1.3")(_task)
    sys.argv = ["jrft train", *argv]
    # Hydra prints its composition errors over several lines (or a traceback) and exits 1; with
    # HYDRA_FULL_ERROR they reach us instead, to be reported on one line. Scoped to this call.
    previous = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        entry()
    except (HydraException, OmegaConfBaseException) as e:
        print(f"jrft: error: {hydra_error_line(e)}", file=sys.stderr)
        return 2
    except JrftError:
        return 2   # a sweep job's error: the job printed it, the sweep summary records it
    finally:
        if previous is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = previous
    return 0
