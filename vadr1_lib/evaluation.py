"""Scoring a predictions file against ground truth: the release's figures and strict ones.

This is the single place where completions meet the metrics: each prediction is parsed
once by :func:`vadr1_lib.parsing.parse_completion` (the parser the rewards use too) and
the parsed values go to :mod:`vadr1_lib.metrics`.

Predictions may come from ``infer`` (rows with ``id`` and ``text``) or be a release-format
file (``think`` + ``answer``), so ground truth can be scored against itself as a check that
every figure reaches its maximum.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vadr1_lib import dataset, metrics, parsing, taxonomy

# Figures that get a bootstrap confidence interval (the ones tables report).
CI_FIGURES = ("detection.accuracy", "detection.f1", "temporal.miou", "strict.temporal.miou", "text.bleu2", "text.meteor")


def load_prediction_texts(path: Path) -> dict[str, str]:
    """``source/video`` -> completion text, from ``infer`` output or a release-format file."""
    texts: dict[str, str] = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
        if "text" in row and "id" in row:
            texts[row["id"]] = row["text"]
        elif "think" in row and "answer" in row:
            texts[f"{row['source']}/{row['video']}"] = row["think"] + "\n" + row["answer"]
        else:
            raise ValueError(f"{path}:{number}: neither a prediction (id, text) nor a release row (think, answer)")
    return texts


@dataclass(frozen=True)
class VideoScore:
    """Everything measured on one test video, kept so that any figure can be bootstrapped."""

    id: str
    format_valid: bool
    gt_abnormal: bool
    pred_abnormal: bool
    gt_category: str
    pred_category: str
    release_iou: float
    strict_iou: float | None  # abnormal ground truth only
    text: dict[str, float] | None


def score_videos(texts: dict[str, str], truth: Sequence[dataset.SFTRecord], *, text_metrics: bool = True) -> list[VideoScore]:
    """Score each ground-truth video; a video without a prediction is scored as an empty output."""
    scores = []
    for record in truth:
        video_id = f"{record.source}/{record.video}"
        completion = texts.get(video_id, "")
        parsed = parsing.parse_completion(completion)
        pred_abnormal = metrics.is_predicted_abnormal(parsed.which)
        # Ground truth at the precision the answer format can express (3 decimals, the
        # release's <when>), so that an exact answer scores IoU 1.
        gt_span = record.span_fraction if record.is_abnormal else None
        strict = metrics.strict_video_iou(gt_span, pred_abnormal, parsed.span) if gt_span else None
        scores.append(VideoScore(
            id=video_id,
            format_valid=parsed.format_valid,
            gt_abnormal=record.is_abnormal,
            pred_abnormal=pred_abnormal,
            gt_category=record.category,
            pred_category=taxonomy.normalize_label(parsed.which, lenient=True) if parsed.which else taxonomy.UNKNOWN,
            release_iou=metrics.release_video_iou(record.is_abnormal, gt_span, pred_abnormal, parsed.span),
            strict_iou=strict,
            text=metrics.text_scores(record.target_text, completion) if text_metrics else None,
        ))
    return scores


def _figures(scores: Sequence[VideoScore]) -> dict[str, Any]:
    """All figures of a set of scored videos (called once, then on each bootstrap resample)."""
    detection = metrics.detection_scores([s.gt_abnormal for s in scores], [s.pred_abnormal for s in scores])
    result: dict[str, Any] = {
        "videos": len(scores),
        "format": {"valid_rate": float(np.mean([s.format_valid for s in scores]))},
        "detection": detection,
        "temporal": metrics.temporal_scores([s.release_iou for s in scores]),
        "strict": {
            "category": {k: v for k, v in metrics.category_scores([s.gt_category for s in scores],
                                                                 [s.pred_category for s in scores]).items()
                         if k != "per_label_f1"},
        },
    }
    strict_ious = [s.strict_iou for s in scores if s.strict_iou is not None]
    if strict_ious:
        result["strict"]["temporal"] = metrics.temporal_scores(strict_ious)
    if scores and scores[0].text is not None:
        result["text"] = {name: float(np.mean([s.text[name] for s in scores])) for name in metrics.TEXT_METRICS
                          if name != "strict_bleu4"}
        result["strict"]["bleu4_smoothed"] = float(np.mean([s.text["strict_bleu4"] for s in scores]))
    return result


def _resampled_figure(name: str, scores: Sequence[VideoScore]) -> Callable[[Sequence[int]], float] | None:
    """One headline figure as a function of resampled video indices (cheap enough for 1000 resamples)."""
    gt = np.array([s.gt_abnormal for s in scores])
    pred = np.array([s.pred_abnormal for s in scores])
    if name == "detection.accuracy":
        return lambda idx: float(np.mean(gt[idx] == pred[idx]))
    if name == "detection.f1":
        return lambda idx: metrics.detection_scores(gt[idx], pred[idx])["f1"]
    if name == "temporal.miou":
        ious = np.array([s.release_iou for s in scores])
        return lambda idx: float(np.mean(ious[idx]))
    if name == "strict.temporal.miou":
        strict = np.array([s.strict_iou for s in scores if s.strict_iou is not None])
        return (lambda idx: float(np.mean(strict[idx]))) if len(strict) else None
    if name.startswith("text.") and scores[0].text is not None:
        values = np.array([s.text[name.split(".", 1)[1]] for s in scores])
        return lambda idx: float(np.mean(values[idx]))
    return None


def evaluate(texts: dict[str, str], truth: Sequence[dataset.SFTRecord], *, text_metrics: bool = True,
             bootstrap_resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The release's figures, the strict ones, and 95% bootstrap intervals for the headline figures."""
    if not truth:
        raise ValueError("no ground-truth videos to evaluate")
    scores = score_videos(texts, truth, text_metrics=text_metrics)
    figures = _figures(scores)
    figures["missing_predictions"] = sum(f"{r.source}/{r.video}" not in texts for r in truth)
    figures["unmatched_predictions"] = len(set(texts) - {f"{r.source}/{r.video}" for r in truth})
    if bootstrap_resamples > 0:
        intervals = {}
        for name in CI_FIGURES:
            metric = _resampled_figure(name, scores)
            if metric is None:
                continue
            # strict.temporal.miou lives on the abnormal videos only: resample those.
            n = sum(s.strict_iou is not None for s in scores) if name.startswith("strict.") else len(scores)
            intervals[name] = list(metrics.bootstrap_ci(metric, n, n_resamples=bootstrap_resamples, seed=seed))
        figures["strict"]["ci95"] = intervals
    return figures


