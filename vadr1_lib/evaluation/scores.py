"""Scoring predictions against ground truth: the release's figures, and strict ones beside them.

Each completion is read twice, because the two sets of figures answer two questions:

- ``detection``, ``temporal`` and ``text`` are the release's evaluation, exactly
  (``docs/fidelity.md``, "Evaluation"): only ground-truth videos that have a prediction
  are scored (the others are counted in ``missing_predictions``), ``<which>`` and
  ``<when>`` are read with the release's rules (:func:`vadr1_lib.evaluation.parsing.release_reads_normal`,
  :func:`vadr1_lib.evaluation.parsing.release_reads_span`) and the text with
  :func:`vadr1_lib.evaluation.metrics.release_text_scores`. A prediction left empty once tags
  and newlines are deleted is skipped by the release's text figures alone (counted in
  ``text.skipped_empty``; ``text.n`` is the number of videos the text means are over) and
  still scored by detection and temporal. These are the numbers to set beside the paper's.
- ``strict`` reads each completion once with :func:`vadr1_lib.parsing.parse_completion`,
  the parser the rewards use (whitespace-tolerant ``<which>``, spans checked to lie in
  [0, 1] with start < end), and scores every ground-truth video, a missing prediction as
  an empty output: detection, IoU over the abnormal videos only, fine-grained category
  figures, cumulative smoothed BLEU-4, and bootstrap intervals. ``format.valid_rate``
  (the template check of the format reward) is over every ground-truth video too.

Predictions files: ``infer`` output (rows with ``id`` = ``source/video`` and ``text``), the
release's prediction files (rows ``{"video", "output"}``, matched to ground truth by the
video name alone, as the release does), or release-format annotation rows (``think`` +
``answer``), so that ground truth can be scored against itself as a check that every
figure reaches its maximum.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vadr1_lib import parsing
from vadr1_lib.data import dataset, taxonomy
from vadr1_lib.evaluation import metrics

# Figures that get a bootstrap confidence interval (the ones tables report).
CI_FIGURES = ("detection.accuracy", "detection.f1", "temporal.miou", "strict.temporal.miou", "text.bleu2", "text.meteor")

# How a predictions file's keys name ground-truth videos.
MATCH_BY_ID = "id"  # "source/video": infer output, release annotation rows
MATCH_BY_VIDEO = "video"  # the video name alone: the release's prediction files


@dataclass(frozen=True)
class PredictionTexts:
    """The completions of one predictions file, keyed as ``match_by`` says."""

    texts: dict[str, str]
    match_by: str
    new_tokens: list[int]  # tokens generated per answer, where the file says (infer's output)


def _row_prediction(row: Any) -> tuple[str, str, str] | None:
    """(kind of key, key, completion) of one predictions row, None when it is none of the three formats."""
    if not isinstance(row, dict):
        return None
    if "id" in row and "text" in row:
        return MATCH_BY_ID, row["id"], row["text"]
    if "video" in row and "output" in row:
        return MATCH_BY_VIDEO, row["video"], row["output"]
    if "think" in row and "answer" in row and "source" in row and "video" in row:
        return MATCH_BY_ID, f"{row['source']}/{row['video']}", row["think"] + "\n" + row["answer"]
    return None


def load_prediction_texts(path: Path) -> PredictionTexts:
    """The completions of a predictions file in any of the three formats (module docstring).

    Every row must be of the same format, name a video once, and hold strings; anything
    else is an error naming the line, never a silently skipped row.
    """
    texts: dict[str, str] = {}
    new_tokens: list[int] = []
    lines_of: dict[str, int] = {}
    match_by = None
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
        prediction = _row_prediction(row)
        if prediction is None:
            raise ValueError(f"{path}:{number}: not a prediction (id, text), a release prediction (video, output) "
                             "or a release annotation row (source, video, think, answer)")
        kind, key, text = prediction
        if not isinstance(key, str) or not isinstance(text, str):
            raise ValueError(f"{path}:{number}: the video key and the completion must be strings, got "
                             f"{type(key).__name__} and {type(text).__name__}")
        if match_by is not None and kind != match_by:
            raise ValueError(f"{path}:{number}: rows keyed by {kind!r} after rows keyed by {match_by!r}; "
                             "one file holds one format")
        if key in texts:
            raise ValueError(f"{path}:{number}: a second prediction for {key!r} (the first is on line {lines_of[key]})")
        match_by, texts[key], lines_of[key] = kind, text, number
        if isinstance(row.get("new_tokens"), int):
            new_tokens.append(row["new_tokens"])
    return PredictionTexts(texts, match_by or MATCH_BY_ID, new_tokens)


def _prediction_key(record: dataset.SFTRecord, match_by: str) -> str:
    if match_by == MATCH_BY_ID:
        return record.id
    if match_by == MATCH_BY_VIDEO:
        return record.video
    raise ValueError(f"match_by must be {MATCH_BY_ID!r} or {MATCH_BY_VIDEO!r}, got {match_by!r}")


@dataclass(frozen=True)
class ReleaseScore:
    """One video under the release's evaluation."""

    pred_abnormal: bool
    iou: float
    text: dict[str, float] | None  # None without text metrics, or where the release skips an empty prediction


