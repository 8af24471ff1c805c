"""`jrft bench --only multitask,serving`: many tasks on one backbone, side by side.

- multitask: one fixed batch (batch_size rows of seq_len tokens, row i of task i mod N) through
  * `jr (1 task)`:      the single-task jr classifier, hooks on, as `jrft predict` runs a run dir;
  * `jr mixed (N)`:     serving.multitask with N jr tasks, every row its own task (one forward pass);
  * `lora mixed (N)`:   PEFT LoRA with N adapters on the same base model, every row its own adapter
                        (`adapter_names`), with the same per-row head gather as jr mixed;
  for N in `task_counts`, all timed in shared round-robin rounds (`bench.timing.measure`). The tasks are synthetic
  (random z and heads saved as real run artifacts; random LoRA weights): speed does not depend on training.
- serving: `jrft serve` in a subprocess with 1 vs N tasks, `concurrency` client threads each sending
  one-text requests of random tasks back to back; requests/s and per-request latency p50 / p99.

Serving latencies are per HTTP request, measured by the client threads themselves (a request is not
a zero-argument call `timing.measure` could interleave).
"""
from __future__ import annotations

import json
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from jrft_cli.bench.timing import measure


def _synthetic_texts(tokenizer: Any, n: int, seq_len: int, seed: int = 0) -> list[str]:
    """n texts that tokenize to about seq_len tokens with the mask appended (random vocabulary words)."""
    g = random.Random(seed)
    vocab = [w for w, i in tokenizer.get_vocab().items() if w.isalpha() and w.islower() and i > 2000]
    return [" ".join(g.choice(vocab) for _ in range(max(1, seq_len - 3))) for _ in range(n)]


def make_task_artifacts(root: Path, model_name: str, tokenizer: Any, count: int, d: int, task_config: dict[str, Any],
                        max_length: int, seed: int = 0) -> list[Path]:
    """`count` jr run artifacts on one base model: random z (unit entries) and heads, one run dir each."""
    from jrft_cli.core.artifact import run_artifact_info, save_artifact
    from jrft_cli.core.build import build_classifier
    from jrft_cli.core.registry import method_spec

    spec = method_spec("jr")
    options = spec.parse_options({**spec.defaults(), "d": d, "projection_seed": seed})
    method_config = {**spec.defaults(), "d": d, "projection_seed": seed}
    model = build_classifier(model_name, len(task_config["labels"]), "jr", options, tokenizer=tokenizer, seed=seed)
    g = torch.Generator().manual_seed(seed)
    paths = []
    for t in range(count):
        with torch.no_grad():
            model.adapter.z.copy_(torch.randn(d, generator=g))
            for p in model.head_parameters():
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
        info = run_artifact_info(model, tokenizer, method_config=method_config, model_name=model_name, revision=None,
                                 task=task_config, num_labels=len(task_config["labels"]), max_length=max_length,
                                 seed=seed)
        save_artifact(model, root / f"task{t}", info)
        paths.append(root / f"task{t}")
    return paths


