"""Evaluation metrics: the Vad-R1 release protocol, and stricter figures beside it.

Everything here takes plain values (booleans, spans, strings), not parsed completions,
so each definition can be checked by hand; wiring parser output to these functions is
the caller's job.

Release protocol (REFERENCE.md, "Evaluation protocol of the release"):
- detection: binary, Abnormal is the positive class, a prediction is Abnormal unless
  ``<which>`` says exactly ``Normal``;
- temporal: IoU against [start/total, end/total], with [0, 1] standing for "the whole
  video" on both sides for normal videos, averaged over ALL videos (so each correctly
  classified normal video adds an IoU of 1);
- text: tags removed, lowercased, word-tokenized, single-order sentence BLEU-1..4 without
  smoothing, NLTK METEOR, ROUGE-1/2/L F-scores; outputs shorter than 5 characters score 0.

Strict figures, always labelled ``strict``: temporal IoU over abnormal ground-truth
videos only, cumulative smoothed BLEU-4, fine-grained category accuracy and macro-F1,
and bootstrap confidence intervals over videos.
"""

from __future__ import annotations

import math
import re
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

import numpy as np
from nltk.tokenize import NLTKWordTokenizer
from nltk.tokenize.punkt import PunktSentenceTokenizer
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
from nltk.translate.meteor_score import meteor_score

from vadr1_lib.parsing import says_normal
from vadr1_lib.wordnet import ensure_wordnet

Span = tuple[float, float]

WHOLE_VIDEO: Span = (0.0, 1.0)
MISSING_SPAN: Span = (0.0, 0.0)
DEFAULT_IOU_THRESHOLDS = (0.3, 0.5, 0.7)
MIN_SCORED_CHARS = 5
TEXT_METRICS = ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge1", "rouge2", "rougeL", "strict_bleu4")

# ---------------------------------------------------------------------------------------
# Detection


def is_predicted_abnormal(which: str | None) -> bool:
    """The release's rule: Abnormal unless ``<which>`` is exactly ``Normal``.

    Anything else counts as Abnormal: a category name, ``Abnormal``, a misspelling, an
    empty tag or no ``<which>`` at all (None). Only surrounding whitespace is ignored;
    ``normal`` in lower case is Abnormal, as in the release.
    """
    return not says_normal(which)


def detection_scores(y_true_abnormal: Sequence[bool], y_pred_abnormal: Sequence[bool]) -> dict[str, float]:
    """Accuracy, precision, recall and F1 with Abnormal as the positive class.

    A ratio whose denominator is 0 (no Abnormal prediction for precision, no Abnormal
    video for recall, both 0 for F1) is defined as 0.0, as scikit-learn's
    ``zero_division=0`` does. The confusion counts tp/fp/tn/fn are returned too.
    """
    _check_same_length(y_true_abnormal, y_pred_abnormal, "y_true_abnormal", "y_pred_abnormal")
    pairs = list(zip(map(bool, y_true_abnormal), map(bool, y_pred_abnormal)))
    tp = sum(truth and pred for truth, pred in pairs)
    fp = sum(pred and not truth for truth, pred in pairs)
    fn = sum(truth and not pred for truth, pred in pairs)
    tn = len(pairs) - tp - fp - fn
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    return {
        "accuracy": (tp + tn) / len(pairs),
        "precision": precision,
        "recall": recall,
        "f1": _ratio(2 * precision * recall, precision + recall),
        "tp": tp, "fp": fp, "tn": tn, "fn": fn,
    }


# ---------------------------------------------------------------------------------------
# Temporal grounding


def gt_span_from_frames(start: int, end: int, total_frames: int) -> Span:
    """The release's ground-truth span of an abnormal video: [start/total, end/total]."""
    if total_frames <= 0:
        raise ValueError(f"total_frames must be positive, got {total_frames}")
    if not 0 <= start <= end <= total_frames:
        raise ValueError(f"need 0 <= start <= end <= total_frames, got {start}, {end}, {total_frames}")
    return (start / total_frames, end / total_frames)


def temporal_iou(pred_span: Span, gt_span: Span) -> float:
    """overlap / (max end - min start), the release's IoU; 0.0 when that hull is 0.

    The denominator is the hull of the two spans, not the union: for disjoint spans it
    also counts the gap, which only matters when the overlap is 0 anyway. A reversed
    span (start > end) always scores 0, because its overlap is clipped at 0.
    """
    overlap = max(0.0, min(pred_span[1], gt_span[1]) - max(pred_span[0], gt_span[0]))
    hull = max(pred_span[1], gt_span[1]) - min(pred_span[0], gt_span[0])
    return overlap / hull if hull > 0 else 0.0