@dataclass(frozen=True)
class VideoScore:
    """Everything measured on one test video, kept so that any figure can be bootstrapped."""

    id: str
    gt_abnormal: bool
    gt_category: str
    release: ReleaseScore | None  # None: no prediction, so the release skips the video
    # Strict, with a missing prediction read as an empty output:
    format_valid: bool
    pred_abnormal: bool
    pred_category: str
    strict_iou: float | None  # abnormal ground truth only
    strict_bleu4: float | None  # None without text metrics


def score_videos(texts: Mapping[str, str], truth: Sequence[dataset.SFTRecord], *, match_by: str = MATCH_BY_ID,
                 text_metrics: bool = True) -> list[VideoScore]:
    """Score each ground-truth video with both readings (module docstring)."""
    keys = [_prediction_key(record, match_by) for record in truth]
    if len(set(keys)) != len(keys):
        repeated = sorted({key for key in keys if keys.count(key) > 1})
        raise ValueError(f"ground truth names {repeated[:5]} more than once: predictions keyed by {match_by!r} "
                         "cannot tell those videos apart")
    scores = []
    for record, key in zip(truth, keys):
        completion = texts.get(key)
        parsed = parsing.parse_completion(completion or "")
        # Ground truth at the precision the answer format can express (3 decimals, as the
        # release rounds it), so that an exact answer scores IoU 1.
        gt_span = record.span_fraction
        release = None
        if completion is not None:
            pred_abnormal = not parsing.release_reads_normal(completion)
            release = ReleaseScore(
                pred_abnormal=pred_abnormal,
                iou=metrics.release_video_iou(record.is_abnormal, gt_span, pred_abnormal,
                                              parsing.release_reads_span(completion)),
                text=metrics.release_text_scores(record.think, record.answer, completion) if text_metrics else None,
            )
        scores.append(VideoScore(
            id=_prediction_key(record, MATCH_BY_ID),
            gt_abnormal=record.is_abnormal,
            gt_category=record.category,
            release=release,
            format_valid=parsed.format_valid,
            pred_abnormal=not parsed.is_normal,
            pred_category=taxonomy.normalize_label(parsed.which, lenient=True) if parsed.which else taxonomy.UNKNOWN,
            strict_iou=(metrics.strict_video_iou(gt_span, not parsed.is_normal, parsed.span)
                        if record.is_abnormal else None),
            strict_bleu4=metrics.strict_text_bleu4(record.target_text, completion or "") if text_metrics else None,
        ))
    return scores


def _scored(scores: Sequence[VideoScore]) -> list[VideoScore]:
    """The videos the release's figures cover: those with a prediction."""
    scored = [s for s in scores if s.release is not None]
    if not scored:
        raise ValueError("no ground-truth video has a prediction: the release's figures are undefined")
    return scored


