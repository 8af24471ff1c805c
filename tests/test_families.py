"""Model-family lookups: the transformer blocks and the module receiving each shift position."""
from __future__ import annotations

import pytest
import torch

from jrft_cli.core.errors import JrftError
from jrft_cli.core.families import POSITIONS, embeddings_of, find_layers, locate, out_features


def test_minilm_layers_and_positions(make_model):
    backbone = make_model().backbone
    layers = find_layers(backbone)
    assert len(layers) == 6
    widths = {p: out_features(locate(layers[0], p)) for p in POSITIONS}
    assert widths == {"output": 384, "intermediate": 1536, "attention": 384}
    assert locate(layers[2], "output") is layers[2].output.dense
    assert locate(layers[2], "attention") is layers[2].attention.output.LayerNorm
    assert embeddings_of(backbone) is backbone.embeddings


def test_distilbert_paths():
    from transformers import DistilBertConfig, DistilBertModel

    model = DistilBertModel(DistilBertConfig(n_layers=2, dim=32, hidden_dim=64, n_heads=2, vocab_size=100))
    layers = find_layers(model)
    assert len(layers) == 2
    assert locate(layers[0], "output") is layers[0].ffn.lin2
    assert locate(layers[0], "intermediate") is layers[0].ffn.lin1
    assert locate(layers[0], "attention") is layers[0].sa_layer_norm


def test_errors_are_one_line():
    with pytest.raises(JrftError, match="cannot find the transformer layers of Linear"):
        find_layers(torch.nn.Linear(2, 2))
    with pytest.raises(JrftError, match="position='ffn' is not valid; choose one of output, intermediate, attention"):
        locate(torch.nn.Linear(2, 2), "ffn")
    with pytest.raises(JrftError, match=r"cannot find the 'output' position in Linear"):
        locate(torch.nn.Linear(2, 2), "output")
    with pytest.raises(JrftError, match="has no `embeddings` module"):
        embeddings_of(torch.nn.Linear(2, 2))


# ---------------------------------------------------------------- the family table, on every supported family

class _Tok:
    """The token ids tiny_models' configs read (no tokenizer needed to build a config)."""
    pad_token_id, bos_token_id, eos_token_id, cls_token_id, sep_token_id = 0, 1, 2, 1, 2

    def __len__(self) -> int:
        return 64


# family -> (family name in the table, output / intermediate / attention module paths, LoRA targets)
EXPECTED = {
    "bert": ("bert", ("output.dense", "intermediate.dense", "attention.output.LayerNorm"), ("query", "value")),
    "distilbert": ("distilbert", ("ffn.lin2", "ffn.lin1", "sa_layer_norm"), ("q_lin", "v_lin")),
    "electra": ("bert", ("output.dense", "intermediate.dense", "attention.output.LayerNorm"), ("query", "value")),
    "xlm-roberta": ("bert", ("output.dense", "intermediate.dense", "attention.output.LayerNorm"), ("query", "value")),
    "deberta-v2": ("deberta-v2", ("output.dense", "intermediate.dense", "attention.output.LayerNorm"),
                   ("query_proj", "value_proj")),
    "modernbert": ("modernbert", ("mlp.Wo", "mlp.Wi", "attn.Wo"), ("Wqkv",)),
    "gpt2": ("gpt2", ("mlp.c_proj", "mlp.c_fc", "attn.c_proj"), ("c_attn",)),
    "llama": ("llama", ("mlp.down_proj", "mlp.gate_proj", "self_attn.o_proj"), ("q_proj", "v_proj")),
    "qwen2": ("qwen2", ("mlp.down_proj", "mlp.gate_proj", "self_attn.o_proj"), ("q_proj", "v_proj")),
    "mistral": ("mistral", ("mlp.down_proj", "mlp.gate_proj", "self_attn.o_proj"), ("q_proj", "v_proj")),
    "gemma": ("gemma", ("mlp.down_proj", "mlp.gate_proj", "self_attn.o_proj"), ("q_proj", "v_proj")),
    "phi": ("phi", ("mlp.fc2", "mlp.fc1", "self_attn.dense"), ("q_proj", "v_proj")),
    "phi3": ("phi3", ("mlp.down_proj", "mlp.gate_up_proj", "self_attn.o_proj"), ("qkv_proj",)),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_family_finds_its_layers_positions_and_lora_targets(name):
    from transformers import AutoModel

    from jrft_cli.core.families import family_of, is_decoder, layers_path, locate_path, lora_targets
    from tiny_models import DECODERS, _config

    model = AutoModel.from_config(_config(name, _Tok()))
    family, paths, targets = EXPECTED[name]
    assert family_of(model).name == family and is_decoder(model) is (name in DECODERS)
    layers = find_layers(model)
    assert len(layers) == 2 and model.get_submodule(layers_path(model)) is layers
    for position, path in zip(POSITIONS, paths):
        assert locate_path(layers[1], position, family_of(model)) == path
        target = locate(layers[1], position, family_of(model))
        transposed = type(target).__name__ == "Conv1D"     # GPT-2 stores (in, out)
        assert out_features(target) == target.weight.shape[1 if transposed else 0]
    leaves = {n.split(".")[-1] for n, _ in model.named_modules()}
    assert lora_targets(model) == targets and set(targets) <= leaves


def test_bias_options_exist_where_declared():
    """Llama's mlp_bias / attention_bias and ModernBERT's are real config options; the others have none."""
    from transformers import AutoModel

    from jrft_cli.core.families import bias_option
    from tiny_models import _config

    llama = AutoModel.from_config(_config("llama", _Tok()))
    assert bias_option(llama, "output") == ("mlp_bias", ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"))
    assert bias_option(llama, "attention")[0] == "attention_bias"
    assert bias_option(AutoModel.from_config(_config("modernbert", _Tok())), "output")[0] == "mlp_bias"
    for name in ("mistral", "qwen2", "phi3"):
        assert bias_option(AutoModel.from_config(_config(name, _Tok())), "output") is None
