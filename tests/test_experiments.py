"""The experiment presets (conf/experiment/) and table rows (conf/row/): they compose, and their sweeps
expand to the paper's grids."""
from __future__ import annotations

import pytest
from omegaconf import open_dict

from jrft_cli.cli.config import config_dir, group_choices
from jrft_cli.cli.hydra_callbacks import expand_sweep


def _compose(overrides: list[str], hydra: bool = False):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3", job_name="train"):
        return compose("config", overrides=overrides, return_hydra_config=hydra)


def _jobs(experiment: str, extra: list[str] = ()) -> list[dict[str, str]]:
    cfg = _compose([f"experiment={experiment}"], hydra=True)
    with open_dict(cfg):
        cfg.hydra.overrides.task = [f"experiment={experiment}", *extra]   # what hydra.main records
    return [dict(o.split("=", 1) for o in job) for job in expand_sweep(cfg)]


@pytest.mark.parametrize("row, method, d", [("jr_d64", "jr", 64), ("jr_d4096", "jr", 4096),
                                            ("jr_warp_d1024", "jr_warp", 1024), ("lora_r1", "lora", None),
                                            ("full", "full", None), ("linear", "linear", None)])
def test_rows_choose_the_method_and_its_width(row, method, d):
    cfg = _compose([f"+row={row}"])
    assert cfg.method.name == method
    if d is not None:
        assert cfg.method.d == d
    if row == "lora_r1":
        assert cfg.method.r == 1


def test_small_glue_is_minilm_on_the_local_glue_tasks_and_every_method():
    cfg = _compose(["experiment=small_glue", "+row=jr_d1024", "task=rte"])
    assert cfg.model.key == "minilm" and cfg.hardware.device == "cpu"
    assert cfg.data.limit_train is None                      # RTE (like CoLA, MRPC, STS-B) in full
    assert _compose(["experiment=small_glue", "task=sst2"]).data.limit_train == 8000   # SST-2: a fixed subset
    jobs = _jobs("small_glue")
    assert len(jobs) == 7 * 5
    assert {j["task"] for j in jobs} == {"sst2", "cola", "mrpc", "stsb", "rte"}
    assert {j["+row"] for j in jobs} == {"full", "bitfit", "lora_r1", "linear", "jr_d64", "jr_d1024", "jr_warp_d1024"}
    second = _jobs("small_glue", ["+row=jr_d64,jr_d1024,jr_warp_d1024", "seed=1"])   # the jr rows' second seed
    assert len(second) == 3 * 5 and {j["seed"] for j in second} == {"1"}


def test_intrinsic_dimension_is_one_minilm_configuration_of_2000_rows():
    cfg = _compose(["experiment=intrinsic_dimension", "task=stsb", "method.projection=structured", "d=64"], hydra=True)
    assert cfg.model.key == "minilm" and cfg.hardware.device == "cpu" and cfg.hardware.num_threads == 1
    assert cfg.data.limit_train == 2000 and cfg.train.epochs == 2 and cfg.method.d == 64
    assert not cfg.hydra.sweeper.get("params")           # no sweep: search-d probes it at each d


@pytest.mark.skipif("dp" not in group_choices("privacy"), reason="the privacy config group (privacy=dp) is not in this build")
def test_small_glue_dp_is_the_private_slice_jr_and_lora_at_epsilon_8():
    cfg = _compose(["experiment=small_glue_dp", "+row=jr_d1024", "task=sst2"])
    assert cfg.privacy.enabled and cfg.privacy.epsilon == 8 and cfg.model.key == "minilm"
    assert cfg.data.limit_train == 8000 and cfg.privacy.batch_size == 256
    assert _compose(["experiment=small_glue_dp", "task=mrpc"]).data.limit_train is None
    jobs = _jobs("small_glue_dp")
    assert {(j["+row"], j["task"]) for j in jobs} == {(r, t) for r in ("jr_d1024", "lora_r1") for t in ("sst2", "mrpc")}


@pytest.mark.parametrize("size, n_rows", [("base", 8), ("large", 9)])
def test_paper_glue_grids(size, n_rows):
    cfg = _compose([f"experiment=paper_glue_roberta_{size}", "+row=jr_d1024", "task=sst2"])
    assert cfg.model.name == f"FacebookAI/roberta-{size}"
    jobs = _jobs(f"paper_glue_roberta_{size}")
    assert len(jobs) == n_rows * 8 * 3
    assert {"full", "bitfit", "lora_r1", "linear", "jr_d1024", "jr_d4096", "jr_warp_d1024"} <= {j["+row"] for j in jobs}


@pytest.mark.skipif("dp" not in group_choices("privacy"), reason="the privacy config group (privacy=dp) is not in this build")
def test_paper_dp_grid_and_profiling_compose():
    cfg = _compose(["experiment=paper_dp", "+row=jr_d4096", "task=sst2", "privacy.epsilon=3"])
    assert cfg.privacy.enabled and cfg.privacy.epsilon == 3 and cfg.model.key == "roberta-large"
    jobs = _jobs("paper_dp")
    assert {j["task"] for j in jobs} == {"sst2", "qnli", "qqp", "mnli"}
    assert {j["privacy.epsilon"] for j in jobs} == {"3", "8"}
    assert {j["privacy"] for j in _jobs("paper_profiling")} == {"none", "dp"}
