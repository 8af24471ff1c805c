"""One training run: translate the composed config into plain arguments and wire the pieces.

Nothing below this module knows about Hydra or OmegaConf.
"""
from __future__ import annotations

import math
import random
import re
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import yaml
import torch

from jrft_cli import __version__
from jrft_cli.core.artifact import run_artifact_info, save_artifact
from jrft_cli.core.backbone import (SequenceClassifier, count_parameters, load_config, load_tokenizer, max_input_length,
                                   model_id, resolve_head)
from jrft_cli.core.build import build_classifier
from jrft_cli.core.errors import JrftError
from jrft_cli.core.heads import MASK_FORMAT_HEADS
from jrft_cli.core.files import (CONFIG_FILE, LOCK_FILE, METRICS_FILE, RESULTS_FILE, MetricsWriter, RunDirBusy,
                                 RunDirLock, read_results, write_json_atomic)
from jrft_cli.core.registry import MethodSpec, method_names, method_spec
from jrft_cli.tasks.evaluation import NonFiniteOutputs, TaskInfo
from jrft_cli.tasks.kinds import kind_of
from jrft_cli.tasks.loading import resolve_task
from jrft_cli.training import distributed, settings
from jrft_cli.training.checkpoint import (CHECKPOINT_FILE, INTERRUPTED_EXIT_CODE, StopSignals, TrainingFailed,
                                          TrainingInterrupted, load_checkpoint, save_checkpoint)
from jrft_cli.training.loop import (LoopConfig, Trainer, attention_implementation, autocast_dtype, precision_name,
                                   resolve_device)

if TYPE_CHECKING:
    from jrft_cli.dp.plan import PrivacyPlan


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def validate(cfg: dict[str, Any]) -> None:
    """Fail fast, before anything is loaded, with one line naming the bad value and the choices:
    every setting's type and range (training.settings), the method's options (the registry), the
    learning rate in effect and, under privacy=dp, the privacy settings."""
    settings.check(cfg)
    method_options(cfg)
    if "d" in cfg:
        settings.check_value("d", settings.D_RULE, cfg["d"])
    for key, rule in settings.METHOD_RECIPE_RULES.items():
        if key in cfg["method"]:
            settings.check_value(f"method.{key}", rule, cfg["method"][key])
    lr = learning_rate(cfg)
    if lr is None or lr <= 0:
        raise JrftError(f"train.lr={lr!r} is not valid; it must be > 0 (null = the method's default)")
    if is_private(cfg):
        privacy_plan(cfg)


def learning_rate(cfg: dict[str, Any]) -> float:
    """train.lr when set; else the method's default: `method.dp_lr` under privacy=dp when the method
    has one (DP-SGD's few, noisy, clipped steps can want another rate), `method.lr` otherwise."""
    if cfg["train"]["lr"] is not None:
        return cfg["train"]["lr"]
    m = cfg["method"]
    if is_private(cfg) and m.get("dp_lr") is not None:
        return m["dp_lr"]
    return m["lr"]


def is_private(cfg: dict[str, Any]) -> bool:
    """True when the config asks for DP training (`privacy=dp`)."""
    return bool((cfg.get("privacy") or {}).get("enabled"))


def privacy_plan(cfg: dict[str, Any], n: int | None = None) -> PrivacyPlan | None:
    """The privacy settings checked and, for n training examples, resolved into a dp.plan.PrivacyPlan
    (noise multiplier, q, steps, delta); without n only the checks that need no data (returns None).
    dp (and with it opacus) is imported here, so a non-private run never loads it."""
    from jrft_cli.dp.plan import resolve_plan

    t = cfg["train"]
    return resolve_plan(cfg["privacy"], n, epochs=t["epochs"], max_steps=t["max_steps"], grad_accum=t["grad_accum"],
                        loop_max_grad_norm=t.get("max_grad_norm"), group_by_length=bool(t.get("group_by_length")))


def method_of(cfg: dict[str, Any]) -> MethodSpec:
    """The registered method the config names (one-line error naming the choices otherwise)."""
    name = cfg["method"]["name"]
    if name not in method_names():
        raise JrftError(f"method={name!r} is not valid; choose one of {', '.join(method_names())}")
    return method_spec(name)


