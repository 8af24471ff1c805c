"""Config composition (Hydra compose API, nothing loaded): every group combination, typed overrides,
and `jrft train --help`."""
from __future__ import annotations

import itertools

import pytest
import yaml
from omegaconf import OmegaConf

from jrft_cli.cli.config import GROUPS, compose, config_dir, group_choices
from jrft_cli.core.registry import method_names
from jrft_cli.training.recipe import validate

from conftest import REPO, run_jrft

COMBINED_GROUPS = ("model", "task", "method", "hardware")


def test_group_choices_match_the_files():
    assert group_choices("method") == sorted(method_names())
    assert group_choices("task") == ["cola", "conll2003", "custom", "mnli", "mrpc", "qnli", "qqp", "rte", "sst2", "stsb",
                                     "wnli"]
    assert group_choices("hardware") == ["auto", "cpu", "gpu"]
    assert group_choices("logger") == ["none", "wandb"]
    assert "minilm" in group_choices("model")
    assert group_choices("no-such-group") == []
    assert (config_dir() / "config.yaml").is_file()


@pytest.mark.parametrize("model", group_choices("model"))
def test_every_combination_composes_and_validates(model):
    """Every model x task x method combination composes, resolves fully and passes train.validate.

    Hardware is a leaf group (nothing interpolates into or out of it), so instead of tripling the 270
    compositions (the full 810 took 45-90 s on this shared CPU) each combination takes one hardware
    option, rotated so that every hardware option meets every model, task and method."""
    models, tasks, methods, hardwares = (group_choices(g) for g in COMBINED_GROUPS)
    seen_pairs = set()
    for (t, task), (j, method) in itertools.product(enumerate(tasks), enumerate(methods)):
        hardware = hardwares[(models.index(model) + t + j) % len(hardwares)]
        seen_pairs |= {("task", task, hardware), ("method", method, hardware)}
        cfg = compose([f"model={model}", f"task={task}", f"method={method}", f"hardware={hardware}"])
        plain = OmegaConf.to_container(cfg, resolve=True)
        assert plain["model"]["key"] == model
        assert plain["task"]["name"] == task
        assert plain["method"]["name"] == method
        assert plain["hardware"]["device"] == {"auto": "auto", "cpu": "cpu", "gpu": "cuda"}[hardware]
        if task != "custom":   # a custom task's metrics follow from its data (tasks.files.resolve)
            assert plain["task"]["main_metric"] in plain["task"]["metrics"]
        assert plain["method"]["lr"] > 0
        validate(plain)
    assert len(seen_pairs) == (len(tasks) + len(methods)) * len(hardwares)


def test_d_as_typed_reaches_the_method():
    for method in ("jr", "jr_warp"):
        cfg = compose([f"method={method}", "d=4096"])
        assert cfg.method.d == 4096 and type(cfg.method.d) is int
    assert compose([]).method.d == compose([]).d == 1024
    # the projection seed follows the run seed unless set
    assert compose(["seed=7"]).method.projection_seed == 7


def test_defaults_are_the_papers_choices():
    cfg = compose([])
    assert (cfg.task.name, cfg.method.name, cfg.model.key) == ("sst2", "jr", "minilm")
    assert (cfg.method.position, cfg.method.head, cfg.method.dropout) == ("output", "mask", 0.0)
    lora = compose(["method=lora"]).method
    assert (lora.r, lora.alpha, lora.target_modules, lora.head) == (1, 8, None, "first")   # None: the family's attention projections
    bitfit = compose(["method=bitfit"]).method
    assert (bitfit.head, bitfit.head_weights) == ("cls", "output")
    adapters = compose(["method=adapters"]).method
    assert (adapters.reduction_factor, adapters.head) == (768, "first")


def test_experiment_quickstart_composes():
    preset = yaml.safe_load((config_dir() / "experiment" / "quickstart.yaml").read_text())
    cfg = compose(["experiment=quickstart"])     # as the README writes it
    assert (cfg.method.name, cfg.task.name, cfg.d) == ("jr", "sst2", 1024)
    assert cfg.train.epochs == preset["train"]["epochs"]
    assert cfg.data.limit_train == preset["data"]["limit_train"] == 8000     # the preset wins over config.yaml
    assert cfg.train.lr == 3e-3 != cfg.method.lr             # the 3-epoch reference lr (docs/method.md), not jr's default
    assert compose(["experiment=quickstart", "d=64"]).method.d == 64         # and the command line over both


def test_config_dir_is_this_checkouts():
    """A worktree composes its own conf/, not the one its editable install points at."""
    assert config_dir() == REPO / "conf"


def test_train_help_lists_groups_and_choices():
    out = run_jrft("train", "--help", timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Example: jrft train task=sst2 method=jr d=4096" in out.stdout
    for group in COMBINED_GROUPS + ("logger",):
        assert f"{group}: {', '.join(group_choices(group))}" in out.stdout
    assert set(GROUPS) >= set(COMBINED_GROUPS)
