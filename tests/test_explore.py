"""The notebooks' interactive views: their numbers are the library's, their fallbacks run unattended."""

import matplotlib
import pytest

from vadr1_lib import explore, stages
from vadr1_lib.model import modeling
from vadr1_lib.training import rewards


@pytest.fixture(scope="module")
def ci(private_runs, ci_profile):
    test = stages.test_records(ci_profile)
    processor = modeling.load_processor(stages.ensure_base_model(ci_profile), ci_profile)
    return ci_profile, test, processor.tokenizer


def test_reward_breakdown_scores_and_explains_hand_made_completions(ci):
    profile, test, tokenizer = ci
    abnormal = next(r for r in test if r.is_abnormal)
    right = explore.reward_breakdown(abnormal.target_text, abnormal.category, profile, tokenizer)
    assert (right.loc["accuracy", "reward"], right.loc["format", "reward"]) == (1.0, 1.0)
    assert "the label is Abnormal" in right.loc["accuracy", "why"]
    broken = explore.reward_breakdown("<think>no end", abnormal.category, profile, tokenizer)
    assert broken.loc["accuracy", "why"].startswith("no <which>") and broken.loc["format", "reward"] == 0.0
    assert broken.loc["format", "why"]  # the parser's problems, not an empty reason
    weights = dict(zip(("accuracy", "format", "length"), profile.grpo.reward_weights))
    expected = sum(right.loc[name, "reward"] * weights[name] for name in weights)
    assert right.loc["total", "reward"] == pytest.approx(expected)


def test_reward_breakdown_runs_the_verifier_on_the_real_clip(ci):
    profile, test, tokenizer = ci
    abnormal = next(r for r in test if r.is_abnormal)
    verifier = rewards.AnomalyVerificationReward(None, None, profile, generate_fn=lambda clips: ["<which>Normal</which>"] * len(clips))
    claim = abnormal.target_text
    table = explore.reward_breakdown(claim, abnormal.category, profile, tokenizer, video_path=str(abnormal.path),
                                     verifier=verifier)
    assert table.loc["ava", "reward"] == profile.grpo.ava_abnormal_bonus
    assert "abnormal branch" in table.loc["ava", "why"] and "answered Normal" in table.loc["ava", "why"]


def test_static_fallbacks_show_an_abnormal_and_a_normal_video(ci, monkeypatch, capsys):
    profile, test, tokenizer = ci
    monkeypatch.setenv("VADR1_UNATTENDED", "1")
    matplotlib.use("Agg")
    answers = {"truth": {r.id: r.target_text for r in test}, "empty": {}}
    explore.prediction_browser(test, answers, profile)
    abnormal = next(r for r in test if r.is_abnormal)
    table = explore.video_answers(abnormal, {"truth": abnormal.target_text, "empty": ""})
    assert table.loc["truth", "right"] and table.loc["truth", "release IoU"] == pytest.approx(1.0)
    assert table.loc["empty", "verdict (release reading)"] == "Abnormal" and table.loc["empty", "strict IoU"] == 0.0
    explore.reward_explorer(profile, tokenizer, abnormal, {"right": abnormal.target_text, "garbage": "the the"})
    assert "--- garbage (label Abnormal)" in capsys.readouterr().out
