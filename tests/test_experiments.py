"""The experiment presets (conf/experiment/) and table rows (conf/row/): every job of every preset's grid and
every row composes, its method options parse through the registry and the training recipe validates it;
the sweeps expand to the paper's grids."""
from __future__ import annotations

from functools import lru_cache
from typing import Any

import pytest
import yaml
from omegaconf import OmegaConf, open_dict

from jrft_cli.cli.config import config_dir, group_choices
from jrft_cli.cli.hydra_callbacks import expand_sweep
from jrft_cli.core.registry import RECIPE_KEYS, method_spec
from jrft_cli.training.recipe import validate


def _compose(overrides: list[str], hydra: bool = False):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3", job_name="train"):
        return compose("config", overrides=overrides, return_hydra_config=hydra)


def _jobs(experiment: str, extra: list[str] = ()) -> list[dict[str, str]]:
    cfg = _compose([f"experiment={experiment}"], hydra=True)
    with open_dict(cfg):
        cfg.hydra.overrides.task = [f"experiment={experiment}", *extra]   # what hydra.main records
    return [dict(o.split("=", 1) for o in job) for job in expand_sweep(cfg)]


@lru_cache(maxsize=None)
def _row_file(row: str) -> tuple[str, int | None, tuple[tuple[str, Any], ...]]:
    """What conf/row/<row>.yaml declares: its method, its d (jr / jr_warp rows), its method.* values."""
    data = yaml.safe_load((config_dir() / "row" / f"{row}.yaml").read_text())
    method = next(d["override /method"] for d in data["defaults"] if isinstance(d, dict) and "override /method" in d)
    return method, data.get("d"), tuple((data.get("method") or {}).items())


def _check_job(overrides: list[str]) -> dict[str, Any]:
    """Compose `overrides` as `jrft train` does, parse the method options through the registry, run the
    recipe's validation, and check that the row / task / privacy overrides reached the config."""
    cfg = OmegaConf.to_container(_compose(overrides), resolve=True)
    spec = method_spec(cfg["method"]["name"])
    options = spec.parse_options(cfg["method"])
    assert isinstance(options, spec.options)
    assert spec.parse_options(spec.options_dict(options)) == options          # what a run records re-parses
    validate(cfg)
    job = dict(o.split("=", 1) for o in overrides)
    if "+row" in job:
        method, d, values = _row_file(job["+row"])
        assert cfg["method"]["name"] == method
        if d is not None:
            assert cfg["d"] == options.d == d
        for key, value in values:   # recipe keys (head, lr, ...) stay in the config; options are the method's
            assert (cfg["method"][key] if key in RECIPE_KEYS else getattr(options, key)) == value, key
    if "task" in job:
        assert cfg["task"]["name"] == job["task"]
    if "privacy" in job:
        assert bool(cfg["privacy"]["enabled"]) is (job["privacy"] == "dp")
    if "privacy.epsilon" in job:
        assert cfg["privacy"]["epsilon"] == float(job["privacy.epsilon"])
    return cfg


@pytest.mark.parametrize("privacy", ["none", "dp"])
@pytest.mark.parametrize("row", group_choices("row"))
def test_every_row_composes_parses_and_validates(row, privacy):
    cfg = _check_job([f"+row={row}", f"privacy={privacy}"])
    assert bool(cfg["privacy"]["enabled"]) is (privacy == "dp")


@pytest.mark.parametrize("experiment", group_choices("experiment"))
def test_every_job_of_every_preset_composes_parses_and_validates(experiment):
    """The preset's whole grid (hydra.sweeper.params) as Hydra's sweeper expands it: every row x task (x
    epsilon, x privacy) combination; a seed only feeds `seed` and the projection seed, so each combination
    is checked at its first seed."""
    combos: dict[tuple, list[str]] = {}
    for job in _jobs(experiment):
        combos.setdefault(tuple(sorted((k, v) for k, v in job.items() if k != "seed")),
                          [f"{k}={v}" for k, v in job.items()])
    for overrides in combos.values():
        cfg = _check_job(overrides)
        assert cfg["logger"].get("group") in (None, experiment)
    params = _compose([f"experiment={experiment}"], hydra=True).hydra.sweeper.get("params") or {}
    grid = {k: str(v).split(",") for k, v in params.items() if k != "seed"}
    expected = 1
    for values in grid.values():
        expected *= len(values)
    assert len(combos) == expected, (experiment, grid)


# the head and trainable set the paper's code uses for each row (docs/paper_fidelity.md)
PAPER_ROWS = {"lora_r1": ("first", {"alpha": 8}), "adapters": ("first", {"reduction_factor": 768}),
              "bitfit": ("cls", {"head_weights": "output"}), "linear": ("mask", {}), "jr_d1024": ("mask", {}),
              "jr_warp_d1024": ("mask", {}), "warp_k20": ("mask", {"k": 20})}


@pytest.mark.parametrize("row", sorted(PAPER_ROWS))
def test_rows_use_the_papers_head_and_trainable_set(row):
    head, options = PAPER_ROWS[row]
    cfg = _compose([f"+row={row}"])
    assert cfg.method.head == head
    assert {k: cfg.method[k] for k in options} == options