def evaluate_files(pred_file: Path, gt_file: Path, **kwargs: Any) -> dict[str, Any]:
    return evaluate(load_prediction_texts(pred_file), dataset.load_sft(gt_file), **kwargs)


TABLE_ROWS = (
    ("format valid", "format.valid_rate"), ("accuracy", "detection.accuracy"), ("precision", "detection.precision"),
    ("recall", "detection.recall"), ("F1", "detection.f1"), ("mIoU (release)", "temporal.miou"),
    ("R@0.3", "temporal.r@0.3"), ("R@0.5", "temporal.r@0.5"), ("R@0.7", "temporal.r@0.7"),
    ("mIoU (strict)", "strict.temporal.miou"), ("category acc. (strict)", "strict.category.accuracy"),
    ("category macro-F1 (strict)", "strict.category.macro_f1"), ("BLEU-1", "text.bleu1"), ("BLEU-2", "text.bleu2"),
    ("BLEU-3", "text.bleu3"), ("BLEU-4", "text.bleu4"), ("BLEU-4 smoothed (strict)", "strict.bleu4_smoothed"),
    ("METEOR", "text.meteor"), ("ROUGE-1", "text.rouge1"), ("ROUGE-2", "text.rouge2"), ("ROUGE-L", "text.rougeL"),
)


def figure(figures: dict[str, Any], dotted: str) -> float | None:
    """A figure by dotted name (``detection.f1``, ``temporal.r@0.5``), None where it was not computed."""
    if not isinstance(figures, dict):
        return None
    if dotted in figures:
        return figures[dotted]
    head, dot, rest = dotted.partition(".")
    return figure(figures.get(head), rest) if dot else None


def format_table(results: dict[str, dict[str, Any]]) -> str:
    """Models side by side, one figure per row, with the 95% interval where one was computed."""
    names = list(results)
    width = max(14, *(len(n) for n in names))
    lines = [f"{'':28s}" + "".join(f"{n:>{width + 16}s}" for n in names)]
    for label, key in TABLE_ROWS:
        cells = []
        for name in names:
            value = figure(results[name], key)
            interval = figure(results[name], "strict.ci95").get(key) if figure(results[name], "strict.ci95") else None
            cell = "-" if value is None else f"{value:.3f}" + (f" [{interval[0]:.2f}, {interval[1]:.2f}]" if interval else "")
            cells.append(f"{cell:>{width + 16}s}")
        lines.append(f"{label:28s}" + "".join(cells))
    return "\n".join(lines)


def evaluate_predictions_file(pred_file: Path, truth: Sequence[dataset.SFTRecord], **kwargs: Any) -> dict[str, Any]:
    """``evaluate`` on an ``infer`` output, plus the mean number of generated tokens per answer."""
    from vadr1_lib import inference

    rows = inference.read_predictions(Path(pred_file))
    wanted = {f"{r.source}/{r.video}" for r in truth}
    result = evaluate({row["id"]: row["text"] for row in rows if row["id"] in wanted}, truth, **kwargs)
    result["tokens_per_answer"] = float(np.mean([row["new_tokens"] for row in rows])) if rows else None
    return result
