"""Model-family knowledge, in one table: where a backbone keeps its transformer blocks, which module
inside a block receives a jr shift at each position, LoRA's default targets, whether the family is a
decoder, and which config option adds a bias where the family has none.

Families differ only in module names and a few switches, so one `Family` entry per family covers
them; adding a family means adding one entry to FAMILIES (and nowhere else). A backbone whose
`config.model_type` is not in the table falls back to probing the BERT-style names (GENERIC).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from torch import nn

from jrft_cli.core.errors import JrftError

POSITIONS: tuple[str, ...] = ("output", "intermediate", "attention")


@dataclass(frozen=True, eq=False)
class Family:
    """One model family.

    layers:        path (suffix) of the nn.ModuleList holding the blocks inside the base model.
    positions:     shift position -> module paths inside one block, tried in order. `output`: the FFN's
                   output projection (adding the shift == adding to its bias); `intermediate`: the FFN's
                   input projection before the activation (gated FFNs: the gate); `attention`: the
                   attention block's output (post-LN encoders: its LayerNorm; pre-LN models: its output
                   projection).
    lora_targets:  LoRA's default target modules (the attention projections).
    decoder:       decoder-only (causal) model: the paper's mask head becomes the last-token head, and
                   JR-WARP inserts its prompt after the embeddings (`warp_insert`).
    bias_options:  position -> (config flag, modules inside a block it gives a bias): the option that
                   adds the bias a folded shift needs (Llama's `mlp_bias`). A position without bias and
                   without such an option exports with jrft's remote code, which adds the bias itself.
    batch_shared:  module paths (suffixes) whose parameters see the same input for every example of a
                   batch (GPT-2's position embeddings `wpe`, indexed by one (1, T) tensor): they have no
                   per-example gradient and are frozen under DP. BERT-style `position_embeddings` are
                   frozen for every family.
    no_opacus:     why opacus' per-example hooks cannot run on this family (private lora/bitfit/full are
                   refused with this reason; jr, jr_warp and linear need no opacus).
    warp_insert:   how JR-WARP and WARP insert their prompt positions after the embeddings:
                   `embeddings` prepends them to the embedding module's output (encoders); `embeds`
                   embeds the input ids itself, prepends them and passes the real tokens' position ids
                   (0..T-1), so a causal model's real tokens see the prompt and keep their positions.
    """
    name: str
    model_types: tuple[str, ...]
    layers: str
    positions: dict[str, tuple[str, ...]]
    lora_targets: tuple[str, ...]
    decoder: bool = False
    bias_options: dict[str, tuple[str, tuple[str, ...]]] = field(default_factory=dict)
    batch_shared: tuple[str, ...] = ()
    no_opacus: str | None = None
    warp_insert: Literal["embeddings", "embeds"] = "embeddings"


_BERT_POSITIONS = {"output": ("output.dense",), "intermediate": ("intermediate.dense",),
                   "attention": ("attention.output.LayerNorm",)}
_GATED_POSITIONS = {"output": ("mlp.down_proj",), "intermediate": ("mlp.gate_proj",),
                    "attention": ("self_attn.o_proj",)}
_QKVO = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
_GATED_MLP = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")

FAMILIES: tuple[Family, ...] = (
    # encoders
    Family("bert", ("bert", "roberta", "xlm-roberta", "electra", "camembert"), "encoder.layer",
           _BERT_POSITIONS, ("query", "value")),
    Family("distilbert", ("distilbert",), "transformer.layer",
           {"output": ("ffn.lin2",), "intermediate": ("ffn.lin1",), "attention": ("sa_layer_norm",)},
           ("q_lin", "v_lin")),
    Family("deberta-v2", ("deberta-v2",), "encoder.layer", _BERT_POSITIONS, ("query_proj", "value_proj"),
           no_opacus="its attention projections also run on the relative-position embeddings, one tensor "
                     "shared by the whole batch, which opacus' per-example hooks cannot split"),
    Family("modernbert", ("modernbert",), "layers",
           {"output": ("mlp.Wo",), "intermediate": ("mlp.Wi",), "attention": ("attn.Wo",)}, ("Wqkv",),
           bias_options={"output": ("mlp_bias", ("mlp.Wi", "mlp.Wo")),
                         "intermediate": ("mlp_bias", ("mlp.Wi", "mlp.Wo")),
                         "attention": ("attention_bias", ("attn.Wqkv", "attn.Wo"))},
           # rotary positions are computed from the input length before the embeddings: pass them explicitly
           warp_insert="embeds"),
    # decoders
    Family("gpt2", ("gpt2",), "h",
           {"output": ("mlp.c_proj",), "intermediate": ("mlp.c_fc",), "attention": ("attn.c_proj",)}, ("c_attn",),
           decoder=True, batch_shared=("wpe",), warp_insert="embeds"),
    Family("llama", ("llama",), "layers", _GATED_POSITIONS, ("q_proj", "v_proj"), decoder=True, warp_insert="embeds",
           bias_options={"output": ("mlp_bias", _GATED_MLP), "intermediate": ("mlp_bias", _GATED_MLP),
                         "attention": ("attention_bias", _QKVO)}),
    Family("mistral", ("mistral",), "layers", _GATED_POSITIONS, ("q_proj", "v_proj"), decoder=True,
           warp_insert="embeds"),
    Family("qwen2", ("qwen2",), "layers", _GATED_POSITIONS, ("q_proj", "v_proj"), decoder=True, warp_insert="embeds"),
    Family("gemma", ("gemma",), "layers", _GATED_POSITIONS, ("q_proj", "v_proj"), decoder=True, warp_insert="embeds",
           bias_options={"attention": ("attention_bias", _QKVO)}),
    Family("phi", ("phi",), "layers",
           {"output": ("mlp.fc2",), "intermediate": ("mlp.fc1",), "attention": ("self_attn.dense",)},
           ("q_proj", "v_proj"), decoder=True, warp_insert="embeds"),
    Family("phi3", ("phi3",), "layers",
           {"output": ("mlp.down_proj",), "intermediate": ("mlp.gate_up_proj",), "attention": ("self_attn.o_proj",)},
           ("qkv_proj",), decoder=True, warp_insert="embeds"),
)

# Unknown model types: BERT/RoBERTa-style names first, DistilBERT's second (the pre-table behaviour).
GENERIC = Family("generic", (), "encoder.layer",
                 {p: _BERT_POSITIONS[p] + FAMILIES[1].positions[p] for p in POSITIONS}, ("query", "value"))
_GENERIC_LAYER_LISTS: tuple[str, ...] = ("encoder.layer", "transformer.layer")

_BY_TYPE: dict[str, Family] = {t: f for f in FAMILIES for t in f.model_types}


def supported_model_types() -> tuple[str, ...]:
    """Every `config.model_type` with an entry in the table."""
    return tuple(_BY_TYPE)


def _config_of(obj: Any) -> Any:
    return getattr(obj, "config", obj)


def family_of(obj: Any) -> Family:
    """The family of a model, a classifier wrapping one, or a transformers config (GENERIC when its
    model_type has no entry)."""
    model_type = getattr(_config_of(obj), "model_type", None)
    return _BY_TYPE.get(model_type, GENERIC)


def describe(obj: Any) -> str:
    """`llama (LlamaModel)`: the family and class, for error messages."""
    config = _config_of(obj)
    model_type = getattr(config, "model_type", None)
    return f"{model_type or 'unknown model type'} ({type(obj).__name__})"


def is_decoder(obj: Any) -> bool:
    """True for decoder-only (causal) families."""
    return family_of(obj).decoder


# Where a Houlsby adapter sits in one block: on the output of the sublayer's last module before the
# residual + LayerNorm (BERT/RoBERTa: the dropout after the attention-output / FFN-output projection;
# DistilBERT: the attention's output projection, the FFN's dropout).
ADAPTER_PATHS: dict[str, tuple[str, ...]] = {
    "attention": ("attention.output.dropout", "attention.out_lin"),
    "output": ("output.dropout", "ffn.dropout"),
}


def find_layers(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks, found by the family's path wherever the backbone sits in a wrapper."""
    family = family_of(model)
    suffixes = (family.layers,) if family is not GENERIC else _GENERIC_LAYER_LISTS
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and any(name == s or name.endswith("." + s) for s in suffixes):
            return module
    known = ", ".join(f.name for f in FAMILIES)
    raise JrftError(f"cannot find the transformer layers of {type(model).__name__}; supported: modules named "
                    f"{' or '.join(suffixes)} (BERT/RoBERTa/DistilBERT-style encoders) or a model_type of the "
                    f"families {known}")


def layers_path(model: nn.Module) -> str:
    """The module path of the block list inside `model` (for exports that re-find the blocks)."""
    layers = find_layers(model)
    return next(name for name, module in model.named_modules() if module is layers)


def position_paths(family: Family, position: str) -> tuple[str, ...]:
    """Module paths inside one block for `position` (one-line error for an unknown position)."""
    if position not in POSITIONS:
        raise JrftError(f"position={position!r} is not valid; choose one of {', '.join(POSITIONS)}")
    return family.positions[position]


def locate(layer: nn.Module, position: str, family: Family | None = None) -> nn.Module:
    """The module inside `layer` whose output receives the shift at `position`."""
    paths = position_paths(family or GENERIC, position)
    for path in paths:
        try:
            return layer.get_submodule(path)
        except AttributeError:
            continue
    raise JrftError(f"cannot find the {position!r} position in {type(layer).__name__}; "
                    f"looked for {', '.join(paths)}")


def locate_path(layer: nn.Module, position: str, family: Family | None = None) -> str:
    """The path (inside one block) of the module `locate` returns."""
    target = locate(layer, position, family)
    return next(name for name, module in layer.named_modules() if module is target)


def locate_adapter(layer: nn.Module, position: str) -> nn.Module:
    """The module inside `layer` whose output passes through a Houlsby adapter at `position`
    (`attention` or `output`, see ADAPTER_PATHS)."""
    for path in ADAPTER_PATHS[position]:
        try:
            return layer.get_submodule(path)
        except AttributeError:
            continue
    raise JrftError(f"cannot find where the {position!r} adapter goes in {type(layer).__name__}; "
                     f"looked for {', '.join(ADAPTER_PATHS[position])}")


def out_features(module: nn.Module) -> int:
    """Width of a module's output (the shift size at that position)."""
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, nn.LayerNorm):
        return int(module.normalized_shape[0])
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf"):   # GPT-2's transposed linear layer
        return int(module.nf)
    raise JrftError(f"cannot shift the output of {type(module).__name__}")


def lora_targets(model: nn.Module) -> tuple[str, ...]:
    """LoRA's default target modules for the model's family (its attention projections)."""
    return family_of(model).lora_targets


def bias_option(model: nn.Module, position: str) -> tuple[str, tuple[str, ...]] | None:
    """(config flag, modules inside a block it gives a bias) that adds a bias at `position`, when the
    family's config has such an option; None otherwise."""
    family = family_of(model)
    option = family.bias_options.get(position)
    if option is None or not hasattr(_config_of(model), option[0]):
        return None
    return option


def batch_shared_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of the modules whose parameters get one input shared by the whole batch (no
    per-example gradient): every `*position_embeddings` embedding, and the family's `batch_shared`."""
    shared = family_of(model).batch_shared
    return [(name, module) for name, module in model.named_modules()
            if (isinstance(module, nn.Embedding) and name.endswith("position_embeddings"))
            or any(name == s or name.endswith("." + s) for s in shared)]


def embeddings_of(backbone: nn.Module) -> nn.Module:
    """The backbone's embedding module (token + position embeddings, before the first block)."""
    embeddings = getattr(backbone, "embeddings", None)
    if embeddings is None:
        raise JrftError(f"{type(backbone).__name__} has no `embeddings` module")
    return embeddings
