"""Shared by the DP tests (test_samplers.py, test_private_loop.py): a tiny random RoBERTa, padded
batches and tiny datasets over its vocabulary, and models with a method applied."""
from __future__ import annotations

import pytest
import torch

from jrft_cli.core.backbone import SequenceClassifier
from jrft_cli.core.registry import apply_method
from jrft_cli.tasks.evaluation import TaskInfo

MASK, PAD = 4, 1          # token ids used with the tiny RoBERTa (random weights, no tokenizer)
TASK = TaskInfo(False, ["accuracy"], "accuracy")


@pytest.fixture(scope="module")
def tiny_roberta(tmp_path_factory) -> str:
    from transformers import RobertaConfig, RobertaModel
    torch.manual_seed(0)
    cfg = RobertaConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=48, max_position_embeddings=40, pad_token_id=PAD,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    path = tmp_path_factory.mktemp("tiny-roberta")
    RobertaModel(cfg, add_pooling_layer=False).save_pretrained(path)
    return str(path)


def roberta_batch():
    g = torch.Generator().manual_seed(1)
    rows = []
    for length in (9, 4, 6):                        # different lengths: padding inside the batch
        ids = torch.randint(5, 60, (length,), generator=g)
        ids[0], ids[length // 2] = 0, MASK          # <s> ... <mask> ...
        rows.append(ids)
    width = max(len(r) for r in rows)
    ids = torch.full((3, width), PAD)
    att = torch.zeros(3, width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)], att[i, :len(r)] = r, 1
    singles = [{"input_ids": r[None], "attention_mask": torch.ones(1, len(r), dtype=torch.long)} for r in rows]
    return {"input_ids": ids, "attention_mask": att}, singles, torch.tensor([1, 0, 1])


def build(path: str, mask_id: int, method: str, **opts) -> SequenceClassifier:
    torch.manual_seed(0)
    model = SequenceClassifier(path, 2, head=opts.pop("head", "mask"), dropout=0.0, mask_token_id=mask_id)
    apply_method(model, method, **opts)
    return model.train()


def tiny_data(n: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        length = int(torch.randint(3, 9, (1,), generator=g))
        ids = torch.randint(5, 60, (length,), generator=g).tolist()
        ids[0], ids[-1] = 0, MASK
        out.append({"input_ids": ids, "attention_mask": [1] * length, "labels": i % 2})
    return out


def collate(items):
    width = max(len(it["input_ids"]) for it in items)
    return {"input_ids": torch.tensor([it["input_ids"] + [PAD] * (width - len(it["input_ids"])) for it in items]),
            "attention_mask": torch.tensor([it["attention_mask"] + [0] * (width - len(it["input_ids"])) for it in items]),
            "labels": torch.tensor([it["labels"] for it in items])}
