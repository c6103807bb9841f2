"""Evaluation metrics: the Vad-R1 release's figures, and stricter figures beside them.

Most functions take plain values (booleans, spans, token lists), not completions, so each
definition can be checked by hand; reading completions is :mod:`vadr1_lib.parsing`'s job (the
project's reading and the release's, side by side), wiring them to these functions
:mod:`vadr1_lib.evaluation.scores`'s. The exception is the release's tag removal for the text
figures, which is part of how the release scored text.

The release's evaluation, exactly (``docs/fidelity.md``, "Evaluation"):

- reading: :func:`vadr1_lib.parsing.release_reads_normal` (the first ``<which>…</which>``
  holds exactly ``Normal``; no stripping, no case folding) and
  :func:`vadr1_lib.parsing.release_reads_span` (the first ``<when>[a, b]</when>`` with digits
  and dots; anything else is [0, 0]; no range check);
- detection: binary, Abnormal is the positive class;
- temporal: IoU against [start/total, end/total] rounded to 3 decimals, [0, 1] standing
  for the whole video on both sides for normal videos, averaged over every scored video
  (so each correctly classified normal video adds an IoU of 1);
- text (:func:`release_text_scores`): tags and newlines deleted (words on either side of a
  newline are glued, as in the release), an output left empty skipped (no text figure
  for that video, so it leaves every text mean's denominator), one of 1 to 4 characters
  scored 0, lowercased and word-tokenized for single-order sentence BLEU-1..4 without
  smoothing and NLTK METEOR, original case for ROUGE-1/2/L F-scores from the ``rouge``
  package.

Strict figures, always labelled ``strict``: temporal IoU over abnormal ground-truth
videos only, with range-checked spans; cumulative smoothed BLEU-4 on text whose tags
become spaces; fine-grained category accuracy and macro-F1; bootstrap confidence
intervals over videos.
"""

from __future__ import annotations

import contextlib
import functools
import math
import re
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence

import nltk
import numpy as np
from nltk.tokenize import NLTKWordTokenizer
from nltk.tokenize.punkt import PunktSentenceTokenizer
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
from nltk.translate.meteor_score import meteor_score
from rouge import Rouge

from vadr1_lib.evaluation.wordnet import ensure_wordnet

Span = tuple[float, float]

WHOLE_VIDEO: Span = (0.0, 1.0)
DEFAULT_IOU_THRESHOLDS = (0.3, 0.5, 0.7)
MIN_SCORED_CHARS = 5
TEXT_METRICS = ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge1", "rouge2", "rougeL")

# ---------------------------------------------------------------------------------------
# Detection


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


def temporal_iou(pred_span: Span, gt_span: Span) -> float:
    """overlap / (max end - min start), the release's IoU; 0.0 when that hull is 0.

    The denominator is the hull of the two spans, not the union: for disjoint spans it
    also counts the gap, which only matters when the overlap is 0 anyway. A reversed
    span (start > end) always scores 0, because its overlap is clipped at 0.
    """
    overlap = max(0.0, min(pred_span[1], gt_span[1]) - max(pred_span[0], gt_span[0]))
    hull = max(pred_span[1], gt_span[1]) - min(pred_span[0], gt_span[0])
    return overlap / hull if hull > 0 else 0.0


def union_iou(pred_span: Span, gt_span: Span) -> float:
    """overlap / (length of the union): the textbook IoU, for comparison with
    :func:`temporal_iou`. The two differ only for disjoint spans, where both are 0."""
    overlap = max(0.0, min(pred_span[1], gt_span[1]) - max(pred_span[0], gt_span[0]))
    union = max(0.0, pred_span[1] - pred_span[0]) + max(0.0, gt_span[1] - gt_span[0]) - overlap
    return overlap / union if union > 0 else 0.0


def release_video_iou(gt_abnormal: bool, gt_span: Span | None, pred_abnormal: bool, pred_span: Span) -> float:
    """One video's IoU under the release's conventions.

    A wrong class scores 0. A predicted Normal stands for [0, 1] whatever ``<when>`` it
    also wrote, so a correctly classified normal video ([0, 1] against [0, 1]) scores 1
    and ``pred_span`` is ignored there. An Abnormal prediction is compared as its span
    reads (:func:`vadr1_lib.parsing.release_reads_span`: [0, 0] when ``<when>`` is missing or malformed,
    reversed or out-of-range values as they are).
    """
    if bool(gt_abnormal) != bool(pred_abnormal):
        return 0.0
    if not gt_abnormal:
        return temporal_iou(WHOLE_VIDEO, WHOLE_VIDEO)
    return temporal_iou(pred_span, _checked_gt_span(gt_span))


def strict_video_iou(gt_span: Span, pred_abnormal: bool, pred_span: Span | None) -> float:
    """Strict IoU of an abnormal ground-truth video: 0 if predicted Normal or without a
    valid span (``pred_span`` None: :func:`vadr1_lib.parsing.parse_completion` found no
    ``<when>`` inside [0, 1] with start < end)."""
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


# ---------------------------------------------------------------------------------------
# Reasoning text

# From a "<" to the next ">" on the same line (the idiom re.sub(r"<.*?>", "", text)).
_RELEASE_TAG = re.compile(r"<.*?>")
_TAG = re.compile(r"<[^<>]+>")
_word_tokenizer = NLTKWordTokenizer()
PUNKT_MODEL = "tokenizers/punkt_tab/english/"


