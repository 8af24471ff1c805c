"""Shared by test_artifact / test_export / test_cli_eval_predict: run dirs built from real models,
a tiny RoBERTa built offline, and loading exports in a Python where jrft is not importable."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import torch

GLUE = Path(os.environ.get("JRFT_GLUE_DIR", "/work/shared/glue"))
PAIR_TEXTS = [("The cat sat on the mat.", "A cat is sitting."), ("It rained all day long in the city.", "Sunny.")]


def compose_cfg(overrides: list[str]) -> dict[str, Any]:
    from omegaconf import OmegaConf

    from jrft_cli.cli.config import compose

    cfg = OmegaConf.to_container(compose(["task=rte", "logger=none", "hardware=cpu"] + overrides), resolve=True)
    cfg["data"]["dir"] = str(GLUE)
    return cfg


def make_run_dir(run_dir: Path, overrides: list[str], perturb: bool = True, seed: int = 0) -> Path:
    """Build the model `jrft train` would build (no training) and save its artifact.

    With `perturb`, the trained parameters move away from their init so an export that ignored them
    would fail: jr's z is scaled to unit entries (shifts of size ~1), LoRA's B (zero at init) and
    BitFit's biases get noise."""
    from transformers import AutoTokenizer

    from jrft_cli.core.artifact import save_artifact
    from jrft_cli.core.backbone import resolve_model_name
    from jrft_cli.training.recipe import artifact_info, build_model

    cfg = compose_cfg(overrides)
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


ISOLATED_SCRIPT = r"""
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
    script = f"SITE = {site!r}\n" + ISOLATED_SCRIPT
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env["HF_MODULES_CACHE"] = str(cwd / "hf_modules")
    proc = subprocess.run([sys.executable, "-S", "-c", script, json.dumps(jobs)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
