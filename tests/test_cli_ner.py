"""Token tasks end to end on small hand-made CoNLL files: `jrft train task=conll2003` for every method (and
under DP), `jrft export` (plain token-classification checkpoint or remote code), `jrft eval`, `jrft predict`
(one tag per word), and the NER column of `jrft table`."""
from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from rich.console import Console

from jrft_cli.__main__ import main
from jrft_cli.cli.config import compose
from jrft_cli.core.registry import method_names
from jrft_cli.training import recipe

from conftest import REPO, subprocess_env
from ner_helpers import SENTENCES, conll_dir

torch.set_num_threads(1)
H, TAGS = 384, 9
HEAD = H * TAGS + TAGS                     # one linear layer on every token: 3,465
TINY = ["logger=none", "hardware=cpu", "hardware.num_threads=1", "train.max_steps=2", "train.batch_size=8",
        "data.max_length=32", "task=conll2003"]
# trainable parameters of each method on MiniLM with the per-token head (see tests/test_methods.py for the parts)
TRAINABLE = {"bitfit": 25_728 + HEAD, "lora": 9_216 + HEAD, "adapters": 13_836 + HEAD, "linear": HEAD,
             "jr": 1024 + HEAD, "jr_warp": 1024 + HEAD, "warp": 20 * H + HEAD}


def cfg_for(data_dir: Path, *overrides: str) -> dict:
    return OmegaConf.to_container(compose([*TINY, f"data.dir={data_dir}", *overrides]), resolve=True)


def quiet() -> Console:
    return Console(file=io.StringIO(), width=120)


@pytest.fixture(scope="module")
def ner_dir(tmp_path_factory) -> Path:
    return conll_dir(tmp_path_factory.mktemp("ner"))


def test_jrft_train_conll2003_through_the_cli(ner_dir, tmp_path):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "jrft_cli", "train", *TINY, "method=jr", f"data.dir={ner_dir}", f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed" and results["task"] == "conll2003" and results["main_metric"] == "f1"
    assert set(results["dev"]) == {"f1", "precision", "recall", "accuracy"}
    assert results["trainable_params"] == TRAINABLE["jr"]
    info = json.loads((run_dir / "adapter_config.json").read_text())
    assert info["head"] == "tokens" and info["mask_format"] is False and info["num_labels"] == TAGS


@pytest.mark.parametrize("method", method_names())
def test_every_method_trains_on_a_token_task(method, ner_dir, tmp_path):
    results = recipe.run(cfg_for(ner_dir, f"method={method}"), tmp_path / "run", console=quiet())
    assert results["status"] == "completed" and results["main_metric"] == "f1"
    assert 0.0 <= results["dev"]["f1"] <= 1.0 and "accuracy" in results["dev"]
    if method in TRAINABLE:
        assert results["trainable_params"] == TRAINABLE[method], method
    info = json.loads((tmp_path / "run" / "adapter_config.json").read_text())
    assert info["head"] == "tokens"          # every method's head becomes the per-token head


@pytest.mark.parametrize("method", ["jr", "warp", "lora", "adapters"])
def test_private_training_on_a_token_task(method, ner_dir, tmp_path):
    """DP-SGD with per-sentence losses: the fast path (jr, warp) and opacus (lora, adapters)."""
    cfg = cfg_for(ner_dir, f"method={method}", "privacy=dp", "privacy.batch_size=8", "privacy.micro_batch_size=4",
                  "privacy.epsilon=8", "train.epochs=1", "train.max_steps=0")
    results = recipe.run(cfg, tmp_path / "run", console=quiet())
    assert results["status"] == "completed" and "f1" in results["dev"]
    assert 0 < results["privacy"]["epsilon"] <= 8.0001
    assert results["privacy"]["grad_sampler"] == ("fast" if method in ("jr", "warp") else "opacus-hooks")


@pytest.fixture(scope="module")
def trained(ner_dir, tmp_path_factory) -> dict[str, Path]:
    """jr (exports as a plain token-classification checkpoint) and jr_warp / adapters (remote code)."""
    root = tmp_path_factory.mktemp("ner_runs")
    out = {}
    for method in ("jr", "jr_warp", "adapters"):
        run = root / method
        recipe.run(cfg_for(ner_dir, f"method={method}", "train.max_steps=6", "train.lr=3e-2"), run, console=quiet())
        assert main(["export", str(run), "--out", str(root / f"{method}-export")]) == 0
        out[method] = run
    return out


