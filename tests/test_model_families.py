"""Every method on every supported family, on tiny random models saved with save_pretrained (no weights
can be downloaded here; tests/tiny_models.py): each trains two steps, saves its artifact, reloads with
identical logits, exports, and the export loads in a Python where jrft is not importable (plain
transformers) with the same logits. Per family, private training's per-example clipping (jr's fast
path, opacus for the rest) equals clipping each example's own gradient. Decoders: JR-WARP keeps the
real tokens' position ids, the last-token head reads the last non-pad token whatever the padding."""
from __future__ import annotations

import json
import traceback
from pathlib import Path

import pytest
import torch

from conftest import PAIR_TEXTS, load_isolated, plain
from tiny_models import DECODERS, FAMILIES, tiny_model
from jrft_cli.core.artifact import load_artifact, save_artifact
from jrft_cli.core.backbone import load_tokenizer
from jrft_cli.core.errors import JrftError
from jrft_cli.core.families import family_of
from jrft_cli.serving.export import export_run
from jrft_cli.tasks.evaluation import loss_fn
from jrft_cli.training.recipe import artifact_info, build_model

torch.set_num_threads(1)

TRAIN_TEXTS = PAIR_TEXTS + [("a fine, moving film", "an honest story"), ("nothing works", "a dull mess")]
LABELS = torch.tensor([0, 1, 1, 0])
# case -> overrides (every method with its configured head; jr with the family's CLS head as well)
CASES = {
    "jr": ["method=jr", "d=16"],
    "jr-cls": ["method=jr", "d=16", "method.head=cls"],
    "jr_warp": ["method=jr_warp", "d=16"],
    "lora": ["method=lora"],
    "bitfit": ["method=bitfit"],
    "full": ["method=full"],
    "linear": ["method=linear"],
    # the other shift positions, on families whose bias there differs (present / config option / remote code)
    "jr-intermediate-cls": ["method=jr", "d=16", "method.head=cls", "method.position=intermediate"],
    "jr-attention-cls": ["method=jr", "d=16", "method.head=cls", "method.position=attention"],
}
POSITION_CASES = ("jr-intermediate-cls", "jr-attention-cls")
POSITION_FAMILIES = ("gpt2", "llama", "mistral", "phi3", "modernbert")
NO_BIASES = {"llama", "mistral", "gemma", "phi3", "modernbert"}   # BitFit is refused on these
# Families whose shift position has no bias and no config option that adds one: jr exports with remote code
REMOTE_BIASES = {"mistral", "qwen2", "gemma", "phi3"}


def expect_remote(family: str, case: str) -> bool:
    """Remote code for our own heads (LoRA's first-token head too) and the prompt; CLS-head exports are plain
    unless a bias is missing."""
    if case == "bitfit":
        return False            # the family's CLS head; LoRA's paper head (first token) is jrft's own
    if case in ("jr-cls", "jr-intermediate-cls", "jr-attention-cls"):
        return family in REMOTE_BIASES
    return True


def encode(tok, model, texts):
    mask = f" {tok.mask_token}" if model.head_kind == "mask" else ""
    return dict(tok([a + mask for a, _ in texts], [b for _, b in texts], padding=True, return_tensors="pt"))


def train_and_save(model_dir: Path, overrides: list[str], run_dir: Path) -> dict:
    """Build the model `jrft train` builds, train it two steps on a fixed batch, save its artifact."""
    cfg = plain("task=rte", *overrides + [f"model.name={model_dir}"])
    tok = load_tokenizer(str(model_dir))
    model = build_model(cfg, tok, 2)
    batch = encode(tok, model, TRAIN_TEXTS)
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(2):
        loss_fn(model(**batch), LABELS, False).backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    moved = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, trainable[n])]
    still = [n for n, p in model.named_parameters() if not p.requires_grad and not torch.equal(p, frozen[n])]
    save_artifact(model, run_dir, artifact_info(cfg, model, tok, 2))
    with torch.no_grad():
        logits = model(**batch)
    return {"moved": moved, "trainable": sorted(trainable), "frozen_changed": still, "batch": batch,
            "logits": logits, "head": model.head_kind}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_models")
    return {family: tiny_model(family, root) for family in FAMILIES}


