"""``sevo report RUN_DIR --out DIR``: plots of one run of ``sevo replay`` or ``sevo run``.

RUN_DIR is the run's ``--checkpoint-dir``. The report reads the newest valid checkpoint (its
counters, configuration and prequential sums, with :func:`~streaming.checkpoint.describe_checkpoint`
as ``sevo inspect`` does) and the metrics time series the pipeline appends next to it
(``metrics.jsonl``, see :mod:`streaming.timeseries`), and writes to DIR:

==================== ======================================================================
``prequential.png``  test-then-train HR@10 and NDCG@10 per window of events (the checkpoint's
                     windows), with the overall values
``throughput.png``   events learned per second and the mean ``learn_many`` / micro-batch time
                     between samples, over wall time
``freshness.png``    histogram of event freshness (wall clock at learning minus event time;
                     live sources only)
``dead_letters.png`` dead letters by reason (all runs), and their growth over wall time
``rss.png``          resident set size over wall time
``index.html``       the plots and a table of the run (data, model, optimizer, events, final
                     metrics)
==================== ======================================================================

A plot without data (no prequential evaluation, no time series yet, a replayed log's
freshness, no dead letters) is replaced by a note in ``index.html``. matplotlib (the ``report``
extra) draws with its Agg backend; nothing here needs a display.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import html
import json
import logging
import math
from pathlib import Path
from typing import Any

__all__ = ["PLOTS", "add_report", "freshness_histogram", "write_report"]

log = logging.getLogger(__name__)

#: The plots a report can hold, in the order of ``index.html``: file name → title.
PLOTS = {
    "prequential.png": "Prequential HR@10 / NDCG@10",
    "throughput.png": "Throughput and step time",
    "freshness.png": "Event freshness",
    "dead_letters.png": "Dead letters by reason",
    "rss.png": "Memory (resident set)",
}

_SIZE = (8.0, 4.5)
_DPI = 110


# ---------------------------------------------------------------------- loading
def _load(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]:
    """``(info, meta, prequential summary or None)`` of the newest valid checkpoint."""
    from engine.prequential import Prequential
    from streaming.checkpoint import CheckpointStore, describe_checkpoint

    if not run_dir.is_dir():
        raise FileNotFoundError(f"no checkpoint directory {run_dir}")
    ckpt = CheckpointStore(run_dir).latest_checkpoint()
    if ckpt is None:
        raise FileNotFoundError(
            f"no valid checkpoint in {run_dir} (give the --checkpoint-dir of sevo replay or "
            "sevo run)"
        )
    try:
        info = describe_checkpoint(ckpt)
        state = ckpt.meta.get("prequential")
        preq = Prequential.from_state(state).summary() if state and state.get("count") else None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(
            f"{ckpt.path} is not a checkpoint of sevo replay or sevo run ({exc!r})"
        ) from exc
    return info, ckpt.meta, preq


# ---------------------------------------------------------------------- figures
def _figure(nrows: int = 1, ncols: int = 1, **kw: Any):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=kw.pop("figsize", _SIZE), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def _save(fig: Any, path: Path) -> None:
    fig.savefig(path, format="png")


def _time_axis(samples: list[dict[str, Any]]) -> tuple[list[float], str, float]:
    """Elapsed wall time of each sample since the first one, in a readable unit."""
    t0 = samples[0]["t"]
    span = samples[-1]["t"] - t0
    unit, scale = ("h", 3600.0) if span > 2 * 3600 else ("min", 60.0) if span > 180 else ("s", 1)
    return [(s["t"] - t0) / scale for s in samples], unit, scale


def _run_starts(samples: list[dict[str, Any]], xs: list[float]) -> list[float]:
    """x of each sample that begins another run (a restart), after the first."""
    return [
        x for prev, s, x in zip(samples, samples[1:], xs[1:]) if s.get("run") != prev.get("run")
    ]


def _line(ax: Any, samples: list[dict[str, Any]], xs: list[float], key: str, **kw: Any) -> None:
    """Plot ``sample[key] * scale`` over ``xs``, one unbroken line per run (a restart leaves
    a gap); samples without the value are left out."""
    scale = kw.pop("scale", 1.0)
    px: list[float] = []
    py: list[float] = []
    run = None
    for s, x in zip(samples, xs):
        if s.get(key) is None:
            continue
        if px and s.get("run") != run:
            px.append(math.nan)
            py.append(math.nan)
        run = s.get("run")
        px.append(x)
        py.append(s[key] * scale)
    if px:
        kw.setdefault("marker", ".")
        ax.plot(px, py, **kw)


def _mark_runs(ax: Any, starts: list[float]) -> None:
    for i, x in enumerate(starts):
        ax.axvline(x, color="0.6", linestyle=":", linewidth=1, label="restart" if i == 0 else None)


def _plot_prequential(preq: dict[str, Any] | None, path: Path) -> str | None:
    from matplotlib.ticker import StrMethodFormatter

    if not preq or not preq.get("windows"):
        return "no prequential evaluation in this run (replay or run with --prequential)"
    windows = [w for w in preq["windows"] if w["events"]]
    size = preq["window"]
    k = next(key.split("@")[1] for key in preq if key.startswith("HR@"))
    hr, ndcg = f"HR@{k}", f"NDCG@{k}"
    full = [w for w in windows if w["events"] >= size]
    partial = [w for w in windows if w["events"] < size]
    fig, axes = _figure()
    ax = axes[0][0]
    for key, color in ((hr, "tab:blue"), (ndcg, "tab:orange")):
        ax.plot(
            [w["start"] + w["events"] / 2 for w in windows],
            [w[key] for w in windows],
            color=color,
            marker="o" if len(windows) <= 60 else None,
            markersize=4,
            label=f"{key} per window",
        )
        if partial:  # a last window still filling: fewer events, noisier
            ax.plot(
                [w["start"] + w["events"] / 2 for w in partial],
                [w[key] for w in partial],
                linestyle="none",
                marker="o",
                markersize=8,
                markerfacecolor="white",
                color=color,
            )
        ax.axhline(
            preq[key],
            color=color,
            linestyle="--",
            linewidth=1,
            label=f"{key} overall {preq[key]:.4f}",
        )
    ax.set_xlabel(f"events ranked (each point: a window of {size:,} events at its middle)")
    ax.set_ylabel(f"{hr} / {ndcg}")
    ax.set_ylim(bottom=0)
    ax.set_xlim(left=0)
    ax.xaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    note = f"; hollow: last window, {partial[-1]['events']:,} events" if partial else ""
    ax.set_title(
        f"Prequential (test, then train) over {preq['events']:,} events, "
        f"{len(full)} full windows{note}",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    _save(fig, path)
    return None


def _plot_throughput(samples: list[dict[str, Any]], path: Path) -> str | None:
    rated = [s for s in samples if s.get("events_per_s") is not None]
    if len(rated) < 2:
        return (
            "too few metrics samples for a throughput plot (a sample is taken every few "
            "seconds and at each checkpoint)"
        )
    xs, unit, _ = _time_axis(samples)
    starts = _run_starts(samples, xs)
    fig, axes = _figure(2, 1, sharex=True)
    top, bottom = axes[0][0], axes[1][0]
    _line(top, samples, xs, "events_per_s", color="tab:blue")
    top.set_ylabel("events / s")
    top.set_ylim(bottom=0)
    top.set_title("Events learned per second between samples", fontsize=10)
    for key, label, color in (
        ("step_ms", "learn_many", "tab:green"),
        ("batch_ms", "whole micro-batch (all its processing)", "tab:purple"),
    ):
        _line(bottom, samples, xs, key, label=label, color=color)
    bottom.set_ylabel("mean ms")
    bottom.set_ylim(bottom=0)
    bottom.set_xlabel(f"wall time since the first sample ({unit})")
    for ax in (top, bottom):
        _mark_runs(ax, starts)
        ax.grid(alpha=0.3)
    bottom.set_xlim(left=0)
    bottom.legend(fontsize=8, loc="best")
    _save(fig, path)
    return None


def _bucket_label(le: str) -> str:
    if le == "+Inf":
        return "longer"
    v = float(le)
    if v < 1:
        return f"≤{v * 1000:g} ms"
    if v < 60:
        return f"≤{v:g} s"
    if v < 3600:
        return f"≤{v / 60:g} min"
    return f"≤{v / 3600:g} h"


def _duration(seconds: float) -> str:
    """``0.25 s`` → ``"250 ms"``, ``96_200_000`` → ``"3.05 years"``."""
    for unit, size in (("years", 365.25 * 86400), ("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.3g} s" if seconds >= 1 else f"{seconds * 1000:.3g} ms"


def freshness_histogram(samples: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Event freshness of all runs from their samples: ``{"bounds": [le, ...], "counts":
    [events per bucket], "count", "sum"}`` (None without live samples). Each process counts
    from zero, so the last sample of each run is added up."""
    last_of_run: dict[str, dict[str, Any]] = {}
    for s in samples:
        if s.get("freshness"):
            last_of_run[s.get("run", "")] = s["freshness"]
    if not last_of_run:
        return None
    totals: dict[str, int] = {}
    count, total_s = 0, 0.0
    for fresh in last_of_run.values():
        count += fresh["count"]
        total_s += fresh.get("sum") or 0.0
        for le, n in fresh["buckets"].items():
            totals[le] = totals.get(le, 0) + n
    bounds = sorted(totals, key=lambda le: math.inf if le == "+Inf" else float(le))
    cumulative = [totals[le] for le in bounds]
    counts = [c - p for c, p in zip(cumulative, [0, *cumulative[:-1]])]
    return {"bounds": bounds, "counts": counts, "count": count, "sum": total_s}


