"""The naive reference jr computes the same per-example gradients of z as jrft's fast path."""
from __future__ import annotations

import torch

from jrft_cli.tasks.evaluation import loss_fn


def test_naive_reference_matches_the_fast_path():
    from opacus import GradSampleModule
    from transformers import AutoTokenizer

    from jrft_cli.core.backbone import resolve_model_name
    from jrft_cli.bench.naive_jr import DenseShift, apply_naive_jr
    from jrft_cli.training.recipe import build_model
    from conftest import plain

    cfg = plain("task=rte", "method=jr", "d=64")
    tok = AutoTokenizer.from_pretrained(resolve_model_name(cfg["model"]["name"]))
    jr = build_model(cfg, tok, 2)
    naive = build_model({**cfg, "method": {**cfg["method"], "name": "linear"}}, tok, 2)
    z = apply_naive_jr(naive, 64, seed=cfg["method"]["projection_seed"])
    shifts = [m for m in naive.modules() if isinstance(m, DenseShift)]
    assert len(shifts) == 6 and all(m.z is z and not m.W.requires_grad for m in shifts)
    assert sorted(n for n, p in naive.named_parameters() if p.requires_grad)[-2:] == ["head.bias", "head.weight"]
    with torch.no_grad():
        z.copy_(jr.adapter.z)
        naive.head.load_state_dict(jr.head.state_dict())

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 20000, (3, 12), generator=g)
    ids[:, -2] = tok.mask_token_id
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    labels = torch.tensor([0, 1, 1])
    jr.adapter.per_example = True
    fast_losses = loss_fn(jr(**batch), labels, False, "none")
    fast_losses.sum().backward()
    fast = jr.adapter.per_example_z_grads()

    gsm = GradSampleModule(naive, batch_first=True, loss_reduction="sum", strict=False)
    naive_losses = loss_fn(gsm(**batch), labels, False, "none")
    naive_losses.sum().backward()
    torch.testing.assert_close(naive_losses, fast_losses)
    assert fast.abs().max() > 1e-3
    torch.testing.assert_close(z.grad_sample, fast, atol=1e-5, rtol=1e-4)