def release_video_iou(gt_abnormal: bool, gt_span: Span | None, pred_abnormal: bool, pred_span: Span | None) -> float:
    """One video's IoU under the release's conventions.

    A wrong class scores 0. Normal videos are compared as [0, 1] against a predicted
    Normal's [0, 1], so a correct Normal scores 1 (``gt_span`` and ``pred_span`` are
    ignored there). An Abnormal prediction with no ``<when>`` (``pred_span`` None) is
    taken as [0, 0], which scores 0.
    """
    if bool(gt_abnormal) != bool(pred_abnormal):
        return 0.0
    if not gt_abnormal:
        return temporal_iou(WHOLE_VIDEO, WHOLE_VIDEO)
    return temporal_iou(pred_span if pred_span is not None else MISSING_SPAN, _checked_gt_span(gt_span))


def strict_video_iou(gt_span: Span, pred_abnormal: bool, pred_span: Span | None) -> float:
    """Strict IoU of an abnormal ground-truth video: 0 if predicted Normal or no span."""
    if not pred_abnormal or pred_span is None:
        return 0.0
    return temporal_iou(pred_span, _checked_gt_span(gt_span))


def temporal_scores(ious: Sequence[float], thresholds: Sequence[float] = DEFAULT_IOU_THRESHOLDS) -> dict[str, float]:
    """mIoU and R@K (fraction of videos with IoU >= K, inclusive) for each threshold K.

    Keys: ``miou``, ``r@0.3``, ``r@0.5``, ``r@0.7`` (formatted with ``:g``), ``n``.
    ``>=`` matters only for exact ties such as a span of 0.3 inside [0, 1].
    """
    if len(ious) == 0:
        raise ValueError("temporal scores need at least one video")
    scores: dict[str, float] = {"miou": float(np.mean(ious))}
    for threshold in thresholds:
        scores[f"r@{threshold:g}"] = sum(iou >= threshold for iou in ious) / len(ious)
    scores["n"] = len(ious)
    return scores


def release_temporal_scores(
    gt_abnormal: Sequence[bool], gt_spans: Sequence[Span | None],
    pred_abnormal: Sequence[bool], pred_spans: Sequence[Span | None],
    thresholds: Sequence[float] = DEFAULT_IOU_THRESHOLDS,
) -> dict[str, float]:
    """The release's temporal figures: ``release_video_iou`` averaged over ALL videos."""
    _check_same_length(gt_abnormal, gt_spans, "gt_abnormal", "gt_spans")
    _check_same_length(gt_abnormal, pred_abnormal, "gt_abnormal", "pred_abnormal")
    _check_same_length(gt_abnormal, pred_spans, "gt_abnormal", "pred_spans")
    ious = [release_video_iou(*video) for video in zip(gt_abnormal, gt_spans, pred_abnormal, pred_spans)]
    return temporal_scores(ious, thresholds)


def strict_temporal_scores(
    gt_abnormal: Sequence[bool], gt_spans: Sequence[Span | None],
    pred_abnormal: Sequence[bool], pred_spans: Sequence[Span | None],
    thresholds: Sequence[float] = DEFAULT_IOU_THRESHOLDS,
) -> dict[str, float]:
    """Strict temporal figures: ``strict_video_iou`` over abnormal ground-truth videos only.

    Normal videos are left out, so a model cannot earn temporal credit by saying Normal.
    Raises ValueError when no ground-truth video is abnormal (the figure is undefined).
    """
    _check_same_length(gt_abnormal, gt_spans, "gt_abnormal", "gt_spans")
    _check_same_length(gt_abnormal, pred_abnormal, "gt_abnormal", "pred_abnormal")
    _check_same_length(gt_abnormal, pred_spans, "gt_abnormal", "pred_spans")
    ious = [
        strict_video_iou(gt_span, pred, pred_span)
        for truth, gt_span, pred, pred_span in zip(gt_abnormal, gt_spans, pred_abnormal, pred_spans)
        if truth
    ]
    if not ious:
        raise ValueError("strict temporal scores need at least one abnormal ground-truth video")
    return temporal_scores(ious, thresholds)


# ---------------------------------------------------------------------------------------
# Reasoning text

_TAG = re.compile(r"<[^<>]+>")
_sentence_splitter = PunktSentenceTokenizer()
_word_tokenizer = NLTKWordTokenizer()


def strip_tags(text: str) -> str:
    """Remove every ``<...>`` tag (``<think>``, ``<step1>``, ``</which>``, ...).

    Each tag becomes a space, not nothing, so ``scene.</step1><step2>Next`` does not
    glue two sentences into one token; whitespace is then collapsed.
    """
    return " ".join(_TAG.sub(" ", text).split())


