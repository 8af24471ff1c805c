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
