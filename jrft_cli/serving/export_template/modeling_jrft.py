"""A classifier exported by jrft (arXiv 2305.19264: mask-token head, JR-WARP / WARP prompts, adapters).

Self-contained: imports only torch and transformers, so
`AutoModelForSequenceClassification.from_pretrained(DIR, trust_remote_code=True)` (token tasks:
`AutoModelForTokenClassification`) loads it without jrft installed. The backbone is the stock
transformers model of the base architecture (`config.model_type`); jr (SLaSh) shifts are already
folded into its biases, LoRA updates merged into its weights.

- `config.jrft_head`: `"mask"`: one linear layer on the final hidden state at the FIRST mask token
  (`config.jrft_mask_token_id`) of each input: format inputs as in jrft_export.json (the mask token
  appended to the first sentence). `"last"`: the same on the last token the attention mask keeps
  (decoder-only models). `"first"`: on the first position (`[CLS]` / `<s>`). `"tokens"`: on every
  position (logits (B, T, C)). `"cls"`: the family's standard classification head.
- `config.jrft_extra_biases`: module paths inside each block (`config.jrft_layers`) that get a bias
  the family's config cannot declare (the folded jr shifts live there).
- With `config.jrft_prompt_rows` > 0 the first `config.jrft_prompt_inserted` rows of `jrft_prompt`
  enter as new positions right after the embeddings (the real tokens keep their positions; the
  attention mask grows to match): placeholders are prepended to the embedding module's output
  (`config.jrft_prompt_insert == "embeddings"`, encoders) or to the input embeddings with the real
  tokens' position ids passed explicitly (`"embeds"`, decoders), and entering the first block they
  become the prompt rows. With `config.jrft_prompt_layer_shifts` (JR-WARP) one row is inserted and,
  entering every later block l, `jrft_prompt[l]` is added to it; without (WARP) the rows are only
  inserted.
- With `config.jrft_adapters` (Houlsby adapters) each layer's attention output and FFN output pass
  through h + up(act(down(h))) before the residual + LayerNorm (`jrft_adapters[2l]`, `[2l + 1]`).
"""
from __future__ import annotations

import copy
import inspect

import torch
from torch import nn
from transformers import AutoModel, AutoModelForSequenceClassification, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput, TokenClassifierOutput

ACTIVATIONS = {"swish": nn.SiLU, "relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}
# where the adapters sit inside one block (BERT/RoBERTa first, DistilBERT second)
ADAPTER_PATHS = (("attention.output.dropout", "attention.out_lin"), ("output.dropout", "ffn.dropout"))


def _find_layers(model: nn.Module, path: str | None) -> nn.ModuleList:
    suffixes = (path,) if path else ("encoder.layer", "transformer.layer")
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and any(name == s or name.endswith("." + s) for s in suffixes):
            return module
    raise ValueError(f"cannot find the layers of {type(model).__name__} (looked for {', '.join(suffixes)})")


def _prepend(t: torch.Tensor, n: int, value: int) -> torch.Tensor:
    return torch.cat([torch.full_like(t[:, :1], value).expand(-1, n), t], dim=1)


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


def _width(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.out_features
    return int(module.nf)   # transformers' Conv1D (GPT-2)


class JrftClassifier(PreTrainedModel):
    """Backbone + head (mask / last / first / tokens linear head, or the family's CLS head), optional
    prompt vectors after the embeddings, optional bottleneck adapters."""

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
        self.prompt_rows = int(getattr(config, "jrft_prompt_rows", 0) or 0)
        self.prompt_inserted = int(getattr(config, "jrft_prompt_inserted", 0) or 0)
        self.prompt_insert = getattr(config, "jrft_prompt_insert", None) or "embeddings"
        if self.prompt_rows:
            self.jrft_prompt = nn.Parameter(torch.zeros(self.prompt_rows, config.hidden_size), requires_grad=False)
            if self.prompt_insert == "embeddings":
                embeddings = self._base().embeddings
                embeddings.register_forward_pre_hook(self._embedding_inputs, with_kwargs=True)
                embeddings.register_forward_hook(self._insert_placeholders)
            shifts = bool(getattr(config, "jrft_prompt_layer_shifts", False))
            for l, layer in enumerate(layers):
                if l == 0 or shifts:
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

    def _embedding_inputs(self, module: nn.Module, args: tuple, kwargs: dict):
        # an embedding module that reads the attention mask (DeBERTa-v2) gets it without the inserted rows
        ids = args[0] if args else kwargs.get("input_ids")
        mask = kwargs.get("mask")
        if ids is not None and mask is not None and mask.dim() == 2 and mask.size(1) == ids.size(1) + self.prompt_inserted:
            kwargs = {**kwargs, "mask": mask[:, self.prompt_inserted:]}
        return args, kwargs

    def _insert_placeholders(self, module: nn.Module, inputs: tuple, out: torch.Tensor) -> torch.Tensor:
        return torch.cat([out.new_zeros(out.size(0), self.prompt_inserted, out.size(-1)), out], dim=1)

    def _layer_hook(self, l: int):
        n = self.prompt_inserted

        def put(hidden: torch.Tensor) -> torch.Tensor:
            if l == 0:   # the placeholders become the prompt rows
                rows = self.jrft_prompt[:n].to(hidden.dtype).expand(hidden.size(0), -1, -1)
            else:        # JR-WARP: row l added to the (single) prompt position
                rows = hidden[:, :1] + self.jrft_prompt[l].to(hidden.dtype).expand(hidden.size(0), 1, -1)
            return torch.cat([rows, hidden[:, n:]], dim=1)

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
        if not self.prompt_rows:
            return kwargs
        n = self.prompt_inserted
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        kwargs["attention_mask"] = _prepend(mask, n, 1)   # the inserted positions are attended to
        if self.prompt_insert == "embeddings":
            return kwargs
        embeds = self._base().get_input_embeddings()(input_ids)
        batch, length = input_ids.shape
        positions = torch.arange(length, device=input_ids.device).expand(batch, length)
        kwargs.update(input_ids=None, inputs_embeds=torch.cat([embeds.new_zeros(batch, n, embeds.size(-1)), embeds], 1),
                      position_ids=_prepend(positions, n, 0))
        if "token_type_ids" in kwargs:
            kwargs["token_type_ids"] = _prepend(kwargs["token_type_ids"], n, 0)
        return kwargs

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                return_dict: bool | None = None, **_: object):
        kwargs = self._inputs(input_ids, attention_mask, token_type_ids)
        if self.head_kind == "cls":
            logits = self.hf(**kwargs).logits
            return SequenceClassifierOutput(loss=self._loss(logits, labels), logits=logits)
        hidden = self.backbone(**kwargs).last_hidden_state
        hidden = hidden[:, hidden.size(1) - input_ids.size(1):]   # the input's own positions
        if self.head_kind == "tokens":
            logits = self.head(hidden)
            return TokenClassifierOutput(loss=self._loss(logits, labels), logits=logits)
        rows = torch.arange(hidden.size(0), device=hidden.device)
        if self.head_kind == "first":
            pos = torch.zeros_like(rows)
        elif self.head_kind == "last":
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
        if self.head_kind == "tokens":   # -100 marks positions without a label (special tokens, sub-words)
            return nn.functional.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
        if self.config.num_labels == 1:
            return nn.functional.mse_loss(logits.squeeze(-1).float(), labels.float())
        return nn.functional.cross_entropy(logits.float(), labels)