def _figures(scores: Sequence[VideoScore], text_metrics: bool) -> dict[str, Any]:
    """All figures of a set of scored videos."""
    scored = _scored(scores)
    release = [s.release for s in scored]
    result: dict[str, Any] = {
        "videos": len(scores),
        "scored_videos": len(scored),
        "missing_predictions": len(scores) - len(scored),
        "format": {"valid_rate": float(np.mean([s.format_valid for s in scores]))},
        "detection": metrics.detection_scores([s.gt_abnormal for s in scored], [r.pred_abnormal for r in release]),
        "temporal": metrics.temporal_scores([r.iou for r in release]),
        "strict": {
            "detection": metrics.detection_scores([s.gt_abnormal for s in scores], [s.pred_abnormal for s in scores]),
            "category": {k: v for k, v in metrics.category_scores([s.gt_category for s in scores],
                                                                 [s.pred_category for s in scores]).items()
                         if k != "per_label_f1"},
        },
    }
    strict_ious = [s.strict_iou for s in scores if s.strict_iou is not None]
    if strict_ious:
        result["strict"]["temporal"] = metrics.temporal_scores(strict_ious)
    if text_metrics:
        # The release averages its text figures over the predictions it kept: an empty
        # one leaves every mean's denominator, it does not add a 0. With none kept the
        # means are undefined (None).
        kept = [r.text for r in release if r.text is not None]
        result["text"] = {name: float(np.mean([text[name] for text in kept])) if kept else None
                          for name in metrics.TEXT_METRICS}
        result["text"].update(n=len(kept), skipped_empty=len(release) - len(kept))
        result["strict"]["bleu4_smoothed"] = float(np.mean([s.strict_bleu4 for s in scores]))
        result["sentence_splitter"] = metrics.sentence_splitter_name()
    return result


def _resampled_figure(name: str, scores: Sequence[VideoScore]) -> tuple[Callable[[Sequence[int]], float], int] | None:
    """One headline figure as a function of resampled video indices, and how many videos
    it resamples (cheap enough for 1000 resamples); None when the figure was not computed."""
    if name == "strict.temporal.miou":
        strict = np.array([s.strict_iou for s in scores if s.strict_iou is not None])
        return ((lambda idx: float(np.mean(strict[idx]))), len(strict)) if len(strict) else None
    scored = _scored(scores)
    gt = np.array([s.gt_abnormal for s in scored])
    pred = np.array([s.release.pred_abnormal for s in scored])
    if name == "detection.accuracy":
        return (lambda idx: float(np.mean(gt[idx] == pred[idx]))), len(scored)
    if name == "detection.f1":
        return (lambda idx: metrics.detection_scores(gt[idx], pred[idx])["f1"]), len(scored)
    if name == "temporal.miou":
        ious = np.array([s.release.iou for s in scored])
        return (lambda idx: float(np.mean(ious[idx]))), len(scored)
    if name.startswith("text."):  # over the videos the text figure is over: those with a kept prediction
        values = np.array([s.release.text[name.split(".", 1)[1]] for s in scored if s.release.text is not None])
        return ((lambda idx: float(np.mean(values[idx]))), len(values)) if len(values) else None
    return None


