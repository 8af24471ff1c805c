"""A classifier exported by jrft (arXiv 2305.19264: mask-token head, JR-WARP / WARP prompts, adapters).

Self-contained: imports only torch and transformers, so
`AutoModelForSequenceClassification.from_pretrained(DIR, trust_remote_code=True)` (token tasks:
`AutoModelForTokenClassification`) loads it without jrft installed. The backbone is the stock
transformers model of the base architecture (`config.model_type`); jr (SLaSh) shifts are already
folded into its biases, LoRA updates merged into its weights.

- `config.jrft_head`: `"mask"`: one linear layer on the final hidden state at the FIRST mask token
  (`config.jrft_mask_token_id`) of each input: format inputs as in jrft_export.json (the mask token
  appended to the first sentence). `"first"`: one linear layer on the first position (`[CLS]` / `<s>`).
  `"tokens"`: one linear layer on every position (logits (B, T, C)). `"cls"`: the family's standard
  classification head.
- With `config.jrft_prompt_rows` > 0 the first `config.jrft_prompt_inserted` rows of `jrft_prompt`
  enter as new positions right after the embedding layer (input ids and positions untouched; the
  attention mask grows to match). With `config.jrft_prompt_layer_shifts` (JR-WARP) one row is
  inserted and, entering every later layer l, `jrft_prompt[l]` is added to it; without (WARP) the
  rows are only inserted.
- With `config.jrft_adapters` (Houlsby adapters) each layer's attention output and FFN output pass
  through h + up(act(down(h))) before the residual + LayerNorm (`jrft_adapters[2l]`, `[2l + 1]`).
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from transformers import AutoModel, AutoModelForSequenceClassification, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput, TokenClassifierOutput

ACTIVATIONS = {"swish": nn.SiLU, "relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}
# where the adapters sit inside one block (BERT/RoBERTa first, DistilBERT second)
ADAPTER_PATHS = (("attention.output.dropout", "attention.out_lin"), ("output.dropout", "ffn.dropout"))


def _encoder_layers(model: nn.Module) -> nn.ModuleList:
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and (name.endswith("encoder.layer") or name.endswith("transformer.layer")):
            return module
    raise ValueError(f"cannot find the encoder layers of {type(model).__name__}")


def _submodule(layer: nn.Module, paths: tuple[str, ...]) -> nn.Module:
    for path in paths:
        try:
            return layer.get_submodule(path)
        except AttributeError:
            continue
    raise ValueError(f"cannot find any of {paths} in {type(layer).__name__}")


class Bottleneck(nn.Module):
    """h -> h + up(act(down(h)))."""

    def __init__(self, hidden: int, size: int, non_linearity: str) -> None:
        super().__init__()
        self.down = nn.Linear(hidden, size)
        self.act = ACTIVATIONS[non_linearity]()
        self.up = nn.Linear(size, hidden)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(self.act(self.down(h)))

    def hook(self, module: nn.Module, inputs: tuple, out: torch.Tensor) -> torch.Tensor:
        return self(out)


class JrftClassifier(PreTrainedModel):
    """Backbone + head (mask / first / tokens linear head, or the family's CLS head), optional prompt
    vectors after the embeddings, optional bottleneck adapters."""

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
        self.prompt_rows = int(getattr(config, "jrft_prompt_rows", 0) or 0)
        self.prompt_inserted = int(getattr(config, "jrft_prompt_inserted", 0) or 0)
        layers = _encoder_layers(self._base())
        if self.prompt_rows:
            self.jrft_prompt = nn.Parameter(torch.zeros(self.prompt_rows, config.hidden_size), requires_grad=False)
            self._base().embeddings.register_forward_hook(self._insert_prompt)
            if getattr(config, "jrft_prompt_layer_shifts", False):
                for l, layer in enumerate(layers):
                    if l > 0:
                        layer.register_forward_pre_hook(self._layer_hook(l), with_kwargs=True)
        adapters = getattr(config, "jrft_adapters", None)
        if adapters:
            self.jrft_adapters = nn.ModuleList()
            for layer in layers:
                for paths in ADAPTER_PATHS:
                    block = Bottleneck(config.hidden_size, int(adapters["size"]), adapters["non_linearity"])
                    self.jrft_adapters.append(block)
                    _submodule(layer, paths).register_forward_hook(block.hook)
        self.post_init()

    def _base(self) -> nn.Module:
        return self.hf.base_model if self.head_kind == "cls" else self.backbone

    def _init_weights(self, module: nn.Module) -> None:
        # Every weight comes from the checkpoint; nothing to initialise beyond torch's defaults.
        pass

    def _insert_prompt(self, module: nn.Module, inputs: tuple, out: torch.Tensor) -> torch.Tensor:
        prompt = self.jrft_prompt[:self.prompt_inserted].to(out.dtype).expand(out.size(0), -1, -1)
        return torch.cat([prompt, out], dim=1)

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
                return_dict: bool | None = None, **_: object):
        mask = attention_mask
        if self.prompt_rows and mask is not None:   # the inserted positions are attended to
            mask = torch.cat([torch.ones_like(mask[:, :1]).expand(-1, self.prompt_inserted), mask], dim=1)
        kwargs = {"attention_mask": mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        if self.head_kind == "cls":
            logits = self.hf(input_ids=input_ids, **kwargs).logits
            return SequenceClassifierOutput(loss=self._loss(logits, labels), logits=logits)
        hidden = self.backbone(input_ids=input_ids, **kwargs).last_hidden_state
        hidden = hidden[:, hidden.size(1) - input_ids.size(1):]   # the input's own positions
        if self.head_kind == "tokens":
            logits = self.head(hidden)
            return TokenClassifierOutput(loss=self._loss(logits, labels), logits=logits)
        if self.head_kind == "first":
            read = hidden[:, 0]
        else:
            is_mask = input_ids == self.mask_token_id
            if not bool(is_mask.any(dim=1).all()):
                raise ValueError("an input has no mask token: append the tokenizer's mask token to the first sentence "
                                 "(see jrft_export.json)")
            pos = is_mask.int().argmax(dim=1)   # first mask position per row
            read = hidden[torch.arange(hidden.size(0), device=hidden.device), pos]
        logits = self.head(read)
        return SequenceClassifierOutput(loss=self._loss(logits, labels), logits=logits)

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor | None:
        if labels is None:
            return None
        if self.head_kind == "tokens":   # -100 marks positions without a label (special tokens, sub-words)
            return nn.functional.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
        if self.config.num_labels == 1:
            return nn.functional.mse_loss(logits.squeeze(-1).float(), labels.float())
        return nn.functional.cross_entropy(logits.float(), labels)
