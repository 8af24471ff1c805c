"""tasks.conll: reading CoNLL files (hand-made), word-level encoding (first sub-token labelled), collation."""
from __future__ import annotations

import pytest
import torch

from jrft_cli.core.errors import JrftError
from jrft_cli.tasks.conll import IGNORE, Sentence, encode, load_split, make_collate, read_conll

from ner_helpers import SENTENCES, conll_dir, write_conll

LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]


def test_read_conll_skips_docstart_and_splits_sentences(tmp_path, task_cfg):
    path = write_conll(tmp_path / "t.txt", SENTENCES[:2])
    (tmp_path / "u.txt").write_text(path.read_text() + "-DOCSTART- -X- -X- O\n\nRome NNP B-NP B-LOC\n")  # no final blank
    got = read_conll(tmp_path / "u.txt", LABELS)
    assert [s.words for s in got] == [tuple(w for w, _ in s) for s in SENTENCES[:2]] + [("Rome",)]
    assert got[0].tags == (1, 2, 0, 5, 0, 0)          # B-PER I-PER O B-LOC O O
    assert got[2].tags == (5,)
    assert task_cfg("conll2003")["labels"] == LABELS


def test_bad_files_are_one_line_errors(tmp_path, task_cfg):
    (tmp_path / "bad.txt").write_text("John NNP B-NP B-PER\nSmith NNP B-NP B-PERSON\n")
    with pytest.raises(JrftError, match=r"tag 'B-PERSON' in .*bad.txt line 2 is not one of O, B-PER") as e:
        read_conll(tmp_path / "bad.txt", LABELS)
    assert "\n" not in str(e.value)
    (tmp_path / "one.txt").write_text("John\n")
    with pytest.raises(JrftError, match=r"line 1 has 1 column; expected a word and its tag"):
        read_conll(tmp_path / "one.txt", LABELS)
    task = task_cfg("conll2003")
    with pytest.raises(JrftError, match=r"CoNLL-2003/train.txt not found in data.dir .*data.dir=null to load "
                                        r"eriktks/conll2003"):
        load_split(task, "train", str(tmp_path))
    with pytest.raises(JrftError, match=r"data.dir '/nonexistent' does not exist"):
        load_split(task, "train", "/nonexistent")
    with pytest.raises(JrftError, match=r"unknown split 'validation'; choose train or dev, test"):
        load_split(task, "validation", str(tmp_path))


def test_splits_and_limits(tmp_path, task_cfg):
    root = conll_dir(tmp_path, repeat=2)
    task = task_cfg("conll2003")
    assert len(load_split(task, "train", str(root))) == 2 * len(SENTENCES)
    assert len(load_split(task, "train", str(root), limit=3)) == 3
    assert len(load_split(task, "dev", str(root))) == 4
    assert len(load_split(task, "test", str(root))) == len(SENTENCES) - 2


def test_first_sub_token_of_each_word_carries_its_tag(tokenizer):
    sentence = Sentence(("Reuters", "Commission", "unbelievably", "3.5"), (3, 7, 0, 0))
    (item,) = encode([sentence], tokenizer, max_length=64)
    pieces = [tokenizer(" " + w, add_special_tokens=False)["input_ids"] for w in sentence.words]
    assert any(len(p) > 1 for p in pieces)            # some word splits into sub-tokens
    body = [i for p in pieces for i in p]
    assert item["input_ids"] == [tokenizer.cls_token_id] + body + [tokenizer.sep_token_id]
    want = [IGNORE]
    for p, tag in zip(pieces, sentence.tags):
        want += [tag] + [IGNORE] * (len(p) - 1)
    assert item["labels"] == want + [IGNORE]
    assert item["attention_mask"] == [1] * len(body + [0, 0]) and item["token_type_ids"] == [0] * (len(body) + 2)
    # the same ids as the tokenizer's own pre-split encoding (BERT-style: the leading space changes nothing)
    assert item["input_ids"] == tokenizer(list(sentence.words), is_split_into_words=True)["input_ids"]
    assert item["dropped_words"] == 0


def test_words_beyond_max_length_are_dropped_whole_and_counted(tokenizer):
    sentence = Sentence(("a", "b", "unbelievably", "c"), (0, 1, 2, 0))
    (item,) = encode([sentence], tokenizer, max_length=5)     # [CLS] a b [SEP] + 3 room: 'unbelievably' does not fit
    assert len(item["input_ids"]) <= 5
    assert [t for t in item["labels"] if t != IGNORE] == [0, 1]
    assert item["dropped_words"] == 2


def test_bpe_words_are_encoded_as_in_running_text(tmp_path):
    """RoBERTa-style byte-level BPE: each word gets a leading space, as inside a sentence (the pre-split
    encoding without add_prefix_space would split 'cat' differently)."""
    from transformers import AutoTokenizer

    from conftest import tiny_roberta

    tok = AutoTokenizer.from_pretrained(str(tiny_roberta(tmp_path / "tiny-roberta")))
    (item,) = encode([Sentence(("The", "cat", "sat"), (0, 0, 0))], tok, max_length=32)
    running = tok(" The cat sat")["input_ids"]
    assert item["input_ids"] == running
    assert item["input_ids"][0] == tok.bos_token_id and item["input_ids"][-1] == tok.eos_token_id
    assert "token_type_ids" not in item


def test_collate_pads_labels_with_ignore(tokenizer):
    items = encode([Sentence(("John", "Smith"), (1, 2)), Sentence(("Rome",), (5,))], tokenizer, max_length=32)
    batch = make_collate(tokenizer)(items)
    assert batch["labels"].dtype == torch.long and batch["labels"].shape == batch["input_ids"].shape
    width = batch["input_ids"].size(1)
    assert batch["labels"][1].tolist() == items[1]["labels"] + [IGNORE] * (width - len(items[1]["labels"]))
    assert batch["input_ids"][1, len(items[1]["input_ids"]):].eq(tokenizer.pad_token_id).all()
