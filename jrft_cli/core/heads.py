"""Head readouts: which hidden states a linear head reads.

A readout maps the backbone's final hidden states (B, T, H) of the input's own T positions (a method
may have prepended tokens; they are cut off before) to the head's input. Adding a head that reads
other positions is one function and one entry in READOUTS. The `cls` head is not here: it is the
model family's own `AutoModelForSequenceClassification` head (see core.backbone).
"""
from __future__ import annotations

from typing import Callable

import torch

from jrft_cli.core.errors import JrftError

Readout = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None", "int | None"], torch.Tensor]


def read_mask(hidden: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
              mask_token_id: int | None) -> torch.Tensor:
    """The hidden state at each row's first mask token (the paper's head): (B, H)."""
    is_mask = input_ids == mask_token_id
    if not bool(is_mask.any(dim=1).all()):
        raise JrftError("an input has no mask token: the mask head needs inputs formatted with one")
    pos = is_mask.int().argmax(dim=1)
    return hidden[torch.arange(hidden.size(0), device=hidden.device), pos]


def read_last(hidden: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
              mask_token_id: int | None) -> torch.Tensor:
    """The hidden state at each row's last attended (non-pad) token: (B, H). Decoder-only models see the
    whole input only there (transformers' `*ForSequenceClassification` convention). Read from the
    attention mask, so left and right padding both work, and a pad token equal to EOS is no problem."""
    rows = torch.arange(hidden.size(0), device=hidden.device)
    if attention_mask is None:
        return hidden[rows, -1]
    positions = torch.arange(attention_mask.size(1), device=hidden.device)
    last = (attention_mask.to(hidden.device).long() * positions).argmax(dim=1)
    return hidden[rows, last]


# head name -> readout; every head here is one linear layer on the readout's output.
READOUTS: dict[str, Readout] = {"mask": read_mask, "last": read_last}
# heads that need the tokenizer's mask token in the input (the data is formatted with one)
MASK_FORMAT_HEADS: tuple[str, ...] = ("mask",)