@pytest.fixture(scope="module")
def runs(models, tmp_path_factory) -> dict[str, dict]:
    """family/case -> what training, reloading and exporting gave (or the error it raised)."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    root = tmp_path_factory.mktemp("family_runs")
    out: dict[str, dict] = {}
    for family, model_dir in models.items():
        for case, overrides in CASES.items():
            if case in POSITION_CASES and family not in POSITION_FAMILIES:
                continue
            key = f"{family}/{case}"
            run_dir, exp_dir = root / "runs" / key, root / "exports" / key
            try:
                record = train_and_save(model_dir, overrides, run_dir)
                loaded = load_artifact(run_dir)
                with torch.no_grad():
                    record["reloaded"] = loaded.model(**record["batch"])
                record["export"] = export_run(run_dir, exp_dir)
                record["run_dir"] = run_dir
                out[key] = record
            except Exception as e:   # recorded per case: one family's failure does not hide the others'
                out[key] = {"error": e, "trace": traceback.format_exc()}
    return out


@pytest.fixture(scope="module")
def isolated(runs, tmp_path_factory) -> dict[str, dict]:
    keys = [k for k, r in runs.items() if "export" in r]
    jobs = [{"dir": str(runs[k]["export"].out_dir), "trust": runs[k]["export"].remote_code, "texts": PAIR_TEXTS}
            for k in keys]
    result = load_isolated(jobs, tmp_path_factory.mktemp("isolated_families"))
    assert result["jrft_importable"] is False
    return dict(zip(keys, result["results"]))


def _record(runs: dict, key: str) -> dict:
    record = runs[key]
    if "error" in record:
        pytest.fail(f"{key}: {record['trace']}")
    return record


ALL = [f"{f}/{c}" for f in FAMILIES for c in CASES
       if not (c == "bitfit" and f in NO_BIASES) and (c not in POSITION_CASES or f in POSITION_FAMILIES)]


@pytest.mark.parametrize("key", ALL)
def test_trains_reloads_and_exports_with_equal_logits(key, runs, isolated):
    family, case = key.split("/")
    record = _record(runs, key)
    assert sorted(record["moved"]) == record["trainable"] and not record["frozen_changed"]
    torch.testing.assert_close(record["reloaded"], record["logits"], atol=1e-6, rtol=0)
    assert record["export"].remote_code is expect_remote(family, case)
    assert record["export"].max_abs_diff <= 1e-5
    got = isolated[key]
    want_model = load_artifact(record["run_dir"]).model
    with torch.no_grad():
        want = want_model(**{k: torch.tensor(v) for k, v in got["batch"].items()})
    torch.testing.assert_close(torch.tensor(got["logits"]), want, atol=1e-5, rtol=0)
    assert want.abs().max() > 1e-3
    if not record["export"].remote_code:
        assert got["class"].endswith("ForSequenceClassification") and got["class"] != "JrftClassifier"


@pytest.mark.parametrize("family", sorted(NO_BIASES))
def test_bitfit_is_refused_where_the_family_has_no_biases(family, runs):
    error = runs[f"{family}/bitfit"]["error"]
    assert isinstance(error, JrftError)
    assert f"method=bitfit: the backbone {family} (" in str(error) and "has no bias parameters" in str(error)


@pytest.mark.parametrize("family", FAMILIES)
def test_decoders_read_the_last_token_encoders_the_mask(family, runs):
    want = "last" if family in DECODERS else "mask"
    assert _record(runs, f"{family}/jr")["head"] == want
    info = json.loads((runs[f"{family}/jr"]["run_dir"] / "adapter_config.json").read_text())
    assert info["head"] == want and info["mask_format"] is (want == "mask")


def test_llama_jr_cls_export_sets_mlp_bias_and_is_plain(runs):
    record = _record(runs, "llama/jr-cls")
    out = record["export"].out_dir
    config = json.loads((out / "config.json").read_text())
    assert config["mlp_bias"] is True and config["architectures"] == ["LlamaForSequenceClassification"]
    note = json.loads((out / "jrft_export.json").read_text())
    assert note["bias_config_flags"] == {"mlp_bias": True} and note["bias_added_by_remote_code"] == []
    from safetensors.torch import load_file
    state = load_file(str(out / "model.safetensors"))
    assert torch.count_nonzero(state["model.layers.0.mlp.gate_proj.bias"]) == 0     # added as zeros
    assert torch.count_nonzero(state["model.layers.0.mlp.down_proj.bias"]) > 0      # holds the shift


def test_mistral_jr_cls_export_adds_the_bias_in_remote_code(runs):
    out = _record(runs, "mistral/jr-cls")["export"].out_dir
    config = json.loads((out / "config.json").read_text())
    assert config["jrft_extra_biases"] == ["mlp.down_proj"] and config["jrft_layers"] == "layers"
    assert "mlp_bias" not in config or not config["mlp_bias"]


# ---------------------------------------------------------------- decoders: positions, padding, causality

def _capture_positions(backbone):
    """Record the position ids the model's position encoding receives (GPT-2's wpe, RoPE's rotary_emb)."""
    seen = []
    module = getattr(backbone, "wpe", None) or getattr(backbone, "rotary_emb")

    def hook(mod, args, kwargs):
        ids = kwargs.get("position_ids", args[-1] if args else None)
        seen.append(ids.clone())
    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    return seen, handle