def test_exports_load_without_jrft_and_match_the_run(trained, tmp_path):
    from jrft_cli.core.artifact import load_artifact

    words = [w for w, _ in SENTENCES[0]]
    jobs = [{"dir": str(run.parent / f"{m}-export"), "trust": m != "jr", "words": words} for m, run in trained.items()]
    script = ISOLATED_TOKENS
    site = __import__("sysconfig").get_paths()["purelib"]
    env = {k: v for k, v in subprocess_env().items() if k != "PYTHONPATH"}
    env["HF_MODULES_CACHE"] = str(tmp_path / "hf_modules")
    proc = subprocess.run([sys.executable, "-S", "-c", f"SITE = {site!r}\n" + script, json.dumps(jobs)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["jrft_importable"] is False
    for (method, run), got in zip(trained.items(), result["results"]):
        assert got["class"] == ("BertForTokenClassification" if method == "jr" else "JrftClassifier"), method
        model = load_artifact(run).model
        with torch.no_grad():
            want = model(**{k: torch.tensor(v) for k, v in got["batch"].items()})
        assert want.shape == (1, len(got["batch"]["input_ids"][0]), TAGS)
        assert (torch.tensor(got["logits"]) - want).abs().max().item() < 1e-4, method


ISOLATED_TOKENS = r"""
import json, sys
sys.path.append(SITE)
try:
    import jrft_cli
    jrft_importable = True
except ImportError:
    jrft_importable = False
import torch
from transformers import AutoModelForTokenClassification, AutoTokenizer
from transformers.utils import logging
logging.set_verbosity_error(); logging.disable_progress_bar()
torch.set_num_threads(1)
out = {"jrft_importable": jrft_importable, "results": []}
for job in json.loads(sys.argv[1]):
    model = AutoModelForTokenClassification.from_pretrained(job["dir"], trust_remote_code=job["trust"]).eval()
    tok = AutoTokenizer.from_pretrained(job["dir"])
    batch = tok([job["words"]], is_split_into_words=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    out["results"].append({"class": type(model).__name__, "logits": logits.tolist(),
                           "batch": {k: v.tolist() for k, v in batch.items()}})
print(json.dumps(out))
"""


def test_eval_and_predict_on_run_and_export(trained, ner_dir, tmp_path, capsys, monkeypatch):
    run = trained["jr"]
    export = run.parent / "jr-export"
    note = json.loads((export / "jrft_export.json").read_text())
    assert note["task_kind"] == "tokens" and note["auto_class"] == "AutoModelForTokenClassification"
    assert main(["eval", str(run), f"out={tmp_path / 'a.json'}"]) == 0             # the run's own data.dir
    assert main(["eval", str(export), f"data.dir={ner_dir}", f"out={tmp_path / 'b.json'}"]) == 0
    assert main(["eval", str(run), "split=test", f"out={tmp_path / 't.json'}"]) == 0
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "b.json"))
    assert a["examples"] == b["examples"] == 4 and set(a["metrics"]) == {"f1", "precision", "recall", "accuracy"}
    assert a["metrics"] == pytest.approx(b["metrics"], abs=1e-9)
    assert json.loads((tmp_path / "t.json").read_text())["split"] == "test"
    capsys.readouterr()

    lines = ["John Smith visited Paris on Monday", "", "Reuters   reported that Mary left London"]
    outputs = []
    for target in (run, export):
        monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(lines) + "\n"))
        assert main(["predict", str(target)]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1]
    sentences = [s.split("\n") for s in outputs[0].strip("\n").split("\n\n")]
    assert [[row.split("\t")[0] for row in s] for s in sentences] == [lines[0].split(), lines[2].split()]
    tags = {row.split("\t")[1] for s in sentences for row in s}
    assert tags <= {"O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"}


def test_table_renders_the_ner_column(tmp_path):
    from jrft_cli.reporting.table import build_tables, collect, render

    for seed, (dev, test) in enumerate([(0.9, 0.85), (0.8, 0.75)]):
        run = {"status": "completed", "task": "conll2003", "model": "bert-base-cased", "method": "jr",
               "method_label": "jr d=1024", "seed": seed, "trainable_params": 1024 + 768 * 9 + 9, "main_metric": "f1",
               "dev": {"f1": dev, "test_f1": test}, "best_dev": {"f1": dev, "test_f1": test, "step": 3}}
        (tmp_path / f"s{seed}").mkdir()
        (tmp_path / f"s{seed}" / "results.json").write_text(json.dumps(run))
    runs, _ = collect([tmp_path])
    md = render(build_tables(runs), "md")
    assert "| Method | CoNLL-2003 (F1) | Avg |" in md and "85.0 ± 7.1 (n=2)" in md
    assert "CoNLL-2003 (test F1)" in render(build_tables(runs, metric_name="test_f1"), "md")
