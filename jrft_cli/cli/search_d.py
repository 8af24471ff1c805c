"""`jrft search-d --reference REF [options] [overrides...]`: the smallest d reaching a fraction of REF.

Every probe is `jrft train -m <overrides> d=<d> seed=<seeds>` in <dir>/d<d>/s<seed> (so
`hydra/launcher=slurm` among the overrides sends probes to SLURM). Relaunching the same command resumes:
finished probes are read back, interrupted ones resume from their checkpoints. Writes <dir>/search_d.json,
search_d.md (the probe table and the answer) and search_d.png (score vs d with the target line).
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from jrft_cli.cli import OneLineParser

HELP = "smallest d at which jr reaches a target fraction of a reference score (doubling, then bisection)"
# keys search-d sets on every probe itself
RESERVED = ("d", "seed", "hydra.sweep.dir", "hydra.sweep.subdir", "hydra.run.dir", "hydra.mode")


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="jrft search-d", description=HELP + ". Positional arguments are `jrft train` "
                      "overrides given to every probe, e.g. task=sst2 data.limit_train=2000 train.epochs=2.")
    p.add_argument("overrides", nargs="*", metavar="OVERRIDE", help="jrft train overrides (not d= or seed=)")
    p.add_argument("--reference", required=True, metavar="RUN_DIR|SCORE",
                   help="a finished run dir of the same task and model (e.g. full finetuning), or a score (0-1)")
    p.add_argument("--target", type=float, default=0.9, help="fraction of the reference to reach (default 0.9)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds; a probe passes on their mean (default 0)")
    p.add_argument("--d-start", type=int, default=16, help="first d probed (snapped up to the grid; default 16)")
    p.add_argument("--d-max", type=int, default=16384, help="largest d probed (default 16384)")
    p.add_argument("--steps-per-octave", type=int, default=2,
                   help="grid points per doubling of d: the answer's bracket is 2^(1/N) wide (default 2)")
    p.add_argument("--snapshot", default="best", choices=("best", "final"),
                   help="score of a run: best dev evaluation (default) or the final one")
    p.add_argument("--dir", type=Path, metavar="DIR",
                   help="the search dir (default outputs/search_d/<task>_<method>); relaunch with it to resume")
    return p


def _seeds(text: str) -> list[int]:
    from jrft_cli.core.errors import JrftError

    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise JrftError(f"--seeds={text!r} is not valid; give comma-separated integers, e.g. 0,1,2") from None
    if len(set(seeds)) != len(seeds):
        raise JrftError(f"--seeds={text!r} repeats a seed")
    return seeds


def check_overrides(overrides: list[str]) -> None:
    """Refuse what search-d sets itself (d, seed, the sweep dirs) and sweeps (a probe is one config per seed)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from jrft_cli.cli.train import check_group_choices
    from jrft_cli.core.errors import JrftError

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise JrftError(f"overrides {' '.join(overrides)!r} do not parse ({first})") from None
    for o in parsed:
        key = o.key_or_group
        if key in RESERVED:
            raise JrftError(f"override {o.input_line!r}: search-d sets {key} itself (use --seeds for seeds, --dir "
                            f"for where the probes go)")
        if o.is_sweep_override() and not key.startswith("hydra"):
            raise JrftError(f"override {o.input_line!r} is a sweep; a search has one configuration (run one search "
                            f"per value)")
    err = check_group_choices(overrides)
    if err:
        raise JrftError(err)


def compose_probe(overrides: list[str], d: int) -> dict:
    """The plain config of one probe, as `jrft train` would compose it (Hydra's own keys left out); a
    preset that sweeps (hydra.sweeper.params, e.g. experiment=small_glue) is refused."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from jrft_cli.cli.config import config_dir
    from jrft_cli.core.errors import JrftError

    plain = [o for o in overrides if not o.lstrip("+~").startswith("hydra")]
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3", job_name="train"):
            cfg = compose(config_name="config", overrides=plain + [f"d={d}"], return_hydra_config=True)
    except Exception as e:   # Hydra's errors span lines; one is enough
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise JrftError(f"overrides {' '.join(overrides)!r}: {first}") from None
    sweep = OmegaConf.to_container(cfg.hydra.sweeper, resolve=False).get("params")
    if sweep:
        raise JrftError(f"the overrides {' '.join(overrides)!r} select a sweep ({', '.join(sweep)}); a search "
                        f"probes one configuration: pick a preset without hydra.sweeper.params")
    del cfg.hydra
    return OmegaConf.to_container(cfg, resolve=True)


def main(argv: list[str]) -> int:
    from jrft_cli.core.errors import JrftError

    args = parser().parse_intermixed_args(argv)
    try:
        from jrft_cli.core.backbone import model_id
        from jrft_cli.core.options import option_names
        from jrft_cli.search.intrinsic import SearchSettings, SearchStopped, reference_score, run_search
        from jrft_cli.search.report import answer_line, write_report
        from jrft_cli.training.recipe import method_label, method_of, validate

        check_overrides(args.overrides)
        cfg = compose_probe(args.overrides, max(args.d_start, 1))
        validate(cfg)
        spec = method_of(cfg)
        if "d" not in option_names(spec.options):
            raise JrftError(f"method={spec.name!r} has no d to search; search-d searches the d of a method with one "
                            f"(e.g. method=jr or method=jr_warp)")
        task = cfg["task"]["name"]
        score, source = reference_score(args.reference, task, model_id(cfg["model"]["name"]), args.snapshot,
                                        cfg["task"]["main_metric"])
        settings = SearchSettings(overrides=list(args.overrides), task=task, method=spec.name,
                                  main_metric=cfg["task"]["main_metric"], seeds=_seeds(args.seeds),
                                  target=args.target, reference=score, reference_source=source,
                                  d_start=args.d_start, d_max=args.d_max, steps_per_octave=args.steps_per_octave,
                                  snapshot=args.snapshot)
        label = re.sub(r"\s*d=\d+", "", method_label(cfg)).strip()
        root = args.dir or Path("outputs/search_d") / re.sub(r"[^A-Za-z0-9.=-]+", "_", f"{task}_{label}")
        try:
            result = run_search(settings, root, log=lambda line: print(line, flush=True))
        except SearchStopped as e:
            write_report(e.result, root)
            print(f"jrft search-d: {e}", file=sys.stderr)
            return e.exit_code
    except JrftError as e:
        print(f"jrft search-d: error: {e}", file=sys.stderr)
        return 2
    table, plot = write_report(result, root)
    print(f"search-d: {answer_line(result)}")
    print(f"search-d: {len(result.launched)} probe(s) trained, {len(result.reused)} reused; wrote {table} and {plot}")
    return 0
