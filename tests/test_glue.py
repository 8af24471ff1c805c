"""GLUE loading (TSV root and the Hub path's offline failure), the mask-token input format, padding."""
from __future__ import annotations

from collections import Counter

import pytest
import torch

from jrft_cli.tasks.glue import Example, encode, load_split, make_collate, read_tsv
from jrft_cli.core.errors import JrftError

# Row counts of the classic glue_data/ TSVs, as the README of the shared GLUE copy lists them (data rows, header
# excluded): (train, dev); None = not shipped.
ROWS = {
    "cola": (8_551, 1_043),
    "sst2": (67_349, 872),
    "mrpc": (3_668, 408),
    "stsb": (5_749, 1_500),
    "rte": (2_490, 277),
    "wnli": (635, 71),
    "qnli": (None, 5_463),
}


@pytest.mark.parametrize("task", sorted(ROWS))
def test_every_local_task_parses_with_the_readme_row_counts(task, glue_dir, task_cfg):
    cfg = task_cfg(task)
    n_train, n_dev = ROWS[task]
    dev = load_split(cfg, "dev", str(glue_dir))
    assert len(dev) == n_dev
    n_texts = len(cfg["tsv"]["text_fields"])
    assert all(len(ex.texts) == n_texts and all(isinstance(t, str) for t in ex.texts) for ex in dev)
    assert all(ex.texts[0].strip() for ex in dev)   # no empty first sentence: the columns are right
    if cfg["is_regression"]:
        assert all(isinstance(ex.label, float) and 0.0 <= ex.label <= 5.0 for ex in dev)
    else:
        assert {ex.label for ex in dev} == set(range(len(cfg["labels"])))
    if n_train is None:
        with pytest.raises(JrftError, match=r"QNLI/train\.tsv not found") as err:
            load_split(cfg, "train", str(glue_dir))
        assert "\n" not in str(err.value)
    else:
        assert len(load_split(cfg, "train", str(glue_dir))) == n_train


def test_label_counts_of_some_dev_sets(glue_dir, task_cfg):
    """Known class balances of GLUE dev sets (label index = position in the task's `labels`)."""
    def counts(task):
        return dict(Counter(ex.label for ex in load_split(task_cfg(task), "dev", str(glue_dir))))
    assert counts("sst2") == {0: 428, 1: 444}
    assert counts("cola") == {0: 322, 1: 721}
    assert counts("mrpc") == {0: 129, 1: 279}
    assert counts("rte") == {0: 146, 1: 131}     # entailment, not_entailment


def test_first_rows_and_stsb_scores(glue_dir, task_cfg):
    mrpc = load_split(task_cfg("mrpc"), "dev", str(glue_dir), limit=1)[0]   # the file starts with a BOM
    assert mrpc.label == 1 and mrpc.texts[0].startswith("He said the foodservice pie business")
    stsb = load_split(task_cfg("stsb"), "dev", str(glue_dir), limit=2)
    assert stsb[0] == Example(("A man with a hard hat is dancing.", "A man wearing a hard hat is dancing."), 5.0)
    assert len(stsb) == 2
    cola = load_split(task_cfg("cola"), "train", str(glue_dir), limit=3)   # headerless file, columns by index
    assert len(cola) == 3 and all(ex.label in (0, 1) for ex in cola)
    assert len(read_tsv(glue_dir / "RTE" / "dev.tsv")) == 277 + 1


def test_missing_data_dir_and_unknown_split_are_one_line_errors(task_cfg, tmp_path):
    with pytest.raises(JrftError, match=r"data\.dir '/nonexistent' does not exist") as err:
        load_split(task_cfg("sst2"), "train", "/nonexistent")
    assert "\n" not in str(err.value)
    with pytest.raises(JrftError, match=r"SST-2/dev\.tsv not found") as err:
        load_split(task_cfg("sst2"), "dev", str(tmp_path))    # an existing dir without the task
    assert "\n" not in str(err.value)
    with pytest.raises(JrftError, match=r"unknown split 'test'; choose train or dev"):
        load_split(task_cfg("sst2"), "test", str(tmp_path))


