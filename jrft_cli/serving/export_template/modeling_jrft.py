"""A sequence classifier exported by jrft (arXiv 2305.19264: mask-token head and JR-WARP prompt).

Self-contained: imports only torch and transformers, so
`AutoModelForSequenceClassification.from_pretrained(DIR, trust_remote_code=True)` loads it
without jrft installed. The backbone is the stock transformers model of the base architecture
(`config.model_type`); jr (SLaSh) shifts are already folded into its biases.

- `config.jrft_head == "mask"`: the head is one linear layer on the final hidden state at the FIRST
  mask token (`config.jrft_mask_token_id`) of each input: format inputs as in jrft_export.json
  (the mask token appended to the first sentence). `"last"`: the same on the last token the
  attention mask keeps (decoder-only models). `"cls"`: the family's standard classification head.
- `config.jrft_extra_biases`: module paths inside each block (`config.jrft_layers`) that get a bias
  the family's config cannot declare (the folded jr shifts live there).
- With `config.jrft_prompt_layers` > 0 (JR-WARP) one prompt position is added at index 0: the
  prompt token id (`config.jrft_prompt_token_id`) prepended to the inputs (`jrft_prompt_insert ==
  "token"`), or a vector inserted after the embeddings with the real tokens' position ids kept
  (`"embeds"`). Entering the first block its hidden state is `jrft_prompt[0]`, entering every later
  block l, `jrft_prompt[l]` is added to it.
"""
from __future__ import annotations

import copy
import inspect

import torch
from torch import nn
from transformers import AutoModel, AutoModelForSequenceClassification, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput


def _find_layers(model: nn.Module, path: str | None) -> nn.ModuleList:
    suffixes = (path,) if path else ("encoder.layer", "transformer.layer")
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and any(name == s or name.endswith("." + s) for s in suffixes):
            return module
    raise ValueError(f"cannot find the layers of {type(model).__name__} (looked for {', '.join(suffixes)})")


def _prepend(t: torch.Tensor | None, value: int) -> torch.Tensor | None:
    if t is None:
        return None
    return torch.cat([torch.full_like(t[:, :1], value), t], dim=1)


