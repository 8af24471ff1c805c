"""The projection section: what the z -> shifts map costs.

- `projection_table`: bytes held, build time and z -> all-shifts forward + backward time of every
  projection kind (core.projection) at each d, for L layers of width H (RoBERTa-large by default);
- `shift_vs_step`: that time as a fraction of one training step of the bench's subject method
  (rows.SUBJECT) on a RoBERTa encoder of the same shapes with random weights (nothing downloaded).
"""
from __future__ import annotations

import statistics
from typing import Any, Callable

import torch
from torch import nn

from jrft_cli.bench.rows import SUBJECT, method_setup
from jrft_cli.bench.timing import measure, release_memory
from jrft_cli.tasks.evaluation import TaskInfo
from jrft_cli.training.loop import LoopConfig, Trainer


def _shift_call(proj: nn.Module, d: int, device: torch.device, repeats: int = 1) -> Callable[[], None]:
    """`repeats` z -> all-shifts forward passes, each followed by the backward of their sum."""
    z = torch.randn(d, device=device, requires_grad=True)

    def call() -> None:
        for _ in range(repeats):
            proj(z).sum().backward()
            z.grad = None
    return call


def projection_table(layers: int = 24, hidden: int = 1024, dims: tuple[int, ...] = (1024, 4096, 16384, 65536),
                     device: torch.device | str = "cpu", repeats: int = 3,
                     max_dense_bytes: float = 4e9) -> list[dict[str, Any]]:
    """Bytes held, build time and median z -> shifts forward + backward time (`repeats` timed calls
    after one warm-up) of every projection kind and d. Dense projections larger than
    `max_dense_bytes` are not allocated: their row says so (`skipped`) and gives the bytes they would hold."""
    from jrft_cli.core.projection import PROJECTION_KINDS, make_projection

    device = torch.device(device)
    rows: list[dict[str, Any]] = []
    for d in dims:
        for kind in PROJECTION_KINDS:
            row: dict[str, Any] = {"kind": kind, "d": d, "layers": layers, "hidden": hidden}
            if kind == "dense" and layers * d * hidden * 4 > max_dense_bytes:
                rows.append({**row, "bytes": layers * d * hidden * 4, "build_s": None, "shift_ms": None,
                             "skipped": f"dense matrices would exceed {max_dense_bytes / 1e9:.2g} GB"})
                continue
            built: list[nn.Module] = []
            build = measure({"build": lambda: built.append(make_projection(kind, d, layers, hidden, seed=0,
                                                                           device=device))},
                            rounds=1, warmup=0, device=device)["build"]
            proj = built[0]
            step = measure({"shift": _shift_call(proj, d, device)}, rounds=repeats, warmup=1, device=device)["shift"]
            rows.append({**row, "bytes": proj.nbytes(), "build_s": build.median_ms / 1e3, "shift_ms": step.median_ms,
                         "skipped": None})
            del proj, built
    return rows


class _MaskHeadModel(nn.Module):
    """A random-weight encoder + linear head on the mask position: what a method's `apply` needs
    (`backbone`, `head_parameters()`), without a pretrained checkpoint."""

    def __init__(self, backbone: nn.Module, num_labels: int, mask_token_id: int) -> None:
        super().__init__()
        self.backbone, self.mask_token_id = backbone, mask_token_id
        self.head = nn.Linear(backbone.config.hidden_size, num_labels)

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.head.parameters())

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_: object) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        hidden = hidden[:, hidden.size(1) - input_ids.size(1):]
        pos = (input_ids == self.mask_token_id).int().argmax(dim=1)
        return self.head(hidden[torch.arange(hidden.size(0), device=hidden.device), pos])


def shift_vs_step(layers: int = 24, hidden: int = 1024, d: int = 4096, batch_size: int = 2, seq_len: int = 32,
                  steps: int = 3, warmup: int = 1, kinds: tuple[str, ...] = ("structured", "dense"),
                  device: torch.device | str = "cpu", shift_repeats: int = 5, vocab_size: int = 50265,
                  log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """z -> shifts time (forward + backward) as a fraction of one training step of SUBJECT (its
    defaults, the projection `kind`) on a random RoBERTa encoder of the given shapes. Each round times
    one step and, right after it, `shift_repeats` z -> shifts calls (their mean is the round's shift
    time); `fraction` is the median over rounds of shift time / step time."""
    from transformers import RobertaConfig, RobertaModel

    from jrft_cli.core.registry import method_spec

    device = torch.device(device)
    config = RobertaConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                           num_attention_heads=max(1, hidden // 64), intermediate_size=4 * hidden,
                           max_position_embeddings=514, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    if log:
        log(f"shift vs step: building a random RoBERTa (L={layers}, H={hidden})")
    torch.manual_seed(0)
    mask_id = 4
    model = _MaskHeadModel(RobertaModel(config, add_pooling_layer=False), 2, mask_id).to(device)
    g = torch.Generator().manual_seed(0)
    items = []
    for _ in range(batch_size):
        ids = [0] + torch.randint(10, vocab_size, (seq_len - 3,), generator=g).tolist() + [mask_id, 2]
        items.append({"input_ids": ids, "attention_mask": [1] * seq_len, "labels": int(torch.randint(0, 2, (1,), generator=g))})

    def collate(its: list[dict]) -> dict[str, torch.Tensor]:
        return {"input_ids": torch.tensor([i["input_ids"] for i in its]),
                "attention_mask": torch.tensor([i["attention_mask"] for i in its]),
                "labels": torch.tensor([i["labels"] for i in its])}

    spec, task = method_spec(SUBJECT), TaskInfo(False, ("accuracy",), "accuracy")
    out = []
    for kind in kinds:
        if log:
            log(f"shift vs step: {SUBJECT} d={d} {kind}")
        setup = method_setup(SUBJECT, d=d, seed=0, overrides={"projection": kind})
        spec.apply(model, setup.options)
        model.to(device)
        trainer = Trainer(model, items, {}, collate, task,
                          LoopConfig(max_steps=warmup + steps + 1, batch_size=batch_size, lr=setup.lr, warmup_ratio=0.0),
                          device)
        t = measure({"step": lambda: trainer.train_step([items]),
                     "shift": _shift_call(model.adapter.projection, d, device, shift_repeats)},
                    rounds=steps, warmup=warmup, device=device)
        step_ms, shift_ms = t["step"].times_ms, [ms / shift_repeats for ms in t["shift"].times_ms]
        out.append({"kind": kind, "d": d, "layers": layers, "hidden": hidden, "batch_size": batch_size,
                    "seq_len": seq_len, "shift_ms": statistics.median(shift_ms), "step_ms": statistics.median(step_ms),
                    "fraction": statistics.median(z / s for z, s in zip(shift_ms, step_ms)), "rounds": steps})
        model.adapter.remove_hooks()
        del model.adapter, trainer
        release_memory()
    return out