def normalise_text(text: str) -> list[str]:
    """Lowercase and word-tokenize as ``nltk.word_tokenize`` does, without NLTK data.

    The release used ``word_tokenize``: Punkt sentence splitting with NLTK's trained
    English model (the ``punkt_tab`` download), then the Treebank-style
    ``NLTKWordTokenizer`` on each sentence. ``punkt_tab`` cannot be downloaded here, and
    metric values must not depend on which machine has it, so the sentences are split by
    an untrained ``PunktSentenceTokenizer``, which needs no data. Sentence splitting only
    decides whether a period is split off its word; the untrained splitter differs from
    the English model mainly at abbreviations the model knows (``st.``, ``e.g.``), where
    it splits the period off and the release did not.
    """
    lowered = text.lower()
    return [token for sentence in _sentence_splitter.tokenize(lowered) for token in _word_tokenizer.tokenize(sentence)]


def bleu_n(reference: Sequence[str], hypothesis: Sequence[str], n: int) -> float:
    """Single-order sentence BLEU-n (weights one-hot at order n), no smoothing.

    As in NLTK: the modified n-gram precision times the brevity penalty; 0 when there is
    no unigram match; ~0 (1e-308, NLTK's log-space stand-in) when there is no n-gram
    match of order n. NLTK warns in that case; the warning is silenced because it is
    the expected outcome for most short or poor outputs.
    """
    if not 1 <= n <= 4:
        raise ValueError(f"BLEU order must be 1..4, got {n}")
    weights = tuple(1.0 if order == n else 0.0 for order in range(1, 5))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(sentence_bleu([list(reference)], list(hypothesis), weights=weights))


def strict_bleu4(reference: Sequence[str], hypothesis: Sequence[str]) -> float:
    """Strict figure: cumulative BLEU-4 (weights 0.25 each) with smoothing method 1.

    Cumulative BLEU is the geometric mean over orders 1..4, the usual MT definition;
    method 1 adds 0.1 to zero n-gram counts so that one missing order does not zero it.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(sentence_bleu([list(reference)], list(hypothesis), weights=(0.25,) * 4,
                                   smoothing_function=SmoothingFunction().method1))


def meteor(reference: Sequence[str], hypothesis: Sequence[str]) -> float:
    """NLTK METEOR (alpha 0.9, beta 3, gamma 0.5; exact, stem and WordNet synonym matches).

    NLTK looks synonyms up on the Porter stems left over from its stem stage, so only
    words whose stem is itself a WordNet lemma ('auto' for 'car', not 'automobile') get
    synonym matches. That is NLTK's behaviour and kept as is, as the release used it.
    """
    ensure_wordnet()
    return float(meteor_score([list(reference)], list(hypothesis)))


def rouge_n(reference: Sequence[str], hypothesis: Sequence[str], n: int) -> float:
    """ROUGE-N F1: clipped n-gram overlap, precision over hypothesis and recall over reference.

    Implemented here (not with ``rouge_score``) so that ROUGE sees the same tokens as
    BLEU and METEOR; on the same tokens it equals ``rouge_score``'s F-measure.
    """
    reference_ngrams = _ngrams(reference, n)
    hypothesis_ngrams = _ngrams(hypothesis, n)
    overlap = sum((reference_ngrams & hypothesis_ngrams).values())
    return _f1(overlap, sum(hypothesis_ngrams.values()), sum(reference_ngrams.values()))


def rouge_l(reference: Sequence[str], hypothesis: Sequence[str]) -> float:
    """ROUGE-L F1: longest common subsequence over the whole token sequences."""
    return _f1(lcs_length(reference, hypothesis), len(hypothesis), len(reference))


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence, bit-parallel (Allison-Dix / Hyyro).

    Reasoning texts run to hundreds of tokens; the quadratic table in pure Python costs
    tens of milliseconds per pair, this costs well under one. Bit i of ``row`` is 0 where
    the LCS of ``a[:i+1]`` with the tokens of ``b`` seen so far gains a match.
    """
    if not a or not b:
        return 0
    match_masks: dict[str, int] = {}
    for position, token in enumerate(a):
        match_masks[token] = match_masks.get(token, 0) | (1 << position)
    all_ones = (1 << len(a)) - 1
    row = all_ones
    for token in b:
        matches = row & match_masks.get(token, 0)
        row = ((row + matches) | (row - matches)) & all_ones
    return len(a) - bin(row).count("1")