@pytest.mark.parametrize("family", ["gpt2", "llama", "phi"])
def test_jr_warp_on_decoders_keeps_positions_and_ignores_padding(family, models):
    cfg = plain("task=rte", *["method=jr_warp", "d=16", f"model.name={models[family]}"])
    tok = load_tokenizer(str(models[family]))
    assert tok.pad_token == tok.eos_token and tok.padding_side == "right"
    model = build_model(cfg, tok, 2).eval()
    texts = [("the cat sat on the mat", "a cat"), ("sunny", "second")]
    batch = encode(tok, model, texts)
    seen, handle = _capture_positions(model.backbone)
    with torch.no_grad():
        logits = model(**batch)
    handle.remove()
    length = batch["input_ids"].shape[1]
    positions = seen[0].expand(2, -1)
    assert positions.shape[1] == length + 1
    assert positions[:, 0].tolist() == [0, 0] and positions[0, 1:].tolist() == list(range(length))
    # right padding: each example alone (no pad) gives the same logits as inside the padded batch
    for i, pair in enumerate(texts):
        with torch.no_grad():
            alone = model(**encode(tok, model, [pair]))
        torch.testing.assert_close(alone[0], logits[i], atol=1e-5, rtol=0)
    # the real tokens attend to the prompt: another z gives other logits
    with torch.no_grad():
        model.adapter.z.mul_(5.0)
        assert (model(**batch) - logits).abs().max() > 1e-4


def test_last_head_reads_the_last_non_pad_token_for_either_padding_side():
    from jrft_cli.core.heads import read_last

    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).view(2, 4, 1)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert read_last(hidden, None, right, None).flatten().tolist() == [1.0, 7.0]
    assert read_last(hidden, None, left, None).flatten().tolist() == [3.0, 7.0]
    assert read_last(hidden, None, None, None).flatten().tolist() == [3.0, 7.0]


def test_jr_warp_with_the_cls_head_on_a_decoder_is_refused(models):
    cfg = plain("task=rte", *["method=jr_warp", "d=16", "method.head=cls", f"model.name={models['llama']}"])
    with pytest.raises(JrftError, match="jr_warp with method.head=cls is not supported on the decoder llama"):
        build_model(cfg, load_tokenizer(str(models["llama"])), 2)


# ---------------------------------------------------------------- private training on every family

def _per_example_clipped_sum(model, params, batch, labels, C):
    sums = [torch.zeros_like(p) for p in params]
    for i in range(labels.numel()):
        model.zero_grad()
        loss_fn(model(**batch), labels, False, reduction="none")[i].backward()
        grads = [p.grad.clone() for p in params]
        norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
        sums = [s + min(1.0, C / (float(norm) + 1e-6)) * g for s, g in zip(sums, grads)]
    return sums


DP_METHODS = ["jr", "jr_warp", "linear", "lora", "bitfit", "full"]
# (family, method) -> the refusal under privacy=dp: opacus cannot hook these (jr, jr_warp, linear need no opacus)
DP_REFUSED = {
    **{("deberta-v2", m): "relative-position embeddings, one tensor shared by the whole batch"
       for m in ("lora", "bitfit", "full")},
    ("gemma", "full"): "opacus cannot compute per-example gradients of GemmaTextScaledWordEmbedding",
}


@pytest.mark.parametrize("family", FAMILIES)
def test_private_clipped_sums_equal_per_example_clipping(family, models):
    """Under privacy=dp each method's sampler (jr/jr_warp/linear: the fast path; lora/bitfit/full:
    opacus) clips every example's own gradient, on every family."""
    from jrft_cli.dp.samplers import freeze_shared_embeddings, make_sampler
    from jrft_cli.core.registry import method_spec

    tok = load_tokenizer(str(models[family]))
    texts = TRAIN_TEXTS[:3]
    labels = LABELS[:3]
    for method in DP_METHODS:
        if method == "bitfit" and family in NO_BIASES:
            continue
        cfg = plain("task=rte", *[f"method={method}", "d=16", f"model.name={models[family]}", "method.dropout=0.0"])
        model = build_model(cfg, tok, 2).train()
        if method_spec(method).dp.freeze_shared_embeddings:
            freeze_shared_embeddings(model)
        params = [p for p in model.parameters() if p.requires_grad]
        batch = encode(tok, model, texts)
        C = 0.5
        if (family, method) in DP_REFUSED:
            with pytest.raises(JrftError, match=DP_REFUSED[family, method]):
                make_sampler(model, params, method, "auto", C)
            continue
        sampler = make_sampler(model, params, method, "auto", C)
        try:
            sums, _ = sampler.clipped_sum(loss_fn(model(**batch), labels, False, reduction="none"), C)
        finally:
            sampler.remove()
        want = _per_example_clipped_sum(model, params, batch, labels, C)
        for s, w in zip(sums, want):
            torch.testing.assert_close(s, w, atol=1e-5, rtol=1e-4, msg=f"{family} {method}")
        assert any(w.abs().max() > 1e-6 for w in want)
