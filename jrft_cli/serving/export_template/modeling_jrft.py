"""A sequence classifier exported by jrft (arXiv 2305.19264: mask-token head and JR-WARP prompt).

Self-contained: imports only torch and transformers, so
`AutoModelForSequenceClassification.from_pretrained(DIR, trust_remote_code=True)` loads it
without jrft installed. The backbone is the stock transformers model of the base architecture
(`config.model_type`); jr (SLaSh) shifts are already folded into its biases.

- `config.jrft_head == "mask"`: the head is one linear layer on the final hidden state at the FIRST
  mask token (`config.jrft_mask_token_id`) of each input: format inputs as in jrft_export.json
  (the mask token appended to the first sentence). `"cls"`: the family's standard classification head.
- With `config.jrft_prompt_layers` > 0 (JR-WARP) one prompt token (`config.jrft_prompt_token_id`)
  is prepended; entering layer 1 its hidden state is `jrft_prompt[0]`, entering every later
  layer l, `jrft_prompt[l]` is added to it.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from transformers import AutoModel, AutoModelForSequenceClassification, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput


def _encoder_layers(model: nn.Module) -> nn.ModuleList:
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and (name.endswith("encoder.layer") or name.endswith("transformer.layer")):
            return module
    raise ValueError(f"cannot find the encoder layers of {type(model).__name__}")


def _prepend(t: torch.Tensor | None, value: int) -> torch.Tensor | None:
    if t is None:
        return None
    return torch.cat([torch.full_like(t[:, :1], value), t], dim=1)


class JrftClassifier(PreTrainedModel):
    """Backbone + head (mask-token linear head, or the family's CLS head), optional JR-WARP prompt token."""

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
        if self.head_kind == "cls":
            self.hf = AutoModelForSequenceClassification.from_config(inner)
        else:
            try:
                self.backbone = AutoModel.from_config(inner, add_pooling_layer=False)
            except TypeError:  # families without a pooler take no such argument
                self.backbone = AutoModel.from_config(inner)
            self.head = nn.Linear(config.hidden_size, config.num_labels)
        self.mask_token_id = getattr(config, "jrft_mask_token_id", None)
        self.prompt_layers = int(getattr(config, "jrft_prompt_layers", 0) or 0)
        if self.prompt_layers:
            self.jrft_prompt = nn.Parameter(torch.zeros(self.prompt_layers, config.hidden_size), requires_grad=False)
            self._base().embeddings.register_forward_hook(self._set_prompt)
            for l, layer in enumerate(_encoder_layers(self._base())):
                if l > 0:
                    layer.register_forward_pre_hook(self._layer_hook(l), with_kwargs=True)
        self.post_init()

    def _base(self) -> nn.Module:
        return self.hf.base_model if self.head_kind == "cls" else self.backbone

    def _init_weights(self, module: nn.Module) -> None:
        # Every weight comes from the checkpoint; nothing to initialise beyond torch's defaults.
        pass

    def _set_prompt(self, module: nn.Module, inputs: tuple, out: torch.Tensor) -> torch.Tensor:
        first = self.jrft_prompt[0].to(out.dtype).expand(out.size(0), 1, -1)
        return torch.cat([first, out[:, 1:]], dim=1)

    def _layer_hook(self, l: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict):
            shift = self.jrft_prompt[l]
            if args:
                hidden = args[0]
                hidden = torch.cat([hidden[:, :1] + shift.to(hidden.dtype), hidden[:, 1:]], dim=1)
                return (hidden,) + tuple(args[1:]), kwargs
            hidden = kwargs["hidden_states"]
            hidden = torch.cat([hidden[:, :1] + shift.to(hidden.dtype), hidden[:, 1:]], dim=1)
            return args, {**kwargs, "hidden_states": hidden}
        return hook

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                return_dict: bool | None = None, **_: object) -> SequenceClassifierOutput:
        ids, mask, types = input_ids, attention_mask, token_type_ids
        if self.prompt_layers:
            ids = _prepend(ids, int(self.config.jrft_prompt_token_id))
            mask = _prepend(mask, 1)
            types = _prepend(types, 0)
        kwargs = {"attention_mask": mask}
        if types is not None:
            kwargs["token_type_ids"] = types
        if self.head_kind == "cls":
            logits = self.hf(input_ids=ids, **kwargs).logits
            return SequenceClassifierOutput(loss=self._loss(logits, labels), logits=logits)
        hidden = self.backbone(input_ids=ids, **kwargs).last_hidden_state
        hidden = hidden[:, hidden.size(1) - input_ids.size(1):]
        is_mask = input_ids == self.mask_token_id
        if not bool(is_mask.any(dim=1).all()):
            raise ValueError("an input has no mask token: append the tokenizer's mask token to the first sentence "
                             "(see jrft_export.json)")
        pos = is_mask.int().argmax(dim=1)   # first mask position per row
        logits = self.head(hidden[torch.arange(hidden.size(0), device=hidden.device), pos])
        return SequenceClassifierOutput(loss=self._loss(logits, labels), logits=logits)

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor | None:
        if labels is None:
            return None
        if self.config.num_labels == 1:
            return nn.functional.mse_loss(logits.squeeze(-1).float(), labels.float())
        return nn.functional.cross_entropy(logits.float(), labels)
