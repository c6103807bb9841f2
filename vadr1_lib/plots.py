"""Figures for the notebooks and the README, defined once.

Every function returns a matplotlib ``Figure`` and, given ``save_to``, also writes it as a
PNG so papermill runs leave the figures behind for reports: a bare file name lands in the
profile's ``runs/<profile>/figures/`` (``notebook.setup`` points there; ``VADR1_FIGURES``
moves it).
Matplotlib uses the non-interactive Agg backend unless a notebook already chose one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

if matplotlib.get_backend().lower() not in {"module://matplotlib_inline.backend_inline", "nbagg", "widget", "ipympl"}:
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from vadr1_lib import paths  # noqa: E402

Box = tuple[int, int, int, int]

_figures_folder: Path | None = None  # set by save_figures_to (notebook.setup); else paths.figures_dir()


def save_figures_to(folder: Path) -> None:
    """Where figures saved by bare file name go from now on."""
    global _figures_folder
    _figures_folder = Path(folder)


def _save(fig: Figure, save_to: str | Path | None) -> Figure:
    if save_to is not None:
        path = Path(save_to)
        if not path.is_absolute() and path.parent == Path("."):
            path = (_figures_folder or paths.figures_dir()) / path
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110, bbox_inches="tight")
    return fig


def frame_grid(frames: np.ndarray, titles: Sequence[str] | None = None, *, boxes: Sequence[Box | None] | None = None,
               columns: int = 8, suptitle: str | None = None, save_to: str | Path | None = None) -> Figure:
    """Frames (T, H, W, 3) in a grid, optionally with a red box drawn on some of them."""
    count = len(frames)
    columns = min(columns, count)
    rows = -(-count // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(1.9 * columns, 1.9 * rows * frames.shape[1] / frames.shape[2] + 0.4),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= count:
            continue
        ax.imshow(frames[i])
        if titles is not None:
            ax.set_title(titles[i], fontsize=8)
        if boxes is not None and boxes[i] is not None:
            x0, y0, x1, y1 = boxes[i]
            ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="red", linewidth=1.5))
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return _save(fig, save_to)


def bar_counts(counts: Mapping[str, float], *, title: str = "", xlabel: str = "", horizontal: bool = True,
               save_to: str | Path | None = None) -> Figure:
    """A sorted bar chart of name -> count (category distributions, split sizes)."""
    items = sorted(counts.items(), key=lambda kv: kv[1])
    names, values = [k for k, _ in items], [v for _, v in items]
    height = max(2.5, 0.22 * len(items) + 1) if horizontal else 3.5
    fig, ax = plt.subplots(figsize=(7, height))
    if horizontal:
        ax.barh(names, values, color="tab:blue")
        ax.set_xlabel(xlabel)
    else:
        ax.bar(names, values, color="tab:blue")
        ax.set_ylabel(xlabel)
        ax.tick_params(axis="x", rotation=45)
    ax.set_title(title)
    fig.tight_layout()
    return _save(fig, save_to)


def histogram(values: Sequence[float], *, bins: int = 20, title: str = "", xlabel: str = "",
              save_to: str | Path | None = None) -> Figure:
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.hist(values, bins=bins, color="tab:blue", edgecolor="white")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("videos")
    fig.tight_layout()
    return _save(fig, save_to)


def moving_average(values: Sequence[float], window: int) -> np.ndarray:
    """The mean of each value and the ``window - 1`` before it (fewer at the start)."""
    values = np.asarray(values, dtype=float)
    sums = np.cumsum(np.insert(values, 0, 0.0))
    starts = np.maximum(np.arange(1, len(values) + 1) - window, 0)
    return (sums[1:] - sums[starts]) / (np.arange(1, len(values) + 1) - starts)


def curves(series: Mapping[str, tuple[Sequence[float], Sequence[float]]], *, title: str = "", xlabel: str = "step",
           ylabel: str = "", smooth: int = 0, save_to: str | Path | None = None) -> Figure:
    """Several named (x, y) curves on one axis: losses, rewards by component. With ``smooth``
    > 1, each curve is drawn faintly and its moving average over ``smooth`` points on top
    (a per-step reward over a few videos is mostly noise; the trend is what RL changes)."""
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    for name, (xs, ys) in series.items():
        if smooth > 1:
            line, = ax.plot(xs, ys, alpha=0.25)
            ax.plot(xs, moving_average(ys, smooth), color=line.get_color(), label=f"{name} ({smooth}-step mean)")
        else:
            ax.plot(xs, ys, marker="." if len(xs) < 40 else None, label=name)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if len(series) > 1:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, save_to)


def taxonomy_tree(tree: Mapping[str, Mapping[str, Sequence[str]]], *, counts: Mapping[str, int] | None = None,
                  save_to: str | Path | None = None) -> Figure:
    """Types -> main classes -> sub classes as an indented chart, with counts when given."""
    lines: list[tuple[int, str]] = []
    for type_name, mains in tree.items():
        lines.append((0, type_name))
        for main_name, subs in mains.items():
            lines.append((1, main_name))
            for sub in subs:
                suffix = f"  ({counts.get(sub, 0)})" if counts is not None else ""
                lines.append((2, sub + suffix))
    per_column = -(-len(lines) // 3)
    fig, ax = plt.subplots(figsize=(13, 0.2 * per_column + 0.8))
    ax.axis("off")
    styles = {0: dict(fontsize=11, fontweight="bold", color="black"),
              1: dict(fontsize=9.5, fontweight="bold", color="tab:blue"),
              2: dict(fontsize=9, color="dimgray")}
    for i, (level, text) in enumerate(lines):
        column, row = divmod(i, per_column)
        ax.text(column / 3 + 0.02 * level, 1 - row / per_column, text, transform=ax.transAxes, va="top", **styles[level])
    fig.tight_layout()
    return _save(fig, save_to)


def token_roles(roles: Sequence[str], *, title: str = "", save_to: str | Path | None = None) -> Figure:
    """One training sequence as a coloured strip: which tokens are prompt, video, or carry loss."""
    palette = {"prompt": (0.75, 0.75, 0.75), "video": (0.55, 0.75, 0.95), "loss": (0.95, 0.55, 0.3),
               "padding": (1.0, 1.0, 1.0)}
    present = [name for name in palette if name in set(roles)]
    strip = np.array([[palette[r] for r in roles]])
    # Constrained layout makes room for the legend beside the strip (tight_layout could not,
    # and warned).
    fig, ax = plt.subplots(figsize=(10, 1.5), layout="constrained")
    ax.imshow(strip, aspect="auto", interpolation="nearest")
    ax.set_yticks([])
    ax.set_xlabel("token position")
    ax.set_title(title)
    handles = [plt.Rectangle((0, 0), 1, 1, color=palette[name]) for name in present]
    ax.legend(handles, present, loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    return _save(fig, save_to)


def span_timelines(items: Sequence[tuple[str, tuple[float, float] | None, tuple[float, float] | None]], *,
                   title: str = "", save_to: str | Path | None = None) -> Figure:
    """One row per video on a 0-1 time axis: the true anomaly span above, a predicted one below."""
    fig, ax = plt.subplots(figsize=(7, 0.42 * len(items) + 1.0))
    for row, (label, truth, pred) in enumerate(items):
        y = len(items) - 1 - row
        ax.plot([0, 1], [y, y], color="lightgray", linewidth=1)
        if truth:
            ax.barh(y + 0.14, truth[1] - truth[0], left=truth[0], height=0.25, color="tab:red", label="true" if row == 0 else None)
        if pred:
            ax.barh(y - 0.14, pred[1] - pred[0], left=pred[0], height=0.25, color="tab:blue",
                    label="predicted" if not any(p for _, _, p in items[:row]) else None)
    ax.set_yticks(range(len(items)))
    ax.set_yticklabels([label for label, _, _ in reversed(items)], fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("time (fraction of the video)")
    ax.set_title(title)
    if any(t for _, t, _ in items) or any(p for _, _, p in items):
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return _save(fig, save_to)


def confusion_matrix(matrix: Sequence[Sequence[int]], labels: Sequence[str], *, title: str = "",
                     save_to: str | Path | None = None) -> Figure:
    """Counts of (true row, predicted column), annotated in each cell."""
    data = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(labels), 1.0 + 0.8 * len(labels)))
    ax.imshow(data, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (i, j), value in np.ndenumerate(data):
        ax.text(j, i, str(value), ha="center", va="center", color="white" if value > data.max() / 2 else "black")
    ax.set_title(title)
    fig.tight_layout()
    return _save(fig, save_to)
