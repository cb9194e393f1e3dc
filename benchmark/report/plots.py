"""Plots (matplotlib, Agg canvas, no pyplot state): PNG + deterministic SVG.

- ``<suite>_batch_size``: accuracy vs batch size per method (batch-size ablation runs);
- ``complexity``: loss forward/backward time and peak memory vs batch size (benchmark JSON);
- ``<suite>_curves``: top-1 vs epoch, one panel per pair, mean over seeds per method;
- ``<suite>_runtime``: stacked ms/iteration (data wait, teacher forward, student fwd/bwd, loss).
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from benchmark.store.atomic import atomic_path
from benchmark.store.records import STUDENT_ROW, TEACHER_ROW

from .load import RUNTIME_KEYS
from .model import ARROW, METHOD_ORDER, PairKey, SuiteTable, display_name, method_sort_key, safe_name

RC = {
    "svg.hashsalt": "kd-repro-bench",  # deterministic ids in the SVG
    "svg.fonttype": "none",  # text stays text: smaller and much faster than glyph paths
    "font.size": 8,
    "axes.titlesize": 9,
    "legend.fontsize": 7,
    "figure.dpi": 100,
}
PNG_METADATA = {"Software": None}
SVG_METADATA = {"Date": None, "Creator": None}
_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf")
RUNTIME_LABELS = {
    "data_wait_ms": "data wait",
    "teacher_forward_ms": "teacher forward",
    "student_forward_backward_ms": "student fwd/bwd",
    "distill_loss_ms": "distillation loss",
}


def method_color(method: str) -> str:
    if method == TEACHER_ROW:
        return "#000000"
    if method == STUDENT_ROW:
        return "#7f7f7f"
    rank = method_sort_key(method)
    index = rank[0] - 2 if method in METHOD_ORDER else len(METHOD_ORDER) - 2 + sum(map(ord, method))
    return _PALETTE[index % len(_PALETTE)]


def _grid(
    n: int, width: float = 4.0, height: float = 3.0, legend_rows: int = 0, sharey: bool = False
) -> tuple[Figure, list[Any]]:
    """A figure of ``n`` panels (3 a row) with fixed margins in inches (no tight_layout pass:
    it costs a full extra draw) and room for one figure legend below the panels."""
    cols = min(3, max(1, n))
    rows = math.ceil(n / cols)
    top_in, bottom_in, left_in, right_in = 0.75, 0.55 + 0.18 * legend_rows, 0.6, 0.15
    fig_w, fig_h = max(width * cols, 6.5), height * rows + top_in + bottom_in  # room for a 2-line title
    fig = Figure(figsize=(fig_w, fig_h))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False, sharey=sharey).ravel().tolist()
    fig.subplots_adjust(
        left=left_in / fig_w,
        right=1 - right_in / fig_w,
        bottom=bottom_in / fig_h,
        top=1 - top_in / fig_h,
        wspace=0.28,
        hspace=0.45,
    )
    for ax in axes[n:]:
        ax.set_visible(False)
    for ax in axes[:n]:  # few ticks: every tick is several artists to lay out, twice (PNG + SVG)
        ax.yaxis.set_major_locator(MaxNLocator(nbins=3))
    return fig, axes[:n]


def _figure_legend(fig: Figure, axes: list[Any], ncol: int = 5) -> None:
    """One legend for the figure (labels deduplicated, first-seen order), below the panels."""
    seen: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    if seen:
        fig.legend(
            list(seen.values()),
            list(seen.keys()),
            loc="lower center",
            ncol=min(ncol, len(seen)),
            frameon=False,
            bbox_to_anchor=(0.5, 0.0),
        )


def _legend_rows(n_labels: int, ncol: int = 5) -> int:
    return math.ceil(n_labels / ncol)


def save(fig: Figure, reports_dir: Path, stem: str) -> list[Path]:
    reports_dir.mkdir(parents=True, exist_ok=True)
    stem = safe_name(stem)
    png, svg = reports_dir / f"{stem}.png", reports_dir / f"{stem}.svg"
    with matplotlib.rc_context(RC):  # atomic writes: an interrupted aggregation leaves no half image
        with atomic_path(png) as tmp:
            fig.savefig(tmp, format="png", metadata=PNG_METADATA)
        with atomic_path(svg) as tmp:
            fig.savefig(tmp, format="svg", metadata=SVG_METADATA)
    return [png, svg]


def _pair_title(pair: PairKey) -> str:
    return f"{pair[0]} {ARROW} {pair[1]}"


def _group(records: pd.DataFrame) -> dict[tuple, pd.DataFrame]:
    """Runs by (teacher, student, method, recipe, epochs), each sorted by seed."""
    if records.empty:
        return {}
    keys = ["teacher", "student", "method", "recipe", "epochs"]
    ordered = records.sort_values(keys + ["seed", "path"], kind="stable")
    return {(t, s, m, r, int(e)): sel for (t, s, m, r, e), sel in ordered.groupby(keys, sort=False)}


def _finish(fig: Figure, axes: list[Any], title: str, ncol: int = 5, handles: list[Any] | None = None) -> None:
    if handles:
        fig.legend(
            handles=handles, loc="lower center", ncol=min(ncol, len(handles)), frameon=False, bbox_to_anchor=(0.5, 0.0)
        )
    else:
        _figure_legend(fig, axes, ncol)
    fig.suptitle(title)


# --------------------------------------------------------------------------- curves


def plot_curves(table: SuiteTable, records: pd.DataFrame, reports_dir: Path, metric_label: str = "top-1") -> list[Path]:
    """Top-1 (the suite's primary metric) vs epoch per pair: mean over seeds per method; the
    teacher's value as a dashed line."""
    groups = _group(records)
    teacher_row = next((r for r in table.rows if r.method == TEACHER_ROW), None)
    runs_rows = [r for r in table.rows if r.method != TEACHER_ROW]
    n_labels = len(runs_rows) + (teacher_row is not None)
    with matplotlib.rc_context(RC):
        fig, axes = _grid(len(table.pairs), legend_rows=_legend_rows(n_labels), sharey=True)
        for ax, pair in zip(axes, table.pairs):
            cell = teacher_row.cells.get(pair) if teacher_row is not None else None
            if cell is not None:
                ax.axhline(cell.mean, color="black", linestyle="--", linewidth=0.8, label="Teacher (final)")
            for row in runs_rows:
                runs = groups.get((pair[0], pair[1], row.method, row.recipe, row.epochs))
                if runs is None:
                    continue
                curves = [c for c in runs["curve_top1"] if len(c)]
                if not curves:
                    continue
                length = max(len(c) for c in curves)
                matrix = np.full((len(curves), length), np.nan)
                for i, curve in enumerate(curves):
                    matrix[i, : len(curve)] = curve
                epochs = next(e for e in runs["curve_epoch"] if len(e) == length)
                with np.errstate(all="ignore"), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    mean = np.nanmean(matrix, axis=0)
                ax.plot(
                    epochs,
                    mean,
                    color=method_color(row.method),
                    linewidth=1.1,
                    linestyle=":" if row.method == STUDENT_ROW else "-",
                    label=row.label,
                )
            ax.xaxis.set_major_locator(MaxNLocator(nbins=3, integer=True))
            ax.set_title(_pair_title(pair))
            ax.set_xlabel("epoch")
            if ax.get_subplotspec().is_first_col():
                ax.set_ylabel(f"{metric_label} (%)")
            ax.grid(True, alpha=0.3)
        _finish(fig, axes, f"{table.suite}: training curves (validation {metric_label}, mean over seeds)")
        return save(fig, reports_dir, f"{table.suite}_curves")


# --------------------------------------------------------------------------- runtime


def plot_runtime(table: SuiteTable, records: pd.DataFrame, reports_dir: Path) -> list[Path]:
    """Stacked ms/iteration per method (horizontal bars), one panel per pair; [] when no run has runtime."""
    timed = records[records["has_runtime"].astype(bool) & (records["method"] != TEACHER_ROW)]
    if timed.empty:
        return []
    groups = _group(timed)
    pairs = [p for p in table.pairs if any(k[:2] == p for k in groups)]
    rows = [r for r in table.rows if any(k[2:] == (r.method, r.recipe, r.epochs) for k in groups)]
    colors = ("#bbbbbb", "#4c72b0", "#55a868", "#c44e52")
    with matplotlib.rc_context(RC):
        # Methods on the shared y axis: their names are laid out once per row of panels.
        fig, axes = _grid(len(pairs), height=0.6 + 0.28 * len(rows), legend_rows=1, sharey=True)
        for ax, pair in zip(axes, pairs):
            y, stacks, memory = [], [], []
            for i, row in enumerate(rows):
                runs = groups.get((pair[0], pair[1], row.method, row.recipe, row.epochs))
                if runs is not None:
                    y.append(float(i))
                    stacks.append([float(runs[k].mean()) for k in RUNTIME_KEYS])
                    memory.append(float(runs["peak_memory_mb"].mean()))
            left = np.zeros(len(y))
            for k, key in enumerate(RUNTIME_KEYS):
                # One collection per component (ax.barh makes one Rectangle artist per bar).
                widths = np.array([st[k] for st in stacks])
                boxes = [
                    [(x0, yi - 0.35), (x0 + w, yi - 0.35), (x0 + w, yi + 0.35), (x0, yi + 0.35)]
                    for yi, x0, w in zip(y, left, widths)
                ]
                ax.add_collection(PolyCollection(boxes, facecolors=colors[k], edgecolors="none"))
                left += widths
            for yi, total, mem in zip(y, left, memory):
                text = f" {total:.1f} ms" + (f", {mem:.0f} MB" if math.isfinite(mem) else "")
                ax.text(total, yi, text, ha="left", va="center", fontsize=6)
            ax.set_yticks(np.arange(len(rows), dtype=float), [r.label for r in rows])
            ax.set_ylim(len(rows) - 0.5, -0.5)  # first method on top
            ax.set_xlim(0, max(float(left.max()) if len(left) else 0.0, 1e-3) * 1.45)
            ax.xaxis.set_major_locator(MaxNLocator(nbins=3))
            ax.set_xlabel("ms / iteration")
            ax.set_title(_pair_title(pair))
            ax.grid(True, axis="x", alpha=0.3)
        handles = [Patch(color=c, label=RUNTIME_LABELS[k]) for c, k in zip(colors, RUNTIME_KEYS)]
        _finish(
            fig,
            axes,
            f"{table.suite}: time per iteration (mean over runs; labels: total, peak memory)",
            handles=handles,
        )
        return save(fig, reports_dir, f"{table.suite}_runtime")


# --------------------------------------------------------------------------- batch size


def _describe_lr_rule(ablation: pd.DataFrame) -> str:
    rules = sorted({r for r in ablation["lr_rule"] if r})
    bases = sorted(
        {
            (b, lr)
            for b, lr in zip(ablation["base_batch_size"], ablation["base_lr"])
            if math.isfinite(b) and math.isfinite(lr)
        }
    )
    base = "; ".join(f"base B={b:g}, lr={lr:g}" for b, lr in bases)
    if rules == ["linear"]:
        text = "lr scaled linearly with batch size (lr = base_lr × B / base_B"
        return text + (f"; {base})" if base else ")")
    if rules:
        return f"lr rule: {', '.join(rules)}" + (f" ({base})" if base else "")
    return "lr rule not recorded"


def plot_batch_size(
    suite: str, ablation: pd.DataFrame, main: pd.DataFrame, reports_dir: Path, metric_label: str = "top-1"
) -> list[Path]:
    """Last-epoch top-1 (the suite's primary metric) vs batch size per method (log2 axis, error bars = std over seeds)."""
    if ablation.empty:
        return []
    pairs = sorted(set(zip(ablation["teacher"], ablation["student"])))
    main_groups = _group(main)
    configs_all = sorted(set(zip(ablation["method"], ablation["recipe"])), key=lambda c: (method_sort_key(c[0]), c[1]))
    with matplotlib.rc_context(RC):
        fig, axes = _grid(len(pairs), legend_rows=_legend_rows(len(configs_all)))
        for ax, pair in zip(axes, pairs):
            runs = ablation[(ablation["teacher"] == pair[0]) & (ablation["student"] == pair[1])]
            configs = sorted(
                set(zip(runs["method"], runs["recipe"], runs["epochs"])),
                key=lambda c: (method_sort_key(c[0]), c[1], c[2]),
            )
            ticks: set[int] = set()
            for method, recipe, epochs in configs:
                sel = runs[(runs["method"] == method) & (runs["recipe"] == recipe) & (runs["epochs"] == epochs)]
                # The base batch size may come from the main sweep (runs not flagged as ablation).
                bases = {int(b) for b in sel["base_batch_size"] if math.isfinite(b)}
                extra = main_groups.get((pair[0], pair[1], method, recipe, int(epochs)))
                if extra is not None:
                    sel = pd.concat([sel, extra[extra["batch_size"].isin(bases - set(sel["batch_size"]))]])
                stats = sel.groupby("batch_size")["last_top1"].agg(["mean", "std"]).sort_index()
                ticks.update(int(b) for b in stats.index)
                label = display_name(method) + ("" if len({c[1] for c in configs_all}) == 1 else f" ({recipe})")
                ax.errorbar(
                    stats.index.to_numpy(dtype=float),
                    stats["mean"].to_numpy(),
                    yerr=stats["std"].fillna(0.0).to_numpy(),
                    color=method_color(method),
                    marker="o",
                    markersize=3,
                    capsize=2,
                    linewidth=1.1,
                    label=label,
                )
            ax.set_xscale("log", base=2)
            ax.set_xticks(sorted(ticks), [str(t) for t in sorted(ticks)])
            ax.minorticks_off()
            ax.set_xlabel("batch size")
            ax.set_ylabel(f"{metric_label} (%), last epoch")
            ax.set_title(_pair_title(pair))
            ax.grid(True, alpha=0.3)
        _finish(
            fig,
            axes,
            f"{suite}: {'accuracy' if metric_label == 'top-1' else metric_label} vs batch size (error bars: std over seeds)\n"
            f"{_describe_lr_rule(ablation)}",
        )
        return save(fig, reports_dir, f"{suite}_batch_size")


# --------------------------------------------------------------------------- loss complexity


def load_complexity(path: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Read the loss-complexity benchmark JSON; raises ValueError when unusable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"unreadable ({type(exc).__name__})") from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), list):
        raise ValueError("no 'results' list")
    rows = []
    for item in data["results"]:
        if not isinstance(item, dict):
            continue
        try:
            rows.append(
                {
                    "method": str(item["method"]),
                    "batch_size": int(item["batch_size"]),
                    "n_data": "" if item.get("n_data") is None else str(item["n_data"]),
                    "forward_backward_ms": float(item["forward_backward_ms"]),
                    "peak_memory_mb": float(item["peak_memory_mb"])
                    if item.get("peak_memory_mb") is not None
                    else math.nan,
                }
            )
        except (KeyError, TypeError, ValueError):
            continue
    if not rows:
        raise ValueError("no usable results")
    env = data.get("env") if isinstance(data.get("env"), dict) else {}
    return pd.DataFrame(rows), env