def method_options(cfg: dict[str, Any]) -> Any:
    """The method's typed options from `cfg.method` (unknown or ill-typed keys: one-line error)."""
    spec = method_of(cfg)
    try:
        return spec.parse_options(cfg["method"])
    except (TypeError, ValueError) as e:
        # "SlashConfig: d=0 is not valid; ..." -> "method.d=0 is not valid; ... (method=jr)"
        msg = str(e).removeprefix(f"{spec.options.__name__}: ")
        if re.match(r"^\w+=", msg):
            msg = f"method.{msg}"
        raise JrftError(f"{msg} (method={spec.name})") from None


def method_label(cfg: dict[str, Any]) -> str:
    """Short row label for tables: `jr d=4096`, `lora r=1`, `full`."""
    return method_of(cfg).row_label(method_options(cfg))


def head_of(cfg: dict[str, Any]) -> str:
    """The head the run uses: the method's `head`, as the task's kind takes it (token tasks: per-token)."""
    return kind_of(cfg["task"]).head(cfg["method"].get("head", "mask"))


def build_model(cfg: dict[str, Any], tokenizer: Any, num_labels: int,
                attn_implementation: str | None = None) -> SequenceClassifier:
    """The backbone with its head, the method applied (deterministic for the run's seed);
    `attn_implementation`: the backbone's attention kernel (None = the model's default)."""
    m = cfg["method"]
    return build_classifier(cfg["model"]["name"], num_labels, m["name"], method_options(cfg), tokenizer=tokenizer,
                            seed=cfg["seed"], head=head_of(cfg), dropout=m.get("dropout"),
                            revision=cfg["model"].get("revision"), attn_implementation=attn_implementation)


def artifact_info(cfg: dict[str, Any], model: SequenceClassifier, tokenizer: Any, num_labels: int,
                  task: dict[str, Any] | None = None) -> dict[str, Any]:
    """adapter_config.json for a run of `cfg` (see core.artifact.run_artifact_info); `task`: the resolved
    task (custom tasks: with their data location and labels), default cfg's."""
    return run_artifact_info(model, tokenizer, method_config=cfg["method"], model_name=cfg["model"]["name"],
                             revision=cfg["model"].get("revision"), task=task or cfg["task"], num_labels=num_labels,
                             max_length=cfg["data"]["max_length"], seed=cfg["seed"])


# Settings that may differ between a run and its resumption (machine, logging, data location).
_RESUME_FREE_KEYS = ("logger", "hardware", "run", "data.dir")
# Settings added after runs were recorded: absent from an older run's config.yaml, they mean this value,
# so relaunching an older run dir (a sweep being resumed) is not refused over them.
_ADDED_KEY_DEFAULTS = {"train.group_by_length": False}


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out.update(_flatten(v, f"{prefix}{k}."))
    return {k.rstrip("."): v for k, v in out.items()}