def test_small_glue_is_minilm_on_the_local_glue_tasks_and_every_method():
    cfg = _compose(["experiment=small_glue", "+row=jr_d1024", "task=rte"])
    assert cfg.model.key == "minilm" and cfg.hardware.device == "cpu"
    assert cfg.data.limit_train is None                      # RTE (like CoLA, MRPC, STS-B) in full
    assert _compose(["experiment=small_glue", "task=sst2"]).data.limit_train == 8000   # SST-2: a fixed subset
    jobs = _jobs("small_glue")
    assert len(jobs) == 9 * 5
    assert {j["task"] for j in jobs} == {"sst2", "cola", "mrpc", "stsb", "rte"}
    assert {j["+row"] for j in jobs} == {"full", "bitfit", "lora_r1", "adapters", "warp_k20", "linear", "jr_d64",
                                         "jr_d1024", "jr_warp_d1024"}
    second = _jobs("small_glue", ["+row=jr_d64,jr_d1024,jr_warp_d1024", "seed=1"])   # the jr rows' second seed
    assert len(second) == 3 * 5 and {j["seed"] for j in second} == {"1"}


def test_small_glue_3ep_is_small_glue_with_a_converging_budget():
    cfg = _compose(["experiment=small_glue_3ep", "+row=full_lr1e-4", "task=cola"])
    assert cfg.model.key == "minilm" and cfg.train.epochs == 3 and cfg.train.group_by_length
    assert cfg.method.name == "full" and cfg.method.lr == 1e-4 and cfg.hardware.precision == "auto"
    jobs = _jobs("small_glue_3ep")
    assert len(jobs) == 9 * 5
    assert {j["+row"] for j in _jobs("small_glue")} - {"full"} | {"full_lr1e-4"} == {j["+row"] for j in jobs}


def test_intrinsic_dimension_is_one_minilm_configuration_of_2000_rows():
    cfg = _compose(["experiment=intrinsic_dimension", "task=stsb", "method.projection=structured", "d=64"], hydra=True)
    assert cfg.model.key == "minilm" and cfg.hardware.device == "cpu" and cfg.hardware.num_threads == 1
    assert cfg.data.limit_train == 2000 and cfg.train.epochs == 2 and cfg.method.d == 64
    assert not cfg.hydra.sweeper.get("params")           # no sweep: search-d probes it at each d


def test_small_glue_dp_is_the_private_slice_jr_and_lora_at_epsilon_8():
    cfg = _compose(["experiment=small_glue_dp", "+row=jr_d1024", "task=sst2"])
    assert cfg.privacy.enabled and cfg.privacy.epsilon == 8 and cfg.model.key == "minilm"
    assert cfg.data.limit_train == 8000 and cfg.privacy.batch_size == 256
    assert _compose(["experiment=small_glue_dp", "task=mrpc"]).data.limit_train is None
    jobs = _jobs("small_glue_dp")
    assert {(j["+row"], j["task"]) for j in jobs} == {(r, t) for r in ("jr_d1024", "lora_r1") for t in ("sst2", "mrpc")}


def test_small_glue_3ep_dp_is_the_private_slice_for_3_epochs_at_epsilon_3_and_8():
    cfg = _compose(["experiment=small_glue_3ep_dp", "+row=jr_d1024", "task=stsb"])
    assert cfg.privacy.enabled and cfg.train.epochs == 3 and cfg.privacy.epochs == 3
    assert cfg.privacy.batch_size == 256 and cfg.privacy.max_grad_norm == 5 and cfg.hardware.precision == "auto"
    assert cfg.data.limit_train is None and not cfg.train.group_by_length   # DP keeps Poisson batches
    assert _compose(["experiment=small_glue_3ep_dp", "task=sst2"]).data.limit_train == 8000
    jobs = _jobs("small_glue_3ep_dp")
    assert {(j["+row"], j["task"], float(j["privacy.epsilon"])) for j in jobs} == \
        {(r, t, e) for r in ("jr_d1024", "lora_r1") for t in ("sst2", "stsb") for e in (3.0, 8.0)}
    assert len(jobs) == 8


@pytest.mark.parametrize("size, n_rows", [("base", 9), ("large", 10)])
def test_paper_glue_grids(size, n_rows):
    cfg = _compose([f"experiment=paper_glue_roberta_{size}", "+row=jr_d1024", "task=sst2"])
    assert cfg.model.name == f"FacebookAI/roberta-{size}"
    jobs = _jobs(f"paper_glue_roberta_{size}")
    assert len(jobs) == n_rows * 8 * 3
    assert {"full", "bitfit", "lora_r1", "adapters", "linear", "jr_d1024", "jr_d4096", "jr_warp_d1024"} <= \
        {j["+row"] for j in jobs}


def test_paper_dp_grid_and_profiling_compose():
    cfg = _compose(["experiment=paper_dp", "+row=jr_d4096", "task=sst2", "privacy.epsilon=3"])
    assert cfg.privacy.enabled and cfg.privacy.epsilon == 3 and cfg.model.key == "roberta-large"
    jobs = _jobs("paper_dp")
    assert {j["task"] for j in jobs} == {"sst2", "qnli", "qqp", "mnli"}
    assert {j["privacy.epsilon"] for j in jobs} == {"3", "8"}
    profiling = _jobs("paper_profiling")
    assert {j["privacy"] for j in profiling} == {"none", "dp"}
    assert {"adapters", "warp_k20", "lora_r1", "bitfit", "full", "jr_d1024"} <= {j["+row"] for j in profiling}
