"""Head readouts: which hidden states a linear head reads.

A readout maps the backbone's final hidden states (B, T, H) of the input's own T positions (a method
may have prepended positions; they are cut off before) to the head's input. Adding a head that reads
other positions is one function and one entry in READOUTS. The `cls` head is not here: it is the
model family's own `AutoModelForSequenceClassification` head (see core.backbone).

- `mask`:   the hidden state at the appended mask token (the paper's head for jr, jr_warp, linear, WARP);
- `first`:  the hidden state at the first position (`[CLS]` / `<s>`): the one linear layer on the first
            token that the paper's LoRA and adapter runs put in place of the model's classifier;
- `tokens`: every position's hidden state (B, T, H): a per-token head for token tasks (NER). On a
            token task every method's head is this one (see tasks.kinds).
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


def read_first(hidden: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
               mask_token_id: int | None) -> torch.Tensor:
    """The hidden state at the first position (`[CLS]` / `<s>`): (B, H)."""
    return hidden[:, 0]


def read_tokens(hidden: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                mask_token_id: int | None) -> torch.Tensor:
    """Every position's hidden state, for a per-token head: (B, T, H)."""
    return hidden


# head name -> readout; every head here is one linear layer on the readout's output.
READOUTS: dict[str, Readout] = {"mask": read_mask, "last": read_last, "first": read_first, "tokens": read_tokens}
# heads that need the tokenizer's mask token in the input (the data is formatted with one)
MASK_FORMAT_HEADS: tuple[str, ...] = ("mask",)
# heads that give one output per position (token tasks)
TOKEN_HEADS: tuple[str, ...] = ("tokens",)