def mixed_batch_rows(model_name: str, tokenizer: Any, task_config: dict[str, Any], *, task_counts: Sequence[int],
                     batch_size: int, seq_len: int, d: int, lora_r: int, rounds: int, warmup: int,
                     log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Latency rows: jr (1 task); jr mixed (N) and lora mixed (N) for each N, with `vs_jr_single`. The
    jr mixed (1) row also records `max_abs_logit_diff` against the single-task model (same task)."""
    from peft import LoraConfig, get_peft_model

    from jrft_cli.core.artifact import load_artifact
    from jrft_cli.core.heads import READOUTS
    from jrft_cli.serving.multitask import MultiTaskModel

    log = log or (lambda msg: None)
    texts = _synthetic_texts(tokenizer, batch_size, seq_len)
    top = max(task_counts)
    calls: dict[str, Callable[[], Any]] = {}
    rows_meta: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        log(f"multitask: {top} synthetic jr task artifacts (d={d})")
        paths = make_task_artifacts(Path(tmp), model_name, tokenizer, top, d, task_config, seq_len + 8)
        single = load_artifact(paths[0]).model.eval()
        models = {n: MultiTaskModel.load({f"t{i}": paths[i] for i in range(n)}) for n in task_counts}
    any_model = models[task_counts[0]]
    items = {n: models[n].encode_rows([(f"t{i % n}", (text,)) for i, text in enumerate(texts)]) for n in task_counts}
    first = items[task_counts[0]]     # every task formats its inputs alike: one token batch for all models

    def batch_of(rows: list[dict]) -> dict[str, torch.Tensor]:
        return {k: v for k, v in any_model._collate(rows).items() if k != "labels"}

    batch = batch_of(first)

    def run_single():
        with torch.no_grad():
            return single(**batch_of(first))

    calls["jr (1 task)"] = run_single
    rows_meta["jr (1 task)"] = {"model": "jr (1 task)", "tasks": 1, "kind": "jr"}
    for n in task_counts:
        calls[f"jr mixed ({n})"] = lambda n=n: models[n].logits(items[n])
        rows_meta[f"jr mixed ({n})"] = {"model": f"jr mixed ({n})", "tasks": n, "kind": "jr_mixed"}

    # PEFT LoRA: N adapters on the same base model, each row its own adapter; heads gathered per row.
    from transformers import AutoModel

    from jrft_cli.core.backbone import resolve_model_name

    log(f"multitask: PEFT LoRA r={lora_r} with up to {top} adapters")
    hidden_size = any_model.backbone.config.hidden_size
    num_labels = len(task_config["labels"])
    g = torch.Generator().manual_seed(1)
    head_w, head_b = torch.randn(top, num_labels, hidden_size, generator=g) * 0.1, torch.zeros(top, num_labels)
    lora_models = {}
    for n in task_counts:
        torch.manual_seed(0)
        base = AutoModel.from_pretrained(resolve_model_name(model_name), add_pooling_layer=False).eval()
        config = LoraConfig(r=lora_r, init_lora_weights=False)   # peft's default targets (query, value)
        peft_model = get_peft_model(base, config, adapter_name="t0")
        for i in range(1, n):
            peft_model.add_adapter(f"t{i}", config)
        lora_models[n] = peft_model.eval()
    mask_id = tokenizer.mask_token_id

    def run_lora(n: int):
        names = [f"t{i % n}" for i in range(len(texts))]
        tid = torch.tensor([i % n for i in range(len(texts))])
        with torch.no_grad():
            b = batch_of(items[n])
            hidden = lora_models[n](**b, adapter_names=names).last_hidden_state
            feats = READOUTS["mask"](hidden, b["input_ids"], b["attention_mask"], mask_id)
            return torch.einsum("bch,bh->bc", head_w[tid], feats) + head_b[tid]

    for n in task_counts:
        calls[f"lora mixed ({n})"] = lambda n=n: run_lora(n)
        rows_meta[f"lora mixed ({n})"] = {"model": f"lora mixed ({n})", "tasks": n, "kind": "lora_mixed",
                                          "lora_r": lora_r}
    diff = None
    if 1 in models:
        with torch.no_grad():
            mixed = torch.stack(models[1].logits(items[1]))
            diff = float((mixed - single(**batch)).abs().max())
    log(f"multitask: timing {rounds} round-robin rounds of {len(calls)} models")
    timed = {name: t.stats() for name, t in measure(calls, rounds=rounds, warmup=warmup).items()}
    ref = timed["jr (1 task)"]["median_ms"]
    rows = []
    for name, t in timed.items():
        t = {k: v for k, v in t.items() if k != "times_ms"}
        row = {**rows_meta[name], **t, "vs_jr_single": t["median_ms"] / ref}
        if name == "jr mixed (1)" and diff is not None:
            row["max_abs_logit_diff"] = diff
        rows.append(row)
    return rows


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> None:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as resp:
        if resp.status != 200:
            raise RuntimeError(f"POST {url}: status {resp.status}")
        resp.read()


def serving_rows(model_name: str, tokenizer: Any, task_config: dict[str, Any], *, task_counts: Sequence[int],
                 d: int, seq_len: int, concurrency: int, requests: int, max_batch_size: int, max_wait_ms: float,
                 threads: int | None, env: dict[str, str] | None = None,
                 log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Throughput rows of `jrft serve` (a subprocess) with each number of tasks: `concurrency` client
    threads send `requests` one-text requests in all, each of a random task; requests/s over the whole
    run and per-request latency p50 / p99 (ms)."""
    log = log or (lambda msg: None)
    texts = _synthetic_texts(tokenizer, 64, seq_len, seed=1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_task_artifacts(Path(tmp), model_name, tokenizer, max(task_counts), d, task_config, seq_len + 8)
        for n in task_counts:
            port = _free_port()
            command = [sys.executable, "-m", "jrft_cli", "serve", *(f"t{i}={paths[i]}" for i in range(n)),
                       "--port", str(port), "--max-batch-size", str(max_batch_size), "--max-wait-ms", str(max_wait_ms)]
            if threads:
                command += ["--threads", str(threads)]
            log(f"serving: jrft serve with {n} task(s), {concurrency} concurrent clients, {requests} requests")
            proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            url = f"http://127.0.0.1:{port}"
            try:
                for _ in range(1200):
                    if proc.poll() is not None:
                        raise RuntimeError(f"jrft serve exited with {proc.returncode}: {proc.stderr.read()[-1000:]}")
                    try:
                        with urllib.request.urlopen(url + "/health", timeout=5):
                            break
                    except OSError:
                        time.sleep(0.5)
                for i in range(4):   # warm-up
                    _post(url + "/predict", {"task": f"t{i % n}", "texts": [texts[i]]})
                latencies: list[float] = []
                lock = threading.Lock()
                counter = iter(range(requests))

                def client(seed: int) -> None:
                    g = random.Random(seed)
                    for _ in counter:   # the shared iterator hands out the requests
                        body = {"task": f"t{g.randrange(n)}", "texts": [g.choice(texts)]}
                        start = time.perf_counter()
                        _post(url + "/predict", body)
                        with lock:
                            latencies.append((time.perf_counter() - start) * 1e3)

                start = time.perf_counter()
                workers = [threading.Thread(target=client, args=(c,)) for c in range(concurrency)]
                for w in workers:
                    w.start()
                for w in workers:
                    w.join()
                wall = time.perf_counter() - start
                with urllib.request.urlopen(url + "/health", timeout=30) as resp:
                    stats = json.loads(resp.read())["stats"]
            finally:
                proc.terminate()
                proc.wait(timeout=60)
            latencies.sort()
            rows.append({"tasks": n, "concurrency": concurrency, "requests": len(latencies),
                         "requests_per_s": len(latencies) / wall, "p50_ms": statistics.median(latencies),
                         "p99_ms": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
                         "mean_batch": stats["rows"] / max(1, stats["batches"]), "batches": stats["batches"],
                         "mixed_batches": stats["mixed_batches"]})
    return rows


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's goal: a mixed batch of N jr tasks within 1.05x the single-task jr model's latency."""
    out = []
    for r in report.get("multitask") or []:
        if r["kind"] == "jr_mixed":
            out.append({"name": f"jr mixed batch of {r['tasks']} task(s) / single-task jr latency",
                        "value": r["vs_jr_single"], "target": "<= 1.05", "met": r["vs_jr_single"] <= 1.05,
                        "detail": "multitask section, median of round-robin rounds"})
    return out
