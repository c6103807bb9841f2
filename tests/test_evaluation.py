"""Predictions meet the metrics: ground truth scores perfectly against itself; broken outputs do not."""

import json

import pytest

from vadr1_lib import cli, dataset, evaluation


@pytest.fixture(scope="module")
def truth(release_sft_path):
    """80 abnormal and 80 normal rows of the real release."""
    records = dataset.load_sft(release_sft_path)
    return [r for r in records if r.is_abnormal][:80] + [r for r in records if not r.is_abnormal][:80]


def test_ground_truth_against_itself_is_perfect(truth):
    texts = {f"{r.source}/{r.video}": r.target_text for r in truth}
    result = evaluation.evaluate(texts, truth, bootstrap_resamples=50)
    for key in ("detection.accuracy", "detection.precision", "detection.recall", "detection.f1", "temporal.miou",
                "temporal.r@0.3", "temporal.r@0.5", "temporal.r@0.7", "strict.temporal.miou",
                "strict.category.accuracy", "text.bleu1", "text.bleu2", "text.bleu3", "text.bleu4", "text.rouge1",
                "text.rouge2", "text.rougeL", "strict.bleu4_smoothed"):
        assert evaluation.figure(result, key) == 1.0, key
    assert evaluation.figure(result, "text.meteor") == pytest.approx(1.0, abs=1e-6)
    assert result["missing_predictions"] == 0


def test_missing_and_broken_predictions_count_against_the_model(truth):
    abnormal = [r for r in truth if r.is_abnormal][:3]
    normal = [r for r in truth if not r.is_abnormal][:3]
    subset = abnormal + normal
    texts = {f"{r.source}/{r.video}": r.target_text for r in subset}
    texts[f"{abnormal[0].source}/{abnormal[0].video}"] = "<answer>no tags closed"  # no <which>: Abnormal, no span
    texts[f"{normal[0].source}/{normal[0].video}"] = normal[0].target_text.replace("<which>Normal", "<which>Fire")
    del texts[f"{normal[1].source}/{normal[1].video}"]  # missing: scored as an empty output (Abnormal)
    result = evaluation.evaluate(texts, subset, text_metrics=False, bootstrap_resamples=0)
    assert result["missing_predictions"] == 1
    assert result["detection"]["tp"] == 3 and result["detection"]["fp"] == 2 and result["detection"]["tn"] == 1
    assert result["format"]["valid_rate"] == pytest.approx(3 / 6)  # broken, relabelled (2-step think) and missing fail
    # release IoU: 2 exact abnormal + 1 abnormal without span (0) + 1 correct normal (1) + 2 wrong normals (0)
    assert result["temporal"]["miou"] == pytest.approx(3 / 6)
    assert result["strict"]["temporal"]["miou"] == pytest.approx(2 / 3)


def test_evaluate_command_json_has_the_documented_keys(tmp_path, capsys, release_sft_path):
    gt = tmp_path / "gt.jsonl"
    gt.write_text("".join(line + "\n" for line in release_sft_path.read_text().splitlines()[:30]))
    assert cli.main(["evaluate", "--pred", str(gt), "--gt", str(gt), "--json", "--bootstrap", "20"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["format"]["valid_rate"] == 1.0
    assert set(result["detection"]) >= {"accuracy", "precision", "recall", "f1"}
    assert set(result["temporal"]) >= {"miou", "r@0.3", "r@0.5", "r@0.7"}
    assert set(result["text"]) == {"bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge1", "rouge2", "rougeL"}
    assert "ci95" in result["strict"] and "category" in result["strict"]


def test_bad_prediction_file_names_the_line(tmp_path, truth):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "text": "x"}\n{oops\n')
    with pytest.raises(ValueError, match="bad.jsonl:2: not valid JSON"):
        evaluation.load_prediction_texts(bad)