def _width(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.out_features
    return int(module.nf)   # transformers' Conv1D (GPT-2)


class JrftClassifier(PreTrainedModel):
    """Backbone + head (mask-token or last-token linear head, or the family's CLS head), optional
    JR-WARP prompt position."""

    base_model_prefix = "jrft"   # no prefix is stripped or added when loading: keys are as saved
    _no_split_modules: list[str] = []
    # Attention runs inside the stock backbone, which supports what its family supports.
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def __init__(self, config) -> None:
        super().__init__(config)
        self.head_kind = getattr(config, "jrft_head", "mask")
        inner = copy.deepcopy(config)
        if hasattr(inner, "auto_map"):   # the inner stock model must not resolve back to this class
            del inner.auto_map
        try:
            self._build(inner)
        except ValueError:   # the attention implementation chosen for this wrapper is not the family's
            inner._attn_implementation_internal = None
            self._build(inner)
        if self.head_kind != "cls":
            self.head = nn.Linear(config.hidden_size, config.num_labels)
        entry = self.hf if self.head_kind == "cls" else self.backbone
        self.takes_token_types = "token_type_ids" in inspect.signature(entry.forward).parameters
        self.mask_token_id = getattr(config, "jrft_mask_token_id", None)
        layers = _find_layers(self._base(), getattr(config, "jrft_layers", None))
        for path in getattr(config, "jrft_extra_biases", None) or []:
            for layer in layers:
                module = layer.get_submodule(path)
                if module.bias is None:
                    module.bias = nn.Parameter(torch.zeros(_width(module)))
        self.prompt_layers = int(getattr(config, "jrft_prompt_layers", 0) or 0)
        self.prompt_insert = getattr(config, "jrft_prompt_insert", None) or "token"
        if self.prompt_layers:
            self.jrft_prompt = nn.Parameter(torch.zeros(self.prompt_layers, config.hidden_size), requires_grad=False)
            for l, layer in enumerate(layers):
                layer.register_forward_pre_hook(self._layer_hook(l), with_kwargs=True)
        self.post_init()

    def _build(self, inner) -> None:
        if self.head_kind == "cls":
            self.hf = AutoModelForSequenceClassification.from_config(inner)
            return
        try:
            self.backbone = AutoModel.from_config(inner, add_pooling_layer=False)
        except TypeError:  # families without a pooler take no such argument
            self.backbone = AutoModel.from_config(inner)

    def _base(self) -> nn.Module:
        return self.hf.base_model if self.head_kind == "cls" else self.backbone

    def _init_weights(self, module: nn.Module) -> None:
        # Every weight comes from the checkpoint; nothing to initialise beyond torch's defaults.
        pass

    def _layer_hook(self, l: int):
        def put(hidden: torch.Tensor) -> torch.Tensor:
            shift = self.jrft_prompt[l].to(hidden.dtype).expand(hidden.size(0), 1, -1)
            row = shift if l == 0 else hidden[:, :1] + shift
            return torch.cat([row, hidden[:, 1:]], dim=1)

        def hook(module: nn.Module, args: tuple, kwargs: dict):
            if args:
                return (put(args[0]),) + tuple(args[1:]), kwargs
            return args, {**kwargs, "hidden_states": put(kwargs["hidden_states"])}
        return hook

    def _inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                token_type_ids: torch.Tensor | None) -> dict:
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None and self.takes_token_types:
            kwargs["token_type_ids"] = token_type_ids
        if not self.prompt_layers:
            return kwargs
        if "token_type_ids" in kwargs:
            kwargs["token_type_ids"] = _prepend(kwargs["token_type_ids"], 0)
        if self.prompt_insert == "token":
            kwargs["input_ids"] = _prepend(input_ids, int(self.config.jrft_prompt_token_id))
            kwargs["attention_mask"] = _prepend(attention_mask, 1)
            return kwargs
        embeds = self._base().get_input_embeddings()(input_ids)
        batch, length = input_ids.shape
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        positions = torch.arange(length, device=input_ids.device).expand(batch, length)
        kwargs.update(input_ids=None, inputs_embeds=torch.cat([torch.zeros_like(embeds[:, :1]), embeds], dim=1),
                      attention_mask=_prepend(mask, 1), position_ids=_prepend(positions, 0))
        return kwargs

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                return_dict: bool | None = None, **_: object) -> SequenceClassifierOutput:
        kwargs = self._inputs(input_ids, attention_mask, token_type_ids)
        if self.head_kind == "cls":
            logits = self.hf(**kwargs).logits
            return SequenceClassifierOutput(loss=self._loss(logits, labels), logits=logits)
        hidden = self.backbone(**kwargs).last_hidden_state
        hidden = hidden[:, hidden.size(1) - input_ids.size(1):]
        rows = torch.arange(hidden.size(0), device=hidden.device)
        if self.head_kind == "last":
            if attention_mask is None:
                pos = torch.full_like(rows, hidden.size(1) - 1)
            else:   # the last attended position: right or left padding alike
                pos = (attention_mask.long() * torch.arange(attention_mask.size(1), device=hidden.device)).argmax(1)
        else:
            is_mask = input_ids == self.mask_token_id
            if not bool(is_mask.any(dim=1).all()):
                raise ValueError("an input has no mask token: append the tokenizer's mask token to the first "
                                 "sentence (see jrft_export.json)")
            pos = is_mask.int().argmax(dim=1)   # first mask position per row
        logits = self.head(hidden[rows, pos])
        return SequenceClassifierOutput(loss=self._loss(logits, labels), logits=logits)

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor | None:
        if labels is None:
            return None
        if self.config.num_labels == 1:
            return nn.functional.mse_loss(logits.squeeze(-1).float(), labels.float())
        return nn.functional.cross_entropy(logits.float(), labels)