def text_scores(reference: str, hypothesis: str) -> dict[str, float]:
    """Every text metric of one video: ground truth (think + answer) vs the model output.

    Both texts are raw, tags included. A hypothesis shorter than ``MIN_SCORED_CHARS``
    characters once tags and surrounding whitespace are removed scores 0 everywhere (the
    release's rule; applied after tag removal because that is the text being scored, so
    an output made only of tags also scores 0).
    """
    reference_tokens = normalise_text(strip_tags(reference))
    if not reference_tokens:
        raise ValueError("the reference text is empty once tags are removed")
    hypothesis_text = strip_tags(hypothesis)
    if len(hypothesis_text) < MIN_SCORED_CHARS:
        return dict.fromkeys(TEXT_METRICS, 0.0)
    hypothesis_tokens = normalise_text(hypothesis_text)
    scores = {f"bleu{n}": bleu_n(reference_tokens, hypothesis_tokens, n) for n in range(1, 5)}
    scores["meteor"] = meteor(reference_tokens, hypothesis_tokens)
    scores["rouge1"] = rouge_n(reference_tokens, hypothesis_tokens, 1)
    scores["rouge2"] = rouge_n(reference_tokens, hypothesis_tokens, 2)
    scores["rougeL"] = rouge_l(reference_tokens, hypothesis_tokens)
    scores["strict_bleu4"] = strict_bleu4(reference_tokens, hypothesis_tokens)
    return scores


def mean_text_scores(pairs: Iterable[tuple[str, str]]) -> dict[str, float]:
    """``text_scores`` averaged over (reference, hypothesis) pairs, plus their count ``n``."""
    per_video = [text_scores(reference, hypothesis) for reference, hypothesis in pairs]
    if not per_video:
        raise ValueError("text scores need at least one (reference, hypothesis) pair")
    means: dict[str, float] = {name: float(np.mean([scores[name] for scores in per_video])) for name in TEXT_METRICS}
    means["n"] = len(per_video)
    return means


# ---------------------------------------------------------------------------------------
# Strict classification and uncertainty


def category_scores(
    y_true: Sequence[str], y_pred: Sequence[str | None], labels: Sequence[str] | None = None
) -> dict[str, float | dict[str, float]]:
    """Strict figure: fine-grained category accuracy and macro-F1.

    Labels default to the categories present in ``y_true`` (``Normal`` is one of them
    when normal videos are present). Both sides must already be canonical names
    (normalise through the taxonomy first): comparison is exact. A prediction outside
    the label set (None, ``Abnormal``, an invented name) is simply wrong: a false
    negative for the true class and a false positive for no label, so invented names
    do not add zero-F1 classes to the macro average. Per-label F1 uses 0/0 -> 0.0.
    """
    _check_same_length(y_true, y_pred, "y_true", "y_pred")
    label_set = sorted(set(y_true)) if labels is None else list(dict.fromkeys(labels))
    if not label_set:
        raise ValueError("category scores need at least one label")
    per_label_f1 = {}
    for label in label_set:
        tp = sum(truth == label and pred == label for truth, pred in zip(y_true, y_pred))
        predicted = sum(pred == label for pred in y_pred)
        actual = sum(truth == label for truth in y_true)
        per_label_f1[label] = _f1(tp, predicted, actual)
    return {
        "accuracy": sum(truth == pred for truth, pred in zip(y_true, y_pred)) / len(y_true),
        "macro_f1": float(np.mean(list(per_label_f1.values()))),
        "per_label_f1": per_label_f1,
    }


def bootstrap_ci(
    metric_fn: Callable[[Sequence[int]], float], n: int, n_resamples: int = 1000, seed: int = 0, alpha: float = 0.05
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of a metric over videos.

    ``metric_fn`` receives a list of ``n`` video indices drawn with replacement and
    returns the metric on those videos; resampling indices rather than values lets one
    function serve any metric, including ones over paired lists (F1, mIoU). The
    interval is the alpha/2 and 1 - alpha/2 percentiles of ``n_resamples`` resamples;
    the same seed gives the same interval.
    """
    if n <= 0:
        raise ValueError(f"bootstrap needs at least one video, got n={n}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    rng = np.random.default_rng(seed)
    values = [metric_fn(rng.integers(0, n, size=n).tolist()) for _ in range(n_resamples)]
    low, high = np.percentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(low), float(high)


# ---------------------------------------------------------------------------------------
# Helpers


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0


def _f1(matches: int, predicted: int, actual: int) -> float:
    """F1 from counts: 2 * matches / (predicted + actual), 0 when both are 0."""
    return _ratio(2 * matches, predicted + actual)


def _ngrams(tokens: Sequence[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def _check_same_length(first: Sequence, second: Sequence, first_name: str, second_name: str) -> None:
    if len(first) != len(second):
        raise ValueError(f"{first_name} has {len(first)} items but {second_name} has {len(second)}")
    if len(first) == 0:
        raise ValueError(f"{first_name} and {second_name} are empty")


def _checked_gt_span(gt_span: Span | None) -> Span:
    if gt_span is None:
        raise ValueError("an abnormal ground-truth video needs a span")
    if not (math.isfinite(gt_span[0]) and math.isfinite(gt_span[1]) and gt_span[0] <= gt_span[1]):
        raise ValueError(f"ground-truth span must be finite with start <= end, got {gt_span}")
    return gt_span
