"""Build a classifier with a method applied, from plain arguments (no config dicts)."""
from __future__ import annotations

from typing import Any

import torch

from jrft_cli.core.backbone import SequenceClassifier
from jrft_cli.core.registry import method_spec


def build_classifier(model_name: str, num_labels: int, method: str, options: Any, *, tokenizer: Any,
                     seed: int, head: str = "mask", dropout: float | None = None,
                     revision: str | None = None, attn_implementation: str | None = None) -> SequenceClassifier:
    """The backbone with its head and `method` applied with typed `options` (deterministic for `seed`:
    the head's init and z's init draw from torch's global RNG right after seeding it).
    `attn_implementation`: the backbone's attention kernel (None = the model's default)."""
    spec = method_spec(method)
    if spec.bind_tokenizer is not None:
        options = spec.bind_tokenizer(options, tokenizer)
    torch.manual_seed(seed)
    model = SequenceClassifier(model_name, num_labels, head=head, dropout=dropout, revision=revision,
                               mask_token_id=tokenizer.mask_token_id, pad_token_id=tokenizer.pad_token_id,
                               attn_implementation=attn_implementation)
    spec.apply(model, options)
    model.method, model.method_options = method, options
    return model