def _plot_freshness(samples: list[dict[str, Any]], path: Path) -> str | None:
    hist = freshness_histogram(samples)
    if hist is None:
        return (
            "no freshness measured: it is taken for live sources (sevo run) only; a replayed "
            "log's event times are history"
        )
    bounds, counts, count, total_s = hist["bounds"], hist["counts"], hist["count"], hist["sum"]
    fig, axes = _figure()
    ax = axes[0][0]
    labels = [_bucket_label(le) for le in bounds]
    ax.bar(range(len(counts)), counts, color="tab:cyan", edgecolor="tab:blue")
    ax.set_xticks(range(len(counts)), labels, rotation=45, ha="right", fontsize=8)
    ax.set_xlabel("freshness: wall clock when learned minus event time (upper bucket bound)")
    ax.set_ylabel("events")
    mean = _duration(total_s / count) if count else "?"
    ax.set_title(f"Event freshness of {count:,} live events (mean {mean})", fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    _save(fig, path)
    return None


def _plot_dead_letters(
    by_reason: dict[str, int], samples: list[dict[str, Any]], path: Path
) -> str | None:
    from matplotlib.ticker import MaxNLocator

    total = sum(by_reason.values())
    if not total:
        return "no dead letters: every record read was a valid event"
    reasons = sorted(by_reason, key=lambda r: (-by_reason[r], r))
    timed = [s for s in samples if s.get("dead_letters") is not None]
    show_time = len(timed) >= 2 and timed[-1]["dead_letters_total"] > timed[0]["dead_letters_total"]
    fig, axes = _figure(1, 2 if show_time else 1)
    ax = axes[0][0]
    ax.barh(range(len(reasons)), [by_reason[r] for r in reasons], color="tab:red")
    ax.set_yticks(range(len(reasons)), reasons, fontsize=8)
    ax.invert_yaxis()
    for i, r in enumerate(reasons):
        ax.annotate(f" {by_reason[r]:,}", (by_reason[r], i), va="center", fontsize=8)
    ax.set_xlabel("records")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(right=max(by_reason.values()) * 1.2)
    ax.set_title(f"Dead letters by reason ({total:,} in all)", fontsize=10)
    ax.grid(alpha=0.3, axis="x")
    if show_time:
        xs, unit, _ = _time_axis(timed)
        right = axes[0][1]
        right.stackplot(
            xs, [[s["dead_letters"].get(r, 0) for s in timed] for r in reasons], labels=reasons
        )
        right.yaxis.set_major_locator(MaxNLocator(integer=True))
        right.set_xlim(left=0)
        right.set_xlabel(f"wall time since the first sample ({unit})")
        right.set_ylabel("records (cumulative)")
        right.set_title("Dead letters over time", fontsize=10)
        right.grid(alpha=0.3)
        right.legend(fontsize=7, loc="upper left")
    _save(fig, path)
    return None


def _plot_rss(samples: list[dict[str, Any]], path: Path) -> str | None:
    pts = [s for s in samples if s.get("rss_bytes")]
    if len(pts) < 2:
        return "too few metrics samples with a resident set size for a memory plot"
    xs, unit, _ = _time_axis(pts)
    mib = 1024.0 * 1024.0
    fig, axes = _figure()
    ax = axes[0][0]
    _line(ax, pts, xs, "rss_bytes", scale=1 / mib, label="resident set")
    _line(
        ax,
        pts,
        xs,
        "peak_rss_bytes",
        scale=1 / mib,
        linestyle="--",
        marker=None,
        color="0.5",
        label="peak of the process",
    )
    _mark_runs(ax, _run_starts(pts, xs))
    ax.set_xlabel(f"wall time since the first sample ({unit})")
    ax.set_ylabel("MiB")
    top = max(max(s["rss_bytes"], s.get("peak_rss_bytes") or 0) for s in pts) / mib
    ax.set_ylim(0, top * 1.1)
    ax.set_xlim(left=0)
    ax.set_title("Resident set size of the engine process", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    _save(fig, path)
    return None


# ---------------------------------------------------------------------- the report
def _summary_rows(
    info: dict[str, Any],
    meta: dict[str, Any],
    preq: dict[str, Any] | None,
    samples: list[dict[str, Any]],
) -> list[tuple[str, str]]:
    cfg = info.get("config") or {}
    source = str(meta.get("source", "?"))
    rows = [
        ("data", source.removeprefix("file:")),
        ("model", str(cfg.get("model", "?"))),
        (
            "optimizer",
            f"{cfg.get('optimizer', '?')} (lr {cfg.get('lr', '?')}"
            + (
                f", ψ on the {cfg['sevo_smooth']}"
                if str(cfg.get("optimizer")).startswith("sevo") and cfg.get("sevo_smooth")
                else ""
            )
            + ")",
        ),
        ("events applied", f"{info['events_applied']:,}"),
        ("catalogue", f"{info['num_items']:,} items, {info['num_users']:,} users"),
        ("graph", f"{info['graph_nnz']:,} stored entries"),
        ("dead letters", f"{info['dead_letters']:,}"),
    ]
    if preq:
        k = next(key.split("@")[1] for key in preq if key.startswith("HR@"))
        rows.append(
            (
                "prequential",
                f"HR@{k} {preq[f'HR@{k}']:.4f}, NDCG@{k} {preq[f'NDCG@{k}']:.4f} "
                f"over {preq['events']:,} events",
            )
        )
    created = meta.get("created_at")
    when = (
        _dt.datetime.fromtimestamp(created, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        if isinstance(created, (int, float))
        else "?"
    )
    rows.append(("checkpoint", f"version {info['checkpoint_version']}, written {when}"))
    if samples:
        runs = len({s.get("run") for s in samples})
        span = samples[-1]["t"] - samples[0]["t"]
        last = samples[-1]
        rows.append(
            (
                "metrics samples",
                f"{len(samples):,} over {span:,.0f} s in {runs} run(s)",
            )
        )
        elapsed = last.get("elapsed_s") or 0.0
        if elapsed > 0 and last.get("events"):
            rows.append(
                (
                    "last run",
                    f"{last['events']:,} events in {elapsed:,.1f} s "
                    f"({last['events'] / elapsed:,.0f} events/s)",
                )
            )
        peak = max((s.get("peak_rss_bytes") or 0 for s in samples), default=0)
        if peak:
            rows.append(("peak resident set", f"{peak / 2**20:,.0f} MiB"))
    return rows


def _html(
    run_dir: Path,
    rows: list[tuple[str, str]],
    sections: list[tuple[str, str, str | None]],
    notes: list[str],
    preq: dict[str, Any] | None,
) -> str:
    esc = html.escape
    table = "\n".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows)
    body = []
    for name, title, note in sections:
        body.append(f"<h2>{esc(title)}</h2>")
        if note is None:
            body.append(f'<img src="{esc(name)}" alt="{esc(title)}">')
        else:
            body.append(f'<p class="note">{esc(note)}</p>')
    if preq and preq.get("windows"):
        k = next(key.split("@")[1] for key in preq if key.startswith("HR@"))
        lines = "\n".join(
            f"<tr><td>{w['start']:,}</td><td>{w['events']:,}</td>"
            f"<td>{w[f'HR@{k}']:.4f}</td><td>{w[f'NDCG@{k}']:.4f}</td></tr>"
            for w in preq["windows"]
            if w["events"]
        )
        body.append(
            "<details><summary>prequential windows</summary><table>"
            f"<tr><th>first event</th><th>events</th><th>HR@{k}</th><th>NDCG@{k}</th></tr>"
            f"\n{lines}</table></details>"
        )
    extra = "".join(f'<p class="note">{esc(n)}</p>' for n in notes)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>sevo report: {esc(str(run_dir))}</title>
<style>
body {{ font-family: sans-serif; max-width: 960px; margin: 2em auto; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ text-align: left; padding: 0.2em 1em 0.2em 0; border-bottom: 1px solid #ddd; }}
img {{ max-width: 100%; }}
.note {{ color: #666; font-style: italic; }}
</style>
</head>
<body>
<h1>sevo report</h1>
<p>Run directory <code>{esc(str(run_dir))}</code></p>
<table>
{table}
</table>
{extra}
{chr(10).join(body)}
</body>
</html>
"""


def write_report(run_dir: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Write the report of ``run_dir`` (a checkpoint directory) into ``out_dir``.

    Returns:
        ``{"index": path of index.html, "plots": [paths of the PNGs written],
        "notes": {png name: why it is missing}, "samples": n, "skipped_lines": n}``.

    Raises:
        FileNotFoundError: ``run_dir`` is not a directory or holds no valid checkpoint.
        ValueError: its newest checkpoint is not one of the online pipeline.
        ImportError: matplotlib is not installed.
    """
    import matplotlib  # noqa: F401  (fail early, before anything is written)

    from streaming.timeseries import read_samples

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    info, meta, preq = _load(run_dir)
    samples, skipped = read_samples(run_dir)
    samples.sort(key=lambda s: s["t"])
    out_dir.mkdir(parents=True, exist_ok=True)
    drawers = {
        "prequential.png": lambda p: _plot_prequential(preq, p),
        "throughput.png": lambda p: _plot_throughput(samples, p),
        "freshness.png": lambda p: _plot_freshness(samples, p),
        "dead_letters.png": lambda p: _plot_dead_letters(
            dict(info.get("dead_letters_by_reason") or {}), samples, p
        ),
        "rss.png": lambda p: _plot_rss(samples, p),
    }
    plots, notes, sections = [], {}, []
    for name, title in PLOTS.items():
        path = out_dir / name
        note = drawers[name](path)
        if note is None:
            plots.append(path)
        else:
            notes[name] = note
            path.unlink(missing_ok=True)  # not left over from an earlier report
        sections.append((name, title, note))
    general = []
    if not samples:
        general.append(
            "no metrics time series (metrics.jsonl) in this directory: the plots over time are "
            "missing"
        )
    if skipped:
        general.append(f"{skipped} line(s) of metrics.jsonl skipped (torn by a crash?)")
    page = _html(run_dir, _summary_rows(info, meta, preq, samples), sections, general, preq)
    index = out_dir / "index.html"
    index.write_text(page, encoding="utf-8")
    return {
        "index": str(index),
        "plots": [str(p) for p in plots],
        "notes": notes,
        "samples": len(samples),
        "skipped_lines": skipped,
    }


# ---------------------------------------------------------------------- the command
def _cmd_report(args: argparse.Namespace) -> int:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        log.error(
            "sevo report needs matplotlib: pip install 'sevo-engine[report]' "
            "(./scripts/bootstrap.sh installs it)"
        )
        return 2
    result = write_report(args.run_dir, args.out)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        for path in result["plots"]:
            print(path)
        for name, note in result["notes"].items():
            print(f"({name}: {note})")
        print(result["index"])
    return 0


def add_report(sub: argparse._SubParsersAction) -> None:
    """The ``sevo report`` subcommand."""
    p = sub.add_parser(
        "report",
        help="plot a run: prequential metrics, throughput, freshness, dead letters, memory",
        description="Reads the newest checkpoint and the metrics time series (metrics.jsonl) of "
        "a --checkpoint-dir of sevo replay or sevo run and writes PNG plots and an index.html "
        "that shows them with a summary of the run.",
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the run's --checkpoint-dir")
    p.add_argument("--out", type=Path, required=True, help="directory for the PNGs and index.html")
    p.add_argument("--json", action="store_true", help="print what was written as JSON")
    p.set_defaults(func=_cmd_report)
