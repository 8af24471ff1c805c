"""Model-family lookups: where a backbone keeps its transformer blocks and, inside one block, the
module whose output receives a jr shift at each position.

Families differ only in module names, so one table per concern covers them; adding a family means
adding its paths here (and nowhere else). Lookups try each known path in order.
"""
from __future__ import annotations

from torch import nn

from jrft_cli.core.errors import JrftError

# Suffixes of the nn.ModuleList holding the blocks (BERT, RoBERTa, ELECTRA, XLM-R: `encoder.layer`;
# DistilBERT: `transformer.layer`).
LAYER_LISTS: tuple[str, ...] = ("encoder.layer", "transformer.layer")

POSITIONS: tuple[str, ...] = ("output", "intermediate", "attention")

# Where each shift position lives, as module paths inside one block (BERT/RoBERTa first, DistilBERT second).
#   output:       the FFN output projection (shift == adding to its bias, before the residual + LayerNorm)
#   intermediate: the FFN input projection (shift == adding to its bias, before the activation)
#   attention:    the attention block's output LayerNorm (shift == adding to that LayerNorm's bias)
POSITION_PATHS: dict[str, tuple[str, ...]] = {
    "output": ("output.dense", "ffn.lin2"),
    "intermediate": ("intermediate.dense", "ffn.lin1"),
    "attention": ("attention.output.LayerNorm", "sa_layer_norm"),
}


# Where a Houlsby adapter sits in one block: on the output of the sublayer's last module before the
# residual + LayerNorm (BERT/RoBERTa: the dropout after the attention-output / FFN-output projection;
# DistilBERT: the attention's output projection, the FFN's dropout).
ADAPTER_PATHS: dict[str, tuple[str, ...]] = {
    "attention": ("attention.output.dropout", "attention.out_lin"),
    "output": ("output.dropout", "ffn.dropout"),
}


def find_layers(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks, found by name wherever the backbone sits in a wrapper."""
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and any(name.endswith(s) for s in LAYER_LISTS):
            return module
    raise JrftError(f"cannot find the transformer layers of {type(model).__name__}; supported: modules named "
                     f"{' or '.join(LAYER_LISTS)} (BERT/RoBERTa/DistilBERT-style encoders)")


def locate(layer: nn.Module, position: str) -> nn.Module:
    """The module inside `layer` whose output receives the shift at `position`."""
    if position not in POSITIONS:
        raise JrftError(f"position={position!r} is not valid; choose one of {', '.join(POSITIONS)}")
    for path in POSITION_PATHS[position]:
        try:
            return layer.get_submodule(path)
        except AttributeError:
            continue
    raise JrftError(f"cannot find the {position!r} position in {type(layer).__name__}; "
                     f"looked for {', '.join(POSITION_PATHS[position])}")


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
    raise JrftError(f"cannot shift the output of {type(module).__name__}")


def embeddings_of(backbone: nn.Module) -> nn.Module:
    """The backbone's embedding module (token + position embeddings, before the first block)."""
    embeddings = getattr(backbone, "embeddings", None)
    if embeddings is None:
        raise JrftError(f"{type(backbone).__name__} has no `embeddings` module")
    return embeddings