def _number_or_text(text: str) -> tuple[float, str]:
    try:
        return (float(text), "")
    except ValueError:
        return (math.inf, text)


def plot_complexity(path: Path, reports_dir: Path) -> list[Path]:
    frame, env = load_complexity(path)
    with matplotlib.rc_context(RC):
        configs = sorted(
            set(zip(frame["method"], frame["n_data"])), key=lambda c: (method_sort_key(c[0]), _number_or_text(c[1]))
        )
        fig, axes = _grid(2, width=4.6, legend_rows=_legend_rows(len(configs)))
        ticks = sorted(set(frame["batch_size"]))
        for ax, column, ylabel in zip(
            axes, ("forward_backward_ms", "peak_memory_mb"), ("loss forward + backward (ms)", "peak memory (MB)")
        ):
            variant: dict[str, int] = {}
            for method, n_data in configs:
                style = ("-", "--", ":", "-.")[variant.get(method, 0) % 4]  # CRD per memory-bank size
                variant[method] = variant.get(method, 0) + 1
                sel = frame[(frame["method"] == method) & (frame["n_data"] == n_data)]
                sel = sel.groupby("batch_size")[column].mean().dropna().sort_index()
                if sel.empty:
                    continue
                label = display_name(method) + (f" (N={n_data})" if n_data else "")
                ax.plot(
                    sel.index.to_numpy(dtype=float),
                    sel.to_numpy(),
                    marker="o",
                    markersize=3,
                    color=method_color(method),
                    label=label,
                    linewidth=1.2,
                    linestyle=style,
                )
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xticks(ticks, [str(t) for t in ticks])
            ax.minorticks_off()
            ax.set_xlabel("batch size")
            ax.set_ylabel(ylabel)
            ax.grid(True, alpha=0.3)
        where = ", ".join(f"{k}={env[k]}" for k in ("device", "torch") if k in env)
        _finish(fig, axes, "Distillation loss cost vs batch size" + (f" ({where})" if where else ""))
        return save(fig, reports_dir, "complexity")
