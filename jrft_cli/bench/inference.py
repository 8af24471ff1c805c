"""The inference section: forward latency of the base model, of each method as jrft runs it, and of
its `jrft export`.

- base:           the backbone and head with no method (eval mode), one per head kind needed;
- <m> (jrft):     the classifier with method m applied, as training leaves it (jr: forward hooks
                  computing z -> shifts at every forward; LoRA: peft's layers);
- <m> (exported): the run artifact of that model exported by `serving.export.export_run` and loaded
                  back through transformers (`load_export`: AutoModelForSequenceClassification).
All under no_grad on one fixed batch, timed by `timing.measure` in round-robin rounds.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from jrft_cli.bench.rows import MethodSetup
from jrft_cli.bench.timing import measure
from jrft_cli.core.backbone import SequenceClassifier


def inference_rows(setups: list[MethodSetup], *, model_name: str, tokenizer: Any, num_labels: int,
                   task_record: dict[str, Any], max_length: int, seed: int, items: list[dict], collate: Callable,
                   device: torch.device, repeats: int, warmup: int,
                   log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Latency rows (id, label, median_ms, q1_ms, q3_ms, rounds, warmup, vs_base; exported rows also
    max_abs_logit_diff against the jrft model). `task_record` is the task recorded in the artifact
    that is exported (its name, labels, is_regression)."""
    from jrft_cli.core.artifact import run_artifact_info, save_artifact
    from jrft_cli.serving.export import export_run, load_export

    models: dict[str, torch.nn.Module] = {}
    ids: dict[str, dict[str, Any]] = {}
    base_of: dict[str, str] = {}
    heads = list(dict.fromkeys(s.head for s in setups))
    for head in heads:
        name = "base" if len(heads) == 1 else f"base ({head})"
        torch.manual_seed(seed)
        models[name] = SequenceClassifier(model_name, num_labels, head=head, mask_token_id=tokenizer.mask_token_id)
        ids[name] = {"model": "base", "head": head}
    diffs: dict[str, float] = {}
    batch = {k: v.to(device) for k, v in collate(items).items() if k != "labels"}
    for setup in setups:
        model = setup.build(model_name, tokenizer, num_labels, seed).eval()
        with tempfile.TemporaryDirectory() as tmp:
            info = run_artifact_info(model, tokenizer, method_config=setup.method_config(), model_name=model_name,
                                     revision=None, task=task_record, num_labels=num_labels, max_length=max_length,
                                     seed=seed)
            save_artifact(model, Path(tmp) / "run", info)
            export_run(Path(tmp) / "run", Path(tmp) / "export")
            exported, _, _ = load_export(Path(tmp) / "export")
        own, out = f"{setup.method} (jrft)", f"{setup.method} (exported)"
        models[own], models[out] = model, exported
        ids[own], ids[out] = {"method": setup.method, "form": "jrft"}, {"method": setup.method, "form": "exported"}
        base = "base" if len(heads) == 1 else f"base ({setup.head})"
        base_of[own] = base_of[out] = base
        model.to(device)
        exported.to(device)
        with torch.no_grad():
            diffs[out] = float((model(**batch) - exported(**batch).logits).abs().max())
    for name, m in models.items():
        models[name] = m.to(device).eval()

    def forward(m: torch.nn.Module) -> Callable[[], Any]:
        def call() -> Any:
            with torch.no_grad():
                return m(**batch)
        return call

    timings = measure({name: forward(m) for name, m in models.items()}, rounds=repeats, warmup=warmup,
                      device=device, log=log)
    rows = []
    for name, t in timings.items():
        ref = timings[base_of.get(name, name)].median_ms
        row = {"id": ids[name], "label": name, **t.stats(), "vs_base": t.median_ms / ref}
        if name in diffs:
            row["max_abs_logit_diff"] = diffs[name]
        rows.append(row)
    return rows