def release_strip_tags(text: str) -> str:
    """The release's tag removal: every ``<…>`` run deleted, then every newline deleted.

    Nothing is put in their place, so ``runs.</step1>\n<step2>He`` becomes ``runs.He``:
    words on either side of a newline are glued into one token, as in the release.
    """
    return _RELEASE_TAG.sub("", text).replace("\n", "")


def strip_tags(text: str) -> str:
    """The strict figures' tag removal: every ``<...>`` tag becomes a space, not nothing.

    So ``scene.</step1><step2>Next`` does not glue two sentences into one token;
    whitespace is then collapsed.
    """
    return " ".join(_TAG.sub(" ", text).split())


@functools.cache
def _sentence_splitter() -> tuple[str, PunktSentenceTokenizer]:
    """NLTK's trained English Punkt model when NLTK has it, else an untrained Punkt.

    ``nltk.word_tokenize``, which the release used, splits sentences with the trained
    model (the ``punkt_tab`` download). Where that cannot be downloaded, an untrained
    ``PunktSentenceTokenizer`` needs no data; sentence splitting only decides whether a
    period is split off its word, and the untrained splitter differs from the English
    model mainly at abbreviations the model knows (``st.``, ``e.g.``), where it splits the
    period off and the release did not. Which one ran is reported with the figures.
    """
    try:
        nltk.data.find(PUNKT_MODEL)
    except LookupError:
        return "untrained Punkt (NLTK's punkt_tab model is not installed)", PunktSentenceTokenizer()
    from nltk.tokenize import PunktTokenizer

    return "NLTK's trained English Punkt model (punkt_tab), as nltk.word_tokenize", PunktTokenizer("english")


def sentence_splitter_name() -> str:
    """Which sentence splitter :func:`normalise_text` uses on this machine."""
    return _sentence_splitter()[0]


def normalise_text(text: str) -> list[str]:
    """Lowercase, then word-tokenize as ``nltk.word_tokenize`` does: Punkt sentences, then
    the Treebank-style ``NLTKWordTokenizer`` on each (see :func:`_sentence_splitter`)."""
    sentences = _sentence_splitter()[1].tokenize(text.lower())
    return [token for sentence in sentences for token in _word_tokenizer.tokenize(sentence)]


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
    An empty hypothesis scores 0.
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


def release_rouge(reference: str, hypothesis: str) -> dict[str, float]:
    """ROUGE-1/2/L F-scores from the ``rouge`` package: ``Rouge().get_scores(hypothesis, reference)``.

    The package does its own tokenization on the text as given (the release passes it in
    its original case): sentences are the pieces between periods, words the pieces
    between spaces, n-grams are counted once each (sets), and ROUGE-L is the
    summary-level union LCS over sentence pairs. Its F-score divides by p + r + 1e-8, so
    identical texts score just under 1.

    A hypothesis made only of periods has no sentence, which the package refuses; having
    no word at all, it scores 0. The package's LCS backtracking recurses once per word of
    a sentence pair, so the recursion limit is raised for the call to what the two texts
    can need (the release would stop with RecursionError on an output of about a
    thousand words without a period).
    """
    if not any(piece for piece in hypothesis.split(".")):
        return {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    with _recursion_headroom(len(reference.split()) + len(hypothesis.split())):
        scores = Rouge().get_scores(hypothesis, reference)[0]
    return {"rouge1": scores["rouge-1"]["f"], "rouge2": scores["rouge-2"]["f"], "rougeL": scores["rouge-l"]["f"]}


def release_text_scores(think: str, answer: str, output: str) -> dict[str, float] | None:
    """Every text figure of one video as the release computes it (``TEXT_METRICS``), or
    None where the release skips the video's text.

    Ground truth: the tag-free think immediately followed by the tag-free answer;
    prediction: the tag-free output (:func:`release_strip_tags`). The release keeps a
    prediction only if that string is not empty, so an output of nothing but tags and
    newlines (an untrained model's blank lines) gets no text figure at all: None, and the
    video drops out of every text mean, where scoring it 0 would lower them. A kept
    prediction of fewer than ``MIN_SCORED_CHARS`` characters scores 0 everywhere; spaces
    count as characters, as in the release, so a prediction of spaces alone is kept and
    scores 0. BLEU and METEOR see lowercased word tokens (:func:`normalise_text`), ROUGE
    the text in its original case.
    """
    reference = release_strip_tags(think) + release_strip_tags(answer)
    reference_tokens = normalise_text(reference)
    if not reference_tokens:
        raise ValueError("the reference text is empty once tags are removed")
    hypothesis = release_strip_tags(output)
    if not hypothesis:
        return None
    if len(hypothesis) < MIN_SCORED_CHARS:
        return dict.fromkeys(TEXT_METRICS, 0.0)
    hypothesis_tokens = normalise_text(hypothesis)
    scores = {f"bleu{n}": bleu_n(reference_tokens, hypothesis_tokens, n) for n in range(1, 5)}
    scores["meteor"] = meteor(reference_tokens, hypothesis_tokens)
    scores.update(release_rouge(reference, hypothesis))
    return scores


def strict_text_bleu4(reference: str, output: str) -> float:
    """Strict figure of one video: :func:`strict_bleu4` on texts whose tags became spaces
    (:func:`strip_tags`), lowercased and word-tokenized; a missing or empty output scores 0."""
    return strict_bleu4(normalise_text(strip_tags(reference)), normalise_text(strip_tags(output)))


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


@contextlib.contextmanager
def _recursion_headroom(depth: int) -> Iterator[None]:
    """Let the code inside recurse ``depth`` frames deeper than the current limit allows."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(limit + depth)
    try:
        yield
    finally:
        sys.setrecursionlimit(limit)


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