def config_difference(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """The first setting that differs between a run dir's config and a relaunch's (ignoring
    machine, logging and data location), as `key: old -> new`; None when they agree."""
    a, b = _flatten(old), _flatten(new)
    free = lambda k: any(k == f or k.startswith(f + ".") for f in _RESUME_FREE_KEYS)  # noqa: E731
    for key in sorted(set(a) | set(b)):
        old_value, new_value = (c.get(key, _ADDED_KEY_DEFAULTS.get(key)) for c in (a, b))
        if not free(key) and old_value != new_value:
            return f"{key}: {old_value!r} -> {new_value!r}"
    return None


def _existing_run(cfg: dict[str, Any], run_dir: Path) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(completed results, loaded checkpoint to resume) of a run dir being relaunched; errors when the
    dir holds a different configuration, or a file of its record is corrupt (saying what to do). Read
    before the relaunch is accepted, so a refused one writes nothing."""
    results = read_results(run_dir)
    ckpt = run_dir / CHECKPOINT_FILE
    if results is None and not ckpt.exists():
        return None, None
    config_path = run_dir / CONFIG_FILE
    if config_path.exists():
        try:
            old = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise JrftError(f"{config_path}: the run's {CONFIG_FILE} is unreadable ({reason}); delete the run dir "
                            f"{run_dir} to train it from scratch") from None
        diff = config_difference(old if isinstance(old, dict) else {}, cfg)
        if diff:
            raise JrftError(f"run dir {run_dir} holds a run with another config ({diff}); "
                            "use another hydra.run.dir / hydra.sweep.dir or delete it")
    if results is not None and results.get("status") == "completed":
        return results, None
    if results is not None and results.get("status") == "failed":
        # a failed run is retried from scratch: its checkpoint led to the failure
        return None, None
    return None, load_checkpoint(ckpt) if ckpt.exists() else None


def _rewrite_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """metrics.jsonl as of the checkpoint: drop lines logged after it (they are logged again)."""
    path = run_dir / METRICS_FILE
    path.unlink(missing_ok=True)
    writer = MetricsWriter(run_dir)
    for record in history:
        writer(record)


def _setup_only(run_dir: Path) -> bool:
    """True when the run dir holds nothing but what Hydra wrote at start (safe to remove on a config error)."""
    names = {p.name for p in run_dir.iterdir()} if run_dir.exists() else set()
    return names <= {".hydra", "train.log", "wandb", CONFIG_FILE, LOCK_FILE}


def _remove_if_setup_only(run_dir: Path, lock: RunDirLock | None) -> None:
    """After a config error, remove a run dir that holds nothing of a run; never one that another
    process holds (it may be loading its model, its dir still looking empty)."""
    if not _setup_only(run_dir) or not run_dir.exists():
        return
    own = lock
    if own is None:
        own = RunDirLock(run_dir)
        if not own.try_acquire():
            return
    try:
        shutil.rmtree(run_dir, ignore_errors=True)
    finally:
        if lock is None:
            own.release()


def run(cfg: dict[str, Any], run_dir: Path, console: Any = None,
        on_start: Callable[[], None] | None = None) -> dict[str, Any]:
    """Train and evaluate one configuration; write its run dir. Returns results.json's content.

    One writer per run dir: the lock is held for the run's life (another live writer: RunDirBusy).
    `on_start` runs once the run dir is accepted (locked, config matching), before training (the CLI
    writes Hydra's record there). A run that fails (non-finite loss, weights or metrics) writes
    results.json with status "failed" and its error, and raises TrainingFailed."""
    run_dir = Path(run_dir)
    dist_info = distributed.detect()
    lock: RunDirLock | None = None
    try:
        validate(cfg)
        if dist_info.world_size > 1:
            if is_private(cfg):
                raise JrftError(f"DP training with {dist_info.world_size} processes (DDP) is not supported: "
                                "per-example clipping and the accountant assume one process; run DP without torchrun/srun")
            distributed.init(dist_info, resolve_device(cfg["hardware"]["device"]))
            run_dir = _agree_run_dir(run_dir, dist_info)
        if dist_info.is_main:
            lock = RunDirLock.acquire(run_dir)
        done, checkpoint = _existing_run(cfg, run_dir)
        if done is not None:
            if dist_info.is_main:
                print(f"jrft: {run_dir} already holds a completed run (results.json); skipping it", flush=True)
            return done
        if dist_info.is_main:
            lock.record_holder()
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / CONFIG_FILE).write_text(yaml.safe_dump(cfg, sort_keys=False))   # the resolved config
            if on_start is not None:
                on_start()
            if checkpoint is None:
                (run_dir / METRICS_FILE).unlink(missing_ok=True)   # a restart from scratch logs anew
                (run_dir / RESULTS_FILE).unlink(missing_ok=True)   # a failed run's record goes with it
                (run_dir / CHECKPOINT_FILE).unlink(missing_ok=True)
        return _run(cfg, run_dir, console, checkpoint, dist_info)
    except RunDirBusy:
        raise   # the dir is another process's: touch nothing
    except TrainingFailed:
        raise   # results.json records it
    except JrftError:
        # A bad setting must leave nothing behind that looks like a run.
        if dist_info.is_main:
            _remove_if_setup_only(run_dir, lock)
        raise
    finally:
        if lock is not None:
            lock.release()
        distributed.shutdown()


def _check_finite(summary: dict[str, Any], model: torch.nn.Module) -> None:
    """A finished run's metrics and trained weights must be finite to be written as a result."""
    for snapshot in ("dev", "best_dev"):
        for name, value in (summary.get(snapshot) or {}).items():
            if isinstance(value, float) and not math.isfinite(value):
                raise TrainingFailed(f"{snapshot} {name} is {value}; a non-finite metric is not a result")
    bad = [n for n, p in model.named_parameters() if p.requires_grad and not bool(torch.isfinite(p).all())]
    if bad:
        raise TrainingFailed(f"trained weights hold non-finite values ({', '.join(bad[:3])})")


def _write_failed(cfg: dict[str, Any], run_dir: Path, error: str, step: int) -> None:
    """results.json of a failed run: what ran and why it stopped, and no metrics. The checkpoint goes
    (a relaunch retries from scratch; resuming would only reach the same failure)."""
    write_json_atomic(run_dir / RESULTS_FILE, {
        "status": "failed",
        "error": error,
        "failed_at_step": step,
        "task": cfg["task"]["name"],
        "model": model_id(cfg["model"]["name"]),
        "model_name": cfg["model"]["name"],
        "method": cfg["method"]["name"],
        "method_label": method_label(cfg),
        "seed": cfg["seed"],
        "jrft_version": __version__,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })
    (run_dir / CHECKPOINT_FILE).unlink(missing_ok=True)


def _agree_run_dir(run_dir: Path, info: distributed.DistInfo) -> Path:
    """Every rank uses rank 0's run dir (Hydra's timestamped dirs may differ by a second);
    a rank's own dir, left empty, is removed."""
    import torch.distributed as dist

    box = [str(run_dir)]
    dist.broadcast_object_list(box, src=0)
    agreed = Path(box[0])
    if not info.is_main and agreed != run_dir:
        try:
            run_dir.rmdir()
        except OSError:
            pass
    return agreed


def _run(cfg: dict[str, Any], run_dir: Path, console: Any, checkpoint: dict[str, Any] | None,
         dist_info: distributed.DistInfo) -> dict[str, Any]:
    from transformers.utils import logging as hf_logging

    from jrft_cli.training.tracking import Tracker

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()   # its "Loading weights" bar would sit on stderr above any one-line error
    t, m, hw = cfg["train"], cfg["method"], cfg["hardware"]
    if hw.get("num_threads"):
        torch.set_num_threads(int(hw["num_threads"]))
    device = resolve_device(hw["device"])
    if device.type == "cuda" and dist_info.world_size > 1:
        device = torch.device("cuda", dist_info.local_rank)
    # resolved before anything loads (fp16 on CPU is refused here); bf16 on CPU loads eager attention
    amp = autocast_dtype(hw.get("precision", "fp32"), device)
    seed_everything(cfg["seed"])

    data_cfg = cfg["data"]
    task = resolve_task(cfg["task"], data_cfg)   # custom tasks: their files, labels and metrics
    tokenizer = load_tokenizer(cfg["model"]["name"], cfg["model"].get("revision"))
    kind = kind_of(task)
    head = resolve_head(head_of(cfg), load_config(cfg["model"]["name"], cfg["model"].get("revision")))
    mask_format = head in MASK_FORMAT_HEADS
    train_ex = kind.load(task, "train", data_cfg["dir"], data_cfg.get("limit_train"))
    eval_ex = {s["name"]: kind.load(task, s["name"], data_cfg["dir"], data_cfg.get("limit_eval"))
               for s in task["eval_splits"]}
    enc = lambda ex: kind.encode(ex, tokenizer, mask_format=mask_format, max_length=data_cfg["max_length"])  # noqa: E731
    train_data, eval_sets = enc(train_ex), {k: enc(v) for k, v in eval_ex.items()}
    dropped = sum(it.get("dropped_words", 0) for data in eval_sets.values() for it in data)
    if dropped and dist_info.is_main:
        print(f"jrft: {dropped} eval word(s) lie beyond data.max_length={data_cfg['max_length']} and are not "
              "evaluated; raise data.max_length to include them", flush=True)
    num_labels = kind.num_labels(task)
    dp_plan = privacy_plan(cfg, len(train_data)) if is_private(cfg) else None   # before the model loads

    model = build_model(cfg, tokenizer, num_labels, attention_implementation(amp, device)).to(device)
    # prompt positions (jr_warp, warp) take no position ids: the real tokens keep theirs
    settings.check_max_length(data_cfg["max_length"], max_input_length(tokenizer, model.config), cfg["model"]["name"])

    lr = learning_rate(cfg)
    loop_cfg = LoopConfig(epochs=t["epochs"], max_steps=t["max_steps"], batch_size=t["batch_size"], lr=lr,
                          warmup_ratio=t["warmup_ratio"], weight_decay=t.get("weight_decay", 0.0),
                          grad_accum=t["grad_accum"], eval_every=t["eval_every"], max_grad_norm=t.get("max_grad_norm"),
                          log_every=t.get("log_every", 10), seed=cfg["seed"],
                          checkpoint_every=t.get("checkpoint_every") or 0,
                          group_by_length=bool(t.get("group_by_length")))
    task_info = TaskInfo.from_task(task)
    log_cfg = cfg["logger"]
    tracker = Tracker(run_dir, cfg, use_wandb=bool(log_cfg.get("enabled")) and dist_info.is_main,
                      project=log_cfg.get("project", "jrft"), entity=log_cfg.get("entity"), group=log_cfg.get("group"),
                      tags=log_cfg.get("tags"), mode=log_cfg.get("mode", "auto"),
                      name=f"{task['name']}-{method_label(cfg)}-s{cfg['seed']}",
                      resume_id=checkpoint.get("wandb_run_id") if checkpoint else None, console=console)
    ckpt_path = run_dir / CHECKPOINT_FILE

    def save(state: dict[str, Any]) -> Path:
        save_checkpoint(ckpt_path, {"trainer": state, "wandb_run_id": tracker.wandb_run_id})
        return ckpt_path

    exit_code = 1
    try:
        if dist_info.is_main:
            tracker.print_config()
        collate = kind.collate(tokenizer)
        with StopSignals() as stop:
            hooks = dict(logger=tracker, on_metrics=MetricsWriter(run_dir), should_stop=stop, on_checkpoint=save)
            if dp_plan is not None:
                from jrft_cli.training.private_loop import PrivateTrainer
                trainer = PrivateTrainer(model, train_data, eval_sets, collate, task_info, loop_cfg, device, dp_plan,
                                         m["name"], hw.get("precision", "fp32"), **hooks)
            else:
                trainer = Trainer(model, train_data, eval_sets, collate, task_info, loop_cfg, device,
                                  hw.get("precision", "fp32"), **hooks)
            trainable, total = count_parameters(model)   # after the trainer: DP full finetuning freezes position embeddings
            if checkpoint is not None:
                try:
                    trainer.load_state_dict(checkpoint["trainer"])
                except (KeyError, TypeError, ValueError, RuntimeError) as e:
                    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
                    raise JrftError(f"{ckpt_path}: cannot resume from this checkpoint ({reason[:200]}); delete it "
                                    f"to train this run from scratch") from None
                if dist_info.is_main:
                    _rewrite_metrics(run_dir, trainer.history)
                    print(f"jrft: resuming {run_dir} from its checkpoint at step {trainer.step}/{trainer.total_steps}",
                          flush=True)
            if dist_info.is_main:
                tracker.start_progress(trainer.total_steps, f"{task['name']} {method_label(cfg)}")
            failure: JrftError | None = None
            try:
                summary = trainer.run()
                if dist_info.is_main:
                    _check_finite(summary, model)
            except TrainingInterrupted as e:
                e.hand_on = stop.hand_on   # the caller passes the signal on (submitit: requeue) once out of here
                exit_code = INTERRUPTED_EXIT_CODE
                raise
            except (TrainingFailed, NonFiniteOutputs) as e:
                failure = e
        if failure is not None:
            step = getattr(failure, "step", None) or trainer.step
            message = f"training failed at step {step}: {failure}"
            if dist_info.is_main:
                _write_failed(cfg, run_dir, message, step)
                message += f"; {run_dir / RESULTS_FILE} records status failed"
            raise TrainingFailed(message, step)
        if not dist_info.is_main:
            exit_code = 0
            return summary
        if cfg.get("run", {}).get("save_trainable", True):
            save_artifact(model, run_dir, artifact_info(cfg, model, tokenizer, num_labels, task))
        results = {
            "status": "completed",
            "task": task["name"],
            "model": model_id(cfg["model"]["name"]),
            "model_name": cfg["model"]["name"],
            "method": m["name"],
            "method_label": method_label(cfg),
            "seed": cfg["seed"],
            "d": method_spec(m["name"]).options_dict(model.method_options).get("d"),
            "trainable_params": trainable,
            "total_params": total,
            "main_metric": task["main_metric"],
            "head": model.head_kind,
            "labels": task.get("label_names"),
            **summary,
            "lr": lr,
            "batch_size": dp_plan.batch_size if dp_plan else t["batch_size"] * t["grad_accum"],
            "train_examples": len(train_data),
            "device": str(device),
            "precision": precision_name(trainer.amp),
            "attn_implementation": model.config._attn_implementation,
            "privacy": trainer.privacy_record() if dp_plan else None,
            "jrft_version": __version__,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        tracker.summary(results)
        if checkpoint is not None:
            results["resumed_at_step"] = checkpoint["trainer"]["step"]
        write_json_atomic(run_dir / RESULTS_FILE, results)   # last: its presence means "completed"
        ckpt_path.unlink(missing_ok=True)                     # finished: nothing left to resume
        exit_code = 0
        return results
    finally:
        tracker.finish(exit_code)
