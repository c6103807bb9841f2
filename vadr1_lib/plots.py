"""Figures for the notebooks and the README, defined once.

Every function returns a matplotlib ``Figure`` and, given ``save_to``, also writes it as a
PNG so papermill runs leave the figures behind for reports: a bare file name lands in the
profile's ``runs/<profile>/figures/`` (``notebook.setup`` points there; ``VADR1_FIGURES``
moves it).
Matplotlib uses the non-interactive Agg backend unless a notebook already chose one.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

if matplotlib.get_backend().lower() not in {"module://matplotlib_inline.backend_inline", "nbagg", "widget", "ipympl"}:
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from vadr1_lib import paths  # noqa: E402

Box = tuple[int, int, int, int]
Span = tuple[float, float]
NOTEBOOK_WIDTH = 11.0  # inches: about what a notebook shows at 100 % without shrinking

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
    # At most NOTEBOOK_WIDTH inches wide: wider figures are shrunk to the notebook's width
    # and their thumbnails become unreadable, so more frames make more rows instead.
    cell = min(1.9, NOTEBOOK_WIDTH / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(cell * columns, cell * rows * frames.shape[1] / frames.shape[2] + 0.4),
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


def curve_panels(runs: Mapping[str, Mapping[str, Sequence[float]]], panels: Sequence[tuple[str, str]], *,
                 title: str = "", smooth: int = 0, columns: int = 3, save_to: str | Path | None = None) -> Figure:
    """One small panel per logged quantity (``panels``: key, panel title), every run drawn on
    the same axes of each panel with the same colour throughout: how two trainings differ,
    quantity by quantity. A key a run did not log is left out of that panel (plain GRPO has
    no AVA reward); ``smooth`` as in :func:`curves`."""
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(NOTEBOOK_WIDTH, 2.6 * rows), squeeze=False)
    colours = {name: f"C{i}" for i, name in enumerate(runs)}
    for ax, (key, panel_title) in zip(axes.flat, panels):
        for name, logged in runs.items():
            values = logged.get(key)
            if not values:
                continue
            steps = np.arange(1, len(values) + 1)
            if smooth > 1:
                ax.plot(steps, values, color=colours[name], alpha=0.2)
                ax.plot(steps, moving_average(values, smooth), color=colours[name], label=name)
            else:
                ax.plot(steps, values, color=colours[name], label=name)
        ax.set_title(panel_title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    handles, labels = next(((h, l) for h, l in (ax.get_legend_handles_labels() for ax in axes.flat) if h), ([], []))
    if handles:
        fig.legend(handles, labels, loc="upper right", fontsize=8)
    fig.suptitle(title + (f" ({smooth}-step means over the faint per-step values)" if smooth > 1 else ""), fontsize=10)
    fig.tight_layout()
    return _save(fig, save_to)


def taxonomy_tree(tree: Mapping[str, Mapping[str, Sequence[str]]], *, counts: Mapping[str, int] | None = None,
                  columns: int = 3, save_to: str | Path | None = None) -> Figure:
    """Types -> main classes -> sub classes as an indented chart, with counts when given.

    A main class and its sub classes stay together in one column; a type that goes on into
    the next column is named again there ("(continued)")."""
    blocks: list[tuple[str, list[tuple[int, str]]]] = []  # (type, lines of one main class)
    for type_name, mains in tree.items():
        for main_name, subs in mains.items():
            suffix = (lambda sub: f"  ({counts.get(sub, 0)})") if counts is not None else (lambda sub: "")
            blocks.append((type_name, [(1, main_name)] + [(2, sub + suffix(sub)) for sub in subs]))
    target = (sum(len(lines) for _, lines in blocks) + len(tree)) / columns
    laid_out: list[list[tuple[int, str]]] = [[]]
    shown_type: str | None = None
    for type_name, lines in blocks:
        header = [] if type_name == shown_type else [(0, type_name)]
        if laid_out[-1] and len(laid_out[-1]) + len(header) + len(lines) > target and len(laid_out) < columns:
            laid_out.append([])
            header = [(0, type_name + ("" if type_name != shown_type else " (continued)"))]
        laid_out[-1] += header + lines
        shown_type = type_name
    rows = max(len(column) for column in laid_out)
    fig, ax = plt.subplots(figsize=(13, 0.2 * rows + 0.8))
    ax.axis("off")
    styles = {0: dict(fontsize=11, fontweight="bold", color="black"),
              1: dict(fontsize=9.5, fontweight="bold", color="tab:blue"),
              2: dict(fontsize=9, color="dimgray")}
    for column, lines in enumerate(laid_out):
        for row, (level, text) in enumerate(lines):
            ax.text(column / columns + 0.02 * level, 1 - row / rows, text, transform=ax.transAxes, va="top", **styles[level])
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


def span_timelines(items: Sequence[tuple[str, Span | None, Span | None]], *, title: str = "",
                   save_to: str | Path | None = None) -> Figure:
    """One row per video on a 0-1 time axis: the true anomaly span above, a predicted one below."""
    return spans_by_model([(label, truth, {"predicted": pred}) for label, truth, pred in items], title=title,
                          save_to=save_to)


def spans_by_model(items: Sequence[tuple[str, Span | None, Mapping[str, Span | None]]], *, title: str = "",
                   save_to: str | Path | None = None) -> Figure:
    """One row per video on a 0-1 time axis: the true anomaly span on top, then each model's
    predicted span (None: that model said Normal or wrote no valid span). Every model is in
    the legend, also one that drew no bar at all."""
    models = list(dict.fromkeys(name for _, _, spans in items for name in spans))
    bars = 1 + len(models)
    height = 0.8 / bars
    colours = dict(zip(models, ["tab:blue", "tab:green", "tab:purple", "tab:orange", "tab:brown", "tab:gray"]))
    fig, ax = plt.subplots(figsize=(7.5, (0.22 * bars + 0.15) * len(items) + 1.0))
    labelled: set[str] = set()
    for row, (label, truth, spans) in enumerate(items):
        y = len(items) - 1 - row
        ax.plot([0, 1], [y - 0.45, y - 0.45], color="lightgray", linewidth=0.8)
        for k, (name, span) in enumerate([("true", truth), *[(m, spans.get(m)) for m in models]]):
            if span:
                ax.barh(y + 0.4 - (k + 0.5) * height, span[1] - span[0], left=span[0], height=height * 0.9,
                        color="tab:red" if name == "true" else colours[name])
                labelled.add(name)
    ax.set_yticks(range(len(items)))
    ax.set_yticklabels([label for label, _, _ in reversed(items)], fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.6, len(items) - 0.4)
    ax.set_xlabel("time (fraction of the video)")
    ax.set_title(title)
    from matplotlib.patches import Patch

    handles = [Patch(color="tab:red", label="true")] + [
        Patch(color=colours[m], label=m if m in labelled else f"{m} (no span in these rows)") for m in models]
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
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


def _text_box(ax: Any, text: str, *, title: str = "", width: int = 46, colour: str = "whitesmoke") -> None:
    """A panel of wrapped text (a chain-of-thought step, an answer) on an empty axis."""
    ax.axis("off")
    body = "\n".join(textwrap.fill(line, width) for line in text.splitlines() if line.strip())
    ax.text(0.0, 1.0, (f"{title}\n" if title else "") + body, va="top", ha="left", fontsize=8, family="monospace",
            transform=ax.transAxes, wrap=True,
            bbox=dict(boxstyle="round,pad=0.5", facecolor=colour, edgecolor="lightgray"))


def text_panels(texts: Mapping[str, str], *, title: str = "", width: int = 52, max_chars: int = 900,
                save_to: str | Path | None = None) -> Figure:
    """Texts side by side in boxes, each under its name: what two models wrote for the same
    input. A text longer than ``max_chars`` is cut there (the figure says so)."""
    fig, axes = plt.subplots(1, len(texts), figsize=(NOTEBOOK_WIDTH, 4.8), squeeze=False)
    for ax, (name, text) in zip(axes[0], texts.items()):
        ax.axis("off")
        shown = text if len(text) <= max_chars else text[:max_chars] + f" … [{len(text) - max_chars} more characters]"
        _text_box(ax, shown.strip() or "(nothing but blank lines)", title=name, width=width)
    fig.suptitle(title, fontsize=10)
    return _save(fig, save_to)


def pipeline(steps: Sequence[tuple[str, Sequence[str]]], *, title: str = "",
             save_to: str | Path | None = None) -> Figure:
    """The method as boxes joined by arrows, each with what this run holds at that step
    (clips, steps, scores): ``[("footage", ["vtest.avi, 795 frames"]), ("data", [...]), ...]``."""
    fig, ax = plt.subplots(figsize=(NOTEBOOK_WIDTH, 2.3))
    ax.axis("off")
    width = 1 / len(steps)
    for i, (name, lines) in enumerate(steps):
        x = i * width + width / 2
        ax.text(x, 0.5, name + "\n\n" + "\n".join(textwrap.fill(line, 22) for line in lines), ha="center", va="center",
                fontsize=8, transform=ax.transAxes,
                bbox=dict(boxstyle="round,pad=0.6", facecolor=plt.cm.Blues(0.15 + 0.12 * i), edgecolor="tab:blue"))
        if i:
            ax.annotate("", xy=(x - width * 0.42, 0.5), xytext=(x - width * 0.58, 0.5), xycoords="axes fraction",
                        arrowprops=dict(arrowstyle="-|>", color="tab:blue", lw=1.5))
    ax.set_title(title)
    return _save(fig, save_to)


def p2c_steps(frames: np.ndarray, steps: Sequence[tuple[str, str]], *, answer: str = "", title: str = "",
              frame_indices: Sequence[int] | None = None, save_to: str | Path | None = None) -> Figure:
    """P2C-CoT on one clip: a row of its frames, then the four steps of the reasoning from
    perception (what is seen, where) to cognition (what it means), and the answer.
    ``frame_indices`` numbers each frame by its place in the video (the numbering every other
    figure uses); without it, by its place in ``frames``."""
    panels = [(f"step {k + 1}: {name}", text) for k, (name, text) in enumerate(steps)]
    panels += [("answer", answer)] if answer else []
    wrapped = [textwrap.fill(" ".join(text.split()), 120) for _, text in panels]
    heights = [0.25 + 0.16 * (body.count("\n") + 2) for body in wrapped]
    fig = plt.figure(figsize=(NOTEBOOK_WIDTH, 1.9 + sum(heights)), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.9, sum(heights)])
    shown = np.linspace(0, len(frames) - 1, min(len(frames), 8)).round().astype(int)
    for ax, index in zip(top.subplots(1, len(shown), squeeze=False)[0], shown):
        ax.imshow(frames[index])
        ax.set_title(f"frame {frame_indices[index] if frame_indices is not None else index}", fontsize=7)
        ax.axis("off")
    colours = ["#e8f1fb", "#d6e6f7", "#fbeee0", "#f7dcc4", "#e6f4e6"]
    axes = bottom.subplots(len(panels), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
    for k, (ax, (name, _), body) in enumerate(zip(axes, panels, wrapped)):
        _text_box(ax, body, title=name, width=200, colour=colours[-1] if name == "answer" else colours[k % 4])
    fig.suptitle(title)
    return _save(fig, save_to)


def grpo_group(components: Mapping[str, Sequence[float]], advantages: Sequence[float], *,
               labels: Sequence[str] | None = None, title: str = "", save_to: str | Path | None = None) -> Figure:
    """One GRPO group: each completion's (weighted) rewards stacked by component with the
    group mean, and beside it the advantage each completion gets (reward minus the mean,
    over the spread): the only signal the policy gradient sees."""
    count = len(advantages)
    labels = list(labels) if labels is not None else [f"#{i}" for i in range(count)]
    fig, (left, right) = plt.subplots(1, 2, figsize=(NOTEBOOK_WIDTH * 0.85, 3.4), layout="constrained")
    above, below = np.zeros(count), np.zeros(count)  # positive parts stack up from 0, negative ones down
    for name, values in components.items():
        values = np.asarray(values, dtype=float)
        left.bar(labels, values, bottom=np.where(values >= 0, above, below), label=name)
        above += np.clip(values, 0, None)
        below += np.clip(values, None, 0)
    total = (above + below).mean()
    left.axhline(total, color="black", linestyle="--", linewidth=1, label=f"group mean {total:.2f}")
    left.set_ylabel("reward")
    left.set_title("rewards by component")
    left.legend(fontsize=7)
    colours = ["tab:green" if a > 0 else "tab:red" if a < 0 else "tab:gray" for a in advantages]
    right.bar(labels, advantages, color=colours)
    right.axhline(0, color="black", linewidth=0.8)
    right.set_title("advantage (pushes the completion up if > 0)")
    for ax in (left, right):
        ax.tick_params(axis="x", labelsize=7)
    fig.suptitle(title)
    return _save(fig, save_to)


def ava_flow(frames: np.ndarray, cut: Sequence[int], kept: Sequence[int], *, claim: str, answer_after: str,
             reward: float, reason: str = "", title: str = "", save_to: str | Path | None = None) -> Figure:
    """Anomaly verification on real frames: the clip with the frames the check cuts marked
    (an abnormal claim's own span; for a Normal claim a harmless head or tail), the frames
    the model is re-asked on, and the claim, its answer to the cut clip and the reward.
    ``cut`` and ``kept`` are frame indices (``video.covered_frames`` gives the cut ones)."""
    shown = np.linspace(0, len(frames) - 1, min(len(frames), 8)).round().astype(int)
    texts_height = 0.35 + 0.15 * max(textwrap.fill(t, 34).count("\n") + 2 for t in (claim, answer_after, reason))
    fig = plt.figure(figsize=(NOTEBOOK_WIDTH, 3.2 + texts_height), layout="constrained")
    rows = fig.subfigures(3, 1, height_ratios=[1.6, 1.6, texts_height])
    cut = set(cut)
    for row, indices, name in ((rows[0], shown, "1. the clip; red: the frames the check cuts"),
                               (rows[1], np.asarray(kept)[np.linspace(0, len(kept) - 1, min(len(kept), 8)).round().astype(int)]
                                if len(kept) else np.array([], dtype=int), "2. what is left after the cut: the frames the model is re-asked on")):
        axes = row.subplots(1, max(len(indices), 1), squeeze=False)[0]
        for ax, index in zip(axes, indices):
            ax.imshow(frames[index])
            ax.set_title(f"frame {index}", fontsize=7, color="tab:red" if index in cut else "black")
            if index in cut:
                for spine in ax.spines.values():
                    spine.set_edgecolor("tab:red")
                    spine.set_linewidth(3)
            ax.set_xticks([])
            ax.set_yticks([])
        if not len(indices):
            axes[0].axis("off")
        row.suptitle(name, fontsize=9, x=0.01, ha="left")
    texts = rows[2].subplots(1, 3)
    _text_box(texts[0], claim, title="claim", width=34, colour="#fbeee0")
    _text_box(texts[1], answer_after, title="3. answer on the cut clip", width=34, colour="#e8f1fb")
    _text_box(texts[2], f"{reward:+.2f}" + (f"\n{reason}" if reason else ""), title="4. AVA reward", width=34,
              colour="#e6f4e6" if reward > 0 else "#f7dcc4" if reward < 0 else "whitesmoke")
    fig.suptitle(title)
    return _save(fig, save_to)


def verdict_histograms(probabilities: Mapping[str, tuple[Sequence[float], Sequence[float]]], *, title: str = "",
                       save_to: str | Path | None = None) -> Figure:
    """Per model (before and after each stage), the Abnormal probability at the deciding
    token for normal clips and for abnormal clips: separated histograms mean the verdict
    follows the video; overlapping ones mean it does not."""
    fig, axes = plt.subplots(1, len(probabilities), figsize=(min(NOTEBOOK_WIDTH, 3.2 * len(probabilities)), 2.9),
                             sharey=True, squeeze=False, layout="constrained")
    bins = np.linspace(0, 1, 21)
    for ax, (name, (normal, abnormal)) in zip(axes[0], probabilities.items()):
        ax.hist([p for p in normal if p is not None], bins=bins, alpha=0.6, color="tab:blue", label="normal clips")
        ax.hist([p for p in abnormal if p is not None], bins=bins, alpha=0.6, color="tab:red", label="abnormal clips")
        ax.axvline(0.5, color="black", linewidth=0.8, linestyle=":")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("P(Abnormal) at the deciding token", fontsize=8)
    axes[0][0].set_ylabel("clips")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title)
    return _save(fig, save_to)


def iou_sketch(cases: Sequence[tuple[str, Span, Span, float, float]], *, title: str = "",
               save_to: str | Path | None = None) -> Figure:
    """Temporal IoU drawn: per case (name, true span, predicted span, the release's IoU, the
    IoU over the union), both spans on a 0-1 axis with the overlap shaded and the hull
    (min start to max end), the release's denominator, bracketed."""
    fig, ax = plt.subplots(figsize=(NOTEBOOK_WIDTH * 0.75, 0.75 * len(cases) + 0.8))
    for row, (name, truth, pred, release_iou, union_iou) in enumerate(cases):
        y = len(cases) - 1 - row
        ax.barh(y + 0.15, truth[1] - truth[0], left=truth[0], height=0.25, color="tab:red", label="true" if row == 0 else None)
        ax.barh(y - 0.15, pred[1] - pred[0], left=pred[0], height=0.25, color="tab:blue",
                label="predicted" if row == 0 else None)
        low, high = max(truth[0], pred[0]), min(truth[1], pred[1])
        if high > low:
            ax.fill_betweenx([y - 0.3, y + 0.3], low, high, color="gold", alpha=0.5, zorder=3,
                             label="overlap" if row == 0 else None)
        hull = (min(truth[0], pred[0]), max(truth[1], pred[1]))
        ax.annotate("", xy=(hull[0], y - 0.38), xytext=(hull[1], y - 0.38),
                    arrowprops=dict(arrowstyle="|-|", color="dimgray", lw=1, shrinkA=0, shrinkB=0))
        ax.text(1.02, y, f"release (hull) {release_iou:.2f}\nunion {union_iou:.2f}", va="center", fontsize=7,
                transform=ax.get_yaxis_transform())
    ax.set_yticks(range(len(cases)))
    ax.set_yticklabels([c[0] for c in reversed(cases)], fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.6, len(cases) - 0.4)
    ax.set_xlabel("time (fraction of the video); bracket = hull, the release's denominator")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.2, 1.0))
    ax.set_title(title)
    fig.tight_layout()
    return _save(fig, save_to)


def grouped_bars(values: Mapping[str, Mapping[str, float]], *, title: str = "", ylabel: str = "",
                 save_to: str | Path | None = None) -> Figure:
    """Bars grouped by model, one colour per metric (e.g. release vs strict mIoU), value on top."""
    models = list(values)
    metrics = list(dict.fromkeys(m for v in values.values() for m in v))
    width = 0.8 / len(metrics)
    fig, ax = plt.subplots(figsize=(min(NOTEBOOK_WIDTH, 1.4 * len(models) + 2.5), 3.2))
    for k, metric in enumerate(metrics):
        xs = np.arange(len(models)) + (k - (len(metrics) - 1) / 2) * width
        heights = [values[m].get(metric, np.nan) for m in models]
        bars = ax.bar(xs, heights, width * 0.95, label=metric)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(range(len(models)), models)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.1)
    ax.legend(fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    return _save(fig, save_to)
