"""The batches every row of a round steps on.

Two kinds: a fixed synthetic batch (`synthetic_batch`: B sequences of exactly T tokens, the same
batch every round), or rows of a real dataset with Poisson logical batches (every example joins with
probability q = B/N, as DP-SGD samples), one draw per round shared by every row of that round.
A logical batch is sorted by length (as PrivateTrainer.private_step orders it, to cut padding) and
split into micro-batches.

Training rows may also step on batches in the order the ordinary (non-private) loop draws them
(`ORDERINGS`): `random`, its epoch order cut into batches (training.loop.epoch_order), or `grouped`,
batches of similar lengths (training.loop.grouped_batches, `train.group_by_length`). Round r takes epoch
r's batch list and picks `window` batches at evenly spaced quantiles of their widths (longest input), so
every round's window stands for the whole epoch's padding, as a few consecutive batches would not.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

__all__ = ["synthetic_batch", "Workload", "ORDERINGS", "ordered_window"]

ORDERINGS = ("random", "grouped")


def ordered_window(lengths: list[int], batch_size: int, ordering: str, seed: int, epoch: int,
                   window: int) -> list[list[int]]:
    """`window` full batches (example indices) of epoch `epoch` in `ordering` (see the module docstring),
    taken at evenly spaced quantiles of the epoch's batch widths, narrowest first."""
    batches = _epoch(lengths, batch_size, ordering, seed, epoch)
    full = [b for b in batches if len(b) == batch_size] or batches   # the same examples in every window
    by_width = sorted(full, key=lambda b: max(lengths[i] for i in b))
    return [by_width[int((k + 0.5) * len(by_width) / window)] for k in range(window)]


def synthetic_batch(tokenizer: Any, batch_size: int, seq_len: int, num_labels: int = 2, seed: int = 0) -> list[dict]:
    """`batch_size` items of exactly `seq_len` tokens in the mask-head format: [CLS] random... [MASK] [SEP]."""
    if seq_len < 4:
        raise ValueError(f"seq_len={seq_len} is too short; it must be >= 4")
    g = torch.Generator().manual_seed(seed)
    specials = set(tokenizer.all_special_ids)
    low = 1000 if tokenizer.vocab_size > 2000 else max(specials) + 1
    first = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    last = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    with_types = "token_type_ids" in getattr(tokenizer, "model_input_names", ())
    items = []
    for _ in range(batch_size):
        body = torch.randint(low, tokenizer.vocab_size, (seq_len - 3,), generator=g).tolist()
        ids = [first] + body + [tokenizer.mask_token_id, last]
        item = {"input_ids": ids, "attention_mask": [1] * seq_len,
                "labels": int(torch.randint(0, num_labels, (1,), generator=g))}
        if with_types:
            item["token_type_ids"] = [0] * seq_len
        items.append(item)
    return items


class Workload:
    """The data rows step on, and the current round's logical batch.

    `poisson=False`: every round is the whole of `data` (a fixed batch). `poisson=True`: round r draws
    a Poisson batch of expected size `batch_size` from `data` (seeded by `seed` and r; an empty draw is
    drawn again). After `draw(r)`: `indices` (sorted by length), `items` and `micro` (the micro-batches
    of at most `micro_batch_size` items), and for every ordering of `orderings`, `windows[ordering]`:
    `window` batches of `batch_size` items as the ordinary loop orders them (`ordered_window`)."""

    def __init__(self, data: list[dict], collate: Callable, batch_size: int, micro_batch_size: int,
                 poisson: bool, seed: int = 0, orderings: tuple[str, ...] = (), window: int = 4) -> None:
        if not data:
            raise ValueError("no data to benchmark on")
        if window < 1:
            raise ValueError(f"window={window} is not valid; it must be >= 1")
        self.data, self.collate, self.poisson, self.seed = data, collate, poisson, seed
        self.orderings, self.window, self.loop_batch_size = tuple(orderings), window, batch_size
        self.windows: dict[str, list[list[dict]]] = {}
        self.batch_size = batch_size if poisson else len(data)
        self.micro_batch_size = min(micro_batch_size, self.batch_size)
        self.sample_rate = min(1.0, self.batch_size / len(data)) if poisson else 1.0
        self.lengths = torch.tensor([len(ex["input_ids"]) for ex in data])
        self.indices = torch.arange(len(data))
        self.items: list[dict] = list(data)
        self.micro: list[list[dict]] = []
        self.draw(0)

    def draw(self, r: int) -> None:
        """Make round r's logical batch current."""
        if self.poisson:
            from jrft_cli.dp.mechanism import poisson_sample

            g = torch.Generator().manual_seed(self.seed * 1_000_003 + r)
            idx = poisson_sample(len(self.data), self.sample_rate, g)
            while idx.numel() == 0:
                idx = poisson_sample(len(self.data), self.sample_rate, g)
        else:
            idx = torch.arange(len(self.data))
        self.indices = idx[torch.argsort(self.lengths[idx], stable=True)]
        self.items = [self.data[i] for i in self.indices.tolist()]
        m = self.micro_batch_size
        self.micro = [self.items[i:i + m] for i in range(0, len(self.items), m)]
        lengths = self.lengths.tolist()
        self.windows = {o: [[self.data[i] for i in b] for b in ordered_window(
            lengths, self.loop_batch_size, o, self.seed, r, self.window)] for o in self.orderings}

    def describe(self) -> dict[str, Any]:
        """The workload's settings for the report."""
        lengths = self.lengths.float()
        out = {"kind": "poisson" if self.poisson else "fixed", "examples": len(self.data),
               "batch_size": self.batch_size, "micro_batch_size": self.micro_batch_size,
               "sample_rate": self.sample_rate, "mean_tokens": float(lengths.mean()),
               "max_tokens": int(lengths.max())}
        if self.orderings:
            out["orderings"] = {"orderings": list(self.orderings), "batch_size": self.loop_batch_size,
                                "batches_per_round": self.window,
                                "padded_share": {o: padded_share(self.lengths.tolist(), self.loop_batch_size, o,
                                                                 self.seed) for o in self.orderings}}
        return out


def padded_share(lengths: list[int], batch_size: int, ordering: str, seed: int, epoch: int = 0) -> float:
    """The share of padding among the tokens of one epoch of `ordering`'s batches (each padded to its
    longest input)."""
    real = sum(lengths)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in _epoch(lengths, batch_size, ordering, seed, epoch))
    return 1 - real / padded


def _epoch(lengths: list[int], batch_size: int, ordering: str, seed: int, epoch: int) -> list[list[int]]:
    """Epoch `epoch`'s batches in `ordering`, as training.loop's ordinary loop draws them."""
    from jrft_cli.training.loop import epoch_batches

    if ordering not in ORDERINGS:
        raise ValueError(f"ordering={ordering!r} is not valid; choose one of {', '.join(ORDERINGS)}")
    return epoch_batches(lengths, batch_size, seed, epoch, group_by_length=ordering == "grouped")