def evaluate(texts: Mapping[str, str], truth: Sequence[dataset.SFTRecord], *, match_by: str = MATCH_BY_ID,
             text_metrics: bool = True, bootstrap_resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The release's figures, the strict ones, and 95% bootstrap intervals for the headline figures.

    ``texts`` maps prediction keys (``source/video``, or the video name alone with
    ``match_by="video"``) to completions. Raises ValueError when there is no ground truth
    or no ground-truth video has a prediction.
    """
    if not truth:
        raise ValueError("no ground-truth videos to evaluate")
    scores = score_videos(texts, truth, match_by=match_by, text_metrics=text_metrics)
    figures = _figures(scores, text_metrics)
    figures["unmatched_predictions"] = len(set(texts) - {_prediction_key(record, match_by) for record in truth})
    if bootstrap_resamples > 0:
        intervals = {}
        for name in CI_FIGURES:
            resampled = _resampled_figure(name, scores)
            if resampled is not None:
                metric, n = resampled
                intervals[name] = list(metrics.bootstrap_ci(metric, n, n_resamples=bootstrap_resamples, seed=seed))
        figures["strict"]["ci95"] = intervals
    return figures


def evaluate_file(pred_file: Path, truth: Sequence[dataset.SFTRecord], **kwargs: Any) -> dict[str, Any]:
    """The one way to score a predictions file (the ``evaluate`` command, the notebooks,
    ``preflight``): ``evaluate`` on any of the three formats, plus the mean number of
    generated tokens per answer when the file records it (``tokens_per_answer``, else None)."""
    predictions = load_prediction_texts(Path(pred_file))
    result = evaluate(predictions.texts, truth, match_by=predictions.match_by, **kwargs)
    result["tokens_per_answer"] = float(np.mean(predictions.new_tokens)) if predictions.new_tokens else None
    return result


PAIRED_FIGURES = ("detection.accuracy", "detection.f1", "detection.precision", "strict.temporal.miou", "format.valid_rate")


def _paired_arrays(scores: Sequence[VideoScore]) -> dict[str, np.ndarray]:
    if any(s.release is None for s in scores):
        raise ValueError("a paired comparison needs a prediction for every test video of both models")
    return {"gt": np.array([s.gt_abnormal for s in scores]), "pred": np.array([s.release.pred_abnormal for s in scores]),
            "strict_iou": np.array([np.nan if s.strict_iou is None else s.strict_iou for s in scores]),
            "format": np.array([s.format_valid for s in scores], dtype=float)}


def _paired_figure(name: str, arrays: dict[str, np.ndarray], idx: np.ndarray) -> float:
    gt, pred = arrays["gt"][idx], arrays["pred"][idx]
    if name == "detection.accuracy":
        return float(np.mean(gt == pred))
    if name in ("detection.f1", "detection.precision"):
        return metrics.detection_scores(gt, pred)[name.split(".")[1]]
    if name == "strict.temporal.miou":
        ious = arrays["strict_iou"][idx]
        return float(np.nanmean(ious)) if np.any(~np.isnan(ious)) else 0.0  # a draw without an abnormal video
    if name == "format.valid_rate":
        return float(np.mean(arrays["format"][idx]))
    raise ValueError(f"no paired figure {name!r}; have {', '.join(PAIRED_FIGURES)}")


def resolvable_accuracy_difference(changed: int, videos: int) -> float:
    """The smallest accuracy difference whose 95% paired interval clears 0 when ``changed`` of
    ``videos`` test videos went from right to wrong or back (normal approximation).

    Why it is worth printing: a paired accuracy difference is the mean over the videos of +1
    (fixed), -1 (broken) and 0, so its spread is set by how many verdicts changed, not by the
    accuracy itself. With a share p changed and a difference g, the variance is p - g², and
    g - 1.96·sqrt((p - g²) / n) > 0 exactly when g > 1.96·sqrt(p / (n + 1.96²)). A split of
    120 videos on which RL changes 8 verdicts resolves +0.045, whatever the models.
    """
    if videos <= 0:
        raise ValueError("a resolvable difference needs at least one video")
    return 1.96 * math.sqrt((changed / videos) / (videos + 1.96 ** 2))


def paired_differences(before: Sequence[VideoScore], after: Sequence[VideoScore], *, n_resamples: int = 1000,
                       seed: int = 0) -> dict[str, dict[str, Any]]:
    """``after`` minus ``before`` on the same test videos, with a 95% paired bootstrap interval.

    Each resample draws test videos with replacement and scores both models on the same
    draw, so the interval measures how the two models differ on the same videos, which is
    far narrower than comparing two independent intervals when most videos get the same
    verdict from both. Detection follows the release's reading (as in ``detection``),
    strict mIoU the abnormal videos of each draw, format the project's template check.
    Accuracy also counts the verdicts ``after`` fixed and broke, and the smallest difference
    that many changes let this split resolve (:func:`resolvable_accuracy_difference`).
    """
    if [s.id for s in before] != [s.id for s in after]:
        raise ValueError("the two models were not scored on the same test videos in the same order")
    arrays = (_paired_arrays(before), _paired_arrays(after))
    everything = np.arange(len(before))
    rng = np.random.default_rng(seed)
    draws = [rng.integers(0, len(before), size=len(before)) for _ in range(n_resamples)]
    result = {}
    for name in PAIRED_FIGURES:
        difference = _paired_figure(name, arrays[1], everything) - _paired_figure(name, arrays[0], everything)
        resampled = [_paired_figure(name, arrays[1], idx) - _paired_figure(name, arrays[0], idx) for idx in draws]
        low, high = np.percentile(resampled, [2.5, 97.5]) if draws else (difference, difference)
        result[name] = {"difference": difference, "ci95": [float(low), float(high)]}
    right_before, right_after = ((a["gt"] == a["pred"]) for a in arrays)
    fixed, broken = int(np.sum(right_after & ~right_before)), int(np.sum(right_before & ~right_after))
    result["detection.accuracy"].update(fixed=fixed, broken=broken,
                                        resolvable=resolvable_accuracy_difference(fixed + broken, len(before)))
    return result


def compare_files(before_file: Path, after_file: Path, truth: Sequence[dataset.SFTRecord], **kwargs: Any
                  ) -> dict[str, dict[str, Any]]:
    """:func:`paired_differences` of two predictions files on the same ground truth."""
    before, after = (load_prediction_texts(Path(path)) for path in (before_file, after_file))
    return paired_differences(score_videos(before.texts, truth, match_by=before.match_by, text_metrics=False),
                              score_videos(after.texts, truth, match_by=after.match_by, text_metrics=False), **kwargs)


def by_ground_truth(pred_file: Path, truth: Sequence[dataset.SFTRecord]) -> dict[str, dict[str, float | int]]:
    """Category accuracy (strict) and the release's mIoU and R@0.5, on the abnormal and on the
    normal test videos apart. Both figures average over *every* video: a normal video answered
    Normal names the right category and scores IoU 1, so this says how much of each figure
    the normal videos alone make."""
    predictions = load_prediction_texts(Path(pred_file))
    scored = score_videos(predictions.texts, truth, match_by=predictions.match_by, text_metrics=False)
    result = {}
    for name, wanted in (("abnormal videos", True), ("normal videos", False)):
        part = [s for s in scored if s.gt_abnormal == wanted]
        ious = [s.release.iou for s in part if s.release is not None]
        result[name] = {"videos": len(part),
                        "category accuracy (strict)": float(np.mean([s.pred_category == s.gt_category for s in part])),
                        "mIoU (release)": float(np.mean(ious)) if ious else None,
                        "R@0.5 (release)": metrics.temporal_scores(ious)["r@0.5"] if ious else None}
    return result


ANSWER_KINDS = ("Normal", "Abnormal, well-formed", "Abnormal, malformed", "no <which>")


def answer_kinds(pred_file: Path, truth: Sequence[dataset.SFTRecord]) -> dict[str, dict[str, int]]:
    """How many answers of each kind a model gave, per ground-truth label.

    The kinds separate what training and evaluation treat differently: the accuracy reward
    gives 0 to an answer without ``<which>`` (it claims nothing), while the release's
    evaluation reads it as Abnormal; a malformed Abnormal answer earns accuracy but not the
    format reward, a well-formed one both. A model that drifts toward Normal under RL shows
    it here before it shows in accuracy.
    """
    predictions = load_prediction_texts(Path(pred_file))
    counts = {label: dict.fromkeys(ANSWER_KINDS, 0) for label in ("abnormal videos", "normal videos")}
    for record in truth:
        parsed = parsing.parse_completion(predictions.texts.get(_prediction_key(record, predictions.match_by)) or "")
        if parsed.is_normal:
            kind = "Normal"
        elif not parsed.which:
            kind = "no <which>"
        else:
            kind = "Abnormal, well-formed" if parsed.format_valid else "Abnormal, malformed"
        counts["abnormal videos" if record.is_abnormal else "normal videos"][kind] += 1
    return counts


TABLE_ROWS = (
    ("videos scored", "scored_videos"), ("format valid", "format.valid_rate"), ("accuracy", "detection.accuracy"),
    ("precision", "detection.precision"), ("recall", "detection.recall"), ("F1", "detection.f1"),
    ("mIoU (release)", "temporal.miou"), ("R@0.3", "temporal.r@0.3"), ("R@0.5", "temporal.r@0.5"),
    ("R@0.7", "temporal.r@0.7"), ("accuracy (strict)", "strict.detection.accuracy"),
    ("F1 (strict)", "strict.detection.f1"), ("mIoU (strict)", "strict.temporal.miou"),
    ("category acc. (strict)", "strict.category.accuracy"), ("category macro-F1 (strict)", "strict.category.macro_f1"),
    ("text: empty outputs skipped", "text.skipped_empty"), ("BLEU-1", "text.bleu1"), ("BLEU-2", "text.bleu2"),
    ("BLEU-3", "text.bleu3"), ("BLEU-4", "text.bleu4"), ("BLEU-4 smoothed (strict)", "strict.bleu4_smoothed"),
    ("METEOR", "text.meteor"), ("ROUGE-1", "text.rouge1"), ("ROUGE-2", "text.rouge2"), ("ROUGE-L", "text.rougeL"),
)


HEADLINE = {"format valid": "format.valid_rate", "accuracy": "detection.accuracy", "precision": "detection.precision",
            "recall": "detection.recall", "F1": "detection.f1", "mIoU (strict)": "strict.temporal.miou"}


def headline(figures: dict[str, Any], names: dict[str, str] = HEADLINE) -> dict[str, float | None]:
    """A few figures by their table names (``{"F1": "detection.f1", ...}``), None where not computed."""
    return {name: figure(figures, dotted) for name, dotted in names.items()}


def figure(figures: dict[str, Any], dotted: str) -> float | None:
    """A figure by dotted name (``detection.f1``, ``temporal.r@0.5``), None where it was not computed."""
    if not isinstance(figures, dict):
        return None
    if dotted in figures:
        return figures[dotted]
    head, dot, rest = dotted.partition(".")
    return figure(figures.get(head), rest) if dot else None


def skipped_empty_note(figures: dict[str, Any]) -> str | None:
    """How many empty predictions the release's text figures skipped, in words; None when
    they skipped none or were not computed."""
    skipped = figure(figures, "text.skipped_empty")
    if not skipped:
        return None
    return (f"{skipped} empty prediction{'' if skipped == 1 else 's'} skipped in BLEU/METEOR/ROUGE "
            "(release rule; the strict BLEU-4 scores them 0)")


def _cell(value: float | None, interval: list[float] | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):  # a count
        return str(value)
    return f"{value:.3f}" + (f" [{interval[0]:.2f}, {interval[1]:.2f}]" if interval else "")


def format_table(results: dict[str, dict[str, Any]]) -> str:
    """Models side by side, one figure per row, with the 95% interval where one was computed."""
    names = list(results)
    width = max(14, *(len(n) for n in names))
    lines = [f"{'':28s}" + "".join(f"{n:>{width + 16}s}" for n in names)]
    for label, key in TABLE_ROWS:
        cells = [_cell(figure(results[name], key), (figure(results[name], "strict.ci95") or {}).get(key))
                 for name in names]
        lines.append(f"{label:28s}" + "".join(f"{cell:>{width + 16}s}" for cell in cells))
    lines += [f"{name}: {note}" for name in names if (note := skipped_empty_note(results[name]))]
    return "\n".join(lines)