def test_bad_label_value_names_row_and_choices(task_cfg, tmp_path):
    (tmp_path / "SST-2").mkdir()
    (tmp_path / "SST-2" / "dev.tsv").write_text("sentence\tlabel\ngood\t1\nbad\t7\n")
    with pytest.raises(JrftError, match=r"label '7' .*row 2 is not one of \['0', '1'\]"):
        load_split(task_cfg("sst2"), "dev", str(tmp_path))


def test_hub_path_offline_is_one_line_error(task_cfg, tmp_path, monkeypatch):
    """Without data.dir the Hub is tried; offline (and with an empty cache) that fails fast, in one line."""
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))
    import datasets.config
    # datasets reads these at import time; another test may have imported it already
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf" / "datasets", raising=False)
    with pytest.raises(JrftError) as err:
        load_split(task_cfg("rte"), "dev", None)
    msg = str(err.value)
    assert "\n" not in msg
    assert "nyu-mll/glue:rte split validation from the Hugging Face Hub failed" in msg
    assert "set data.dir=/path/to/glue_data" in msg


# ---------------------------------------------------------------------------------------------
# input format


def tokens(tokenizer, item):
    return tokenizer.convert_ids_to_tokens(item["input_ids"])


def test_mask_format_single_and_pair(tokenizer):
    single = encode([Example(("a fine movie",), 1)], tokenizer, mask_format=True, max_length=32)[0]
    assert tokens(tokenizer, single) == ["[CLS]", "a", "fine", "movie", "[MASK]", "[SEP]"]
    assert single["labels"] == 1 and single["attention_mask"] == [1] * 6
    pair = encode([Example(("a fine movie", "it was good"), 0)], tokenizer, mask_format=True, max_length=32)[0]
    assert tokens(tokenizer, pair) == ["[CLS]", "a", "fine", "movie", "[MASK]", "[SEP]", "it", "was", "good", "[SEP]"]
    assert pair["token_type_ids"] == [0] * 6 + [1] * 4
    plain = encode([Example(("a fine movie",), 1)], tokenizer, mask_format=False, max_length=32)[0]
    assert tokens(tokenizer, plain) == ["[CLS]", "a", "fine", "movie", "[SEP]"]


@pytest.mark.parametrize("texts", [
    ("word " * 50,),
    ("word " * 50, "short one"),
    ("short one", "word " * 50),
    ("word " * 50, "word " * 50),
])
@pytest.mark.parametrize("max_length", [6, 10, 17])
def test_truncation_never_removes_the_mask(tokenizer, texts, max_length):
    item = encode([Example(texts, 0)], tokenizer, mask_format=True, max_length=max_length)[0]
    ids = item["input_ids"]
    assert len(ids) == max_length
    assert ids.count(tokenizer.mask_token_id) == 1
    # the mask ends the first segment: right before the first [SEP]
    assert ids.index(tokenizer.mask_token_id) == ids.index(tokenizer.sep_token_id) - 1
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id


def test_mask_format_needs_a_mask_token(tokenizer, monkeypatch):
    class NoMask:
        mask_token = None
        name_or_path = "no-mask-model"
    with pytest.raises(JrftError, match=r"'no-mask-model' has no mask token; use method.head=cls"):
        encode([Example(("x",), 0)], NoMask(), mask_format=True, max_length=8)


def test_dynamic_padding(tokenizer):
    items = encode([Example(("short",), 0), Example(("a somewhat longer sentence here", "and a pair"), 1)],
                   tokenizer, mask_format=True, max_length=64)
    short, long_ = (len(it["input_ids"]) for it in items)
    batch = make_collate(tokenizer, is_regression=False)(items)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == batch["token_type_ids"].shape == (2, long_)
    assert batch["input_ids"][0, short:].eq(tokenizer.pad_token_id).all()
    assert batch["attention_mask"][0].tolist() == [1] * short + [0] * (long_ - short)
    assert batch["attention_mask"][1].eq(1).all()
    assert batch["input_ids"][1].tolist() == items[1]["input_ids"]
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == [0, 1]
    # a batch of only short items is padded only to its own longest
    assert make_collate(tokenizer, False)(items[:1])["input_ids"].shape == (1, short)
    reg = make_collate(tokenizer, is_regression=True)([{**items[0], "labels": 3.2}])
    assert reg["labels"].dtype == torch.float32 and reg["labels"].tolist() == [pytest.approx(3.2)]
