"""jrft learns a token task from real text: SST-2 sentences (../shared/glue) tagged by a fixed rule and
written as CoNLL files; jr on MiniLM for a few hundred steps must beat the majority-tag baseline clearly.

The rule (a chunk-like tagging that needs each word's left context, not only its identity): a word from
the fixed determiner list DETERMINERS, followed by an alphabetic word that is not itself a determiner,
starts an `NP` span of those two words (`B-NP I-NP`); every other word is `O`. The majority tag is `O`
(about 79% of the words), so predicting the majority tag everywhere scores entity F1 0.
Measured (300 steps, seed 0): entity F1 0.723 under hardware.precision=auto (bf16 on this CPU), 0.724 in fp32.
"""
from __future__ import annotations

import io
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from rich.console import Console

from jrft_cli.cli.config import compose
from jrft_cli.tasks.glue import read_tsv
from jrft_cli.training import recipe

from ner_helpers import write_conll

pytestmark = pytest.mark.slow

DETERMINERS = {"the", "a", "an", "this", "that", "these", "those", "its", "his", "her", "their", "my", "our", "your"}


def tag(words: list[str]) -> list[str]:
    """The fixed rule of the module docstring."""
    tags = ["O"] * len(words)
    i = 0
    while i < len(words) - 1:
        nxt = words[i + 1]
        if words[i] in DETERMINERS and nxt.isalpha() and nxt not in DETERMINERS:
            tags[i], tags[i + 1] = "B-NP", "I-NP"
            i += 2
        else:
            i += 1
    return tags


def sentences(path: Path, n: int) -> list[list[tuple[str, str]]]:
    rows = read_tsv(path)[1:n + 1]                    # SST-2: sentence<TAB>label, already tokenized, lowercased
    out = []
    for row in rows:
        words = row[0].split()
        if words:
            out.append(list(zip(words, tag(words))))
    return out


def test_the_rule():
    assert tag("the film is a bold , the the end".split()) == \
        ["B-NP", "I-NP", "O", "B-NP", "I-NP", "O", "O", "B-NP", "I-NP"]


def test_jr_learns_the_derived_tagging_task(glue_dir, tmp_path):
    train = sentences(glue_dir / "SST-2" / "train.tsv", 3000)
    dev = sentences(glue_dir / "SST-2" / "dev.tsv", 400)
    data = tmp_path / "data"
    write_conll(data / "CoNLL-2003" / "train.txt", train)
    write_conll(data / "CoNLL-2003" / "valid.txt", dev)
    gold = [t for s in dev for _, t in s]
    majority_accuracy = gold.count("O") / len(gold)
    assert 0.6 < majority_accuracy < 0.9 and sum(t == "B-NP" for t in gold) > 300

    # the task's own tag set has no NP: a task config with the rule's tags
    cfg = OmegaConf.to_container(compose(
        ["logger=none", "hardware=cpu", "hardware.num_threads=1", "hardware.precision=auto", "task=conll2003",
         "method=jr", "d=1024", f"data.dir={data}", "data.max_length=64", "train.max_steps=300", "train.batch_size=16", "train.eval_every=0",
         "task.labels=[O,B-NP,I-NP]", "task.label_names=[O,B-NP,I-NP]"]), resolve=True)
    results = recipe.run(cfg, tmp_path / "run", console=Console(file=io.StringIO()))
    dev_metrics = results["dev"]
    print(f"dev {dev_metrics}; majority tag: accuracy {majority_accuracy:.4f}, entity F1 0")
    # majority baseline: F1 0 (no entity predicted), accuracy = the share of O
    assert dev_metrics["f1"] > 0.6, dev_metrics
    assert dev_metrics["accuracy"] > majority_accuracy + 0.05, (dev_metrics, majority_accuracy)
