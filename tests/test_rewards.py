"""Rewards on hand-written completions, with exact values; AVA with a scripted generate_fn.

The AVA call through a real model lives in test_grpo.py, next to the other tests that
need the ci model.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from vadr1_lib import parsing, paths, prompts, stages
from vadr1_lib.config import GRPOConfig
from vadr1_lib.data import video
from vadr1_lib.data.taxonomy import UnknownLabelError
from vadr1_lib.training import rewards

NORMAL_OK = prompts.format_think(["A street with people walking.", "Everyone walks calmly."]) + "\n" + \
    prompts.format_answer_normal("Normal", "people walk along the street", "nothing unusual happens")


def abnormal(span: tuple[float, float] = (0.25, 0.75), which: str = "Fire") -> str:
    return prompts.format_think(["A street.", "Flames appear.", "A fire is dangerous.", "It may spread."]) + "\n" + \
        prompts.format_answer_abnormal(which, "a fire starts", span, "centre", "fire is dangerous", "damage")


ABNORMAL_OK = abnormal()
ABNORMAL_NO_SPAN = "<answer><which>Fire</which></answer>"  # accuracy on an abnormal video, no format, no span
GARBAGE = ["", "!!!", "日本語 <which> \u200b", "<which></which>", "<think><step1>x</step1>", "\x00" * 10]


def as_message(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


# ---------------------------------------------------------------------------------------
# accuracy and format


def test_accuracy_compares_binary_label_with_weak_label() -> None:
    completions = [NORMAL_OK, NORMAL_OK, ABNORMAL_OK, ABNORMAL_OK, abnormal(which="Abnormal"),
                   "<which>normal</which>", ABNORMAL_NO_SPAN, "no tags at all"]
    solution = ["Normal", "Abnormal", "Abnormal", "Normal", "Abnormal", "Abnormal", "Abnormal", "Normal"]
    # "normal" (lowercase) is not exactly Normal, so it reads as Abnormal; no <which> earns nothing.
    assert rewards.accuracy_reward(completions, solution=solution) == [1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0]


def test_accuracy_reads_conversational_completions_and_category_labels() -> None:
    completions = [as_message(ABNORMAL_OK), [{"role": "assistant", "content": [{"type": "text", "text": NORMAL_OK}]}]]
    assert rewards.accuracy_reward(completions, solution=["Fire", "normal"]) == [1.0, 1.0]


def test_accuracy_rejects_unknown_weak_label() -> None:
    with pytest.raises(UnknownLabelError):
        rewards.accuracy_reward([NORMAL_OK], solution=["Maybe"])


def test_format_reward() -> None:
    two_step_abnormal = prompts.format_think(["a", "b"]) + "\n" + prompts.format_answer_abnormal(
        "Fire", "w", (0.1, 0.2), "x", "y", "z")
    truncated = ABNORMAL_OK[: len(ABNORMAL_OK) // 2]
    completions = [NORMAL_OK, ABNORMAL_OK, as_message(NORMAL_OK), "  " + NORMAL_OK + "\n", two_step_abnormal,
                   truncated, ABNORMAL_NO_SPAN, NORMAL_OK + " trailing text"]
    assert rewards.format_reward(completions) == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]


def test_format_rule_right_pays_only_right_well_formed_answers() -> None:
    # A wrong but well-formed Normal answer on an abnormal video is what pulls a model that
    # cannot yet tell the clips apart toward Normal: under "right" it earns nothing.
    completions = [NORMAL_OK, NORMAL_OK, ABNORMAL_OK, ABNORMAL_OK, ABNORMAL_NO_SPAN, "garbage"]
    solution = ["Normal", "Abnormal", "Abnormal", "Normal", "Abnormal", "Normal"]
    assert rewards.FormatReward("any")(completions, solution=solution) == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    assert rewards.FormatReward("right")(completions, solution=solution) == [1.0, 0.0, 1.0, 0.0, 0.0, 0.0]
    assert rewards.FormatReward("right").__name__ == "format_reward"  # TRL logs it under the same name
    with pytest.raises(ValueError, match="grpo.format_rule must be one of any, right"):
        rewards.FormatReward("strict")


def test_rewards_never_raise_on_garbage() -> None:
    completions = [*GARBAGE, None, 42, [{"role": "user"}], [{"role": "assistant", "content": None}]]
    solution = ["Abnormal"] * len(completions)
    assert rewards.accuracy_reward(completions, solution=solution) == [0.0] * len(completions)
    assert rewards.format_reward(completions) == [0.0] * len(completions)
    length = rewards.LengthReward(GRPOConfig(num_generations=len(completions)))
    assert length(completions, solution=solution, completion_ids=[[1] * 300] * len(completions)) == \
        [0.0] * len(completions)


# ---------------------------------------------------------------------------------------
# length


def test_length_bonus_needs_two_correct_in_the_group_and_the_label_range() -> None:
    reward = rewards.LengthReward(GRPOConfig(num_generations=4))  # ranges 140-261 normal, 233-456 abnormal
    completions = [ABNORMAL_OK, ABNORMAL_OK, NORMAL_OK, ABNORMAL_OK,  # group 1: abnormal video, 3 correct
                   NORMAL_OK, ABNORMAL_OK, "junk", ABNORMAL_OK,  # group 2: normal video, 1 correct
                   NORMAL_OK, NORMAL_OK, NORMAL_OK, ABNORMAL_OK]  # group 3: normal video, 3 correct
    solution = ["Abnormal"] * 4 + ["Normal"] * 8
    lengths = [300, 100, 300, 456,
               200, 300, 200, 300,
               140, 261, 262, 200]
    ids = [[7] * n for n in lengths]
    assert reward(completions, solution=solution, completion_ids=ids) == [
        0.2, 0.0, 0.0, 0.2,
        0.0, 0.0, 0.0, 0.0,
        0.2, 0.2, 0.0, 0.0,
    ]


def test_length_counts_with_the_tokenizer_when_ids_are_missing() -> None:
    class WordTokenizer:
        def __call__(self, text: str, add_special_tokens: bool) -> dict:
            return {"input_ids": text.split()}

    cfg = dataclasses.replace(GRPOConfig(num_generations=2), length_range_normal=[1, 30])
    reward = rewards.LengthReward(cfg, WordTokenizer())
    padded = NORMAL_OK + " word" * 40  # still correct, but now too long
    assert reward([NORMAL_OK, padded], solution=["Normal", "Normal"]) == [0.2, 0.0]
    with pytest.raises(TypeError, match="completion_ids"):
        rewards.LengthReward(cfg)([NORMAL_OK, NORMAL_OK], solution=["Normal", "Normal"])


LENGTH_ACROSS_PROCESSES = """
import json, sys
from accelerate import PartialState
from vadr1_lib.config import GRPOConfig
from vadr1_lib.training import rewards
from tests.test_rewards import ABNORMAL_OK, NORMAL_OK

state = PartialState(cpu=True)
rank = state.process_index
# G = 2: process 0 holds the group (correct, correct), process 1 the group (correct, wrong).
pairs = {0: [NORMAL_OK, NORMAL_OK], 1: [NORMAL_OK, ABNORMAL_OK]}[rank]
local = rewards.LengthReward(GRPOConfig(num_generations=2))(pairs, solution=["Normal"] * 2, completion_ids=[[7] * 200] * 2)
# G = 4: one group straddles both processes: (correct, wrong | correct, wrong).
halves = {0: [NORMAL_OK, ABNORMAL_OK], 1: [NORMAL_OK, ABNORMAL_OK]}[rank]
straddling = rewards.LengthReward(GRPOConfig(num_generations=4))(halves, solution=["Normal"] * 2,
                                                                   completion_ids=[[7] * 200] * 2)
json.dump({"local": local, "straddling": straddling}, open(sys.argv[1] + f"/rank{rank}.json", "w"))
state.destroy_process_group()  # gloo's threads otherwise abort the exiting process now and then
"""


def test_length_bonus_groups_span_processes_in_the_global_order(tmp_path) -> None:
    """Two real processes (gloo): each reads its groups at its offset in the gathered batch."""
    script = tmp_path / "length_across_processes.py"
    script.write_text(LENGTH_ACROSS_PROCESSES)
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_port", str(_free_port()), str(script), str(tmp_path)],
                            capture_output=True, text=True, cwd=paths.PROJECT_ROOT, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(paths.PROJECT_ROOT)})
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank0["local"] == [0.2, 0.2]  # two correct in its group
    assert rank1["local"] == [0.0, 0.0]  # one correct in its own group (not process 0's)
    assert rank0["straddling"] == rank1["straddling"] == [0.2, 0.0]  # two correct across the processes


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_length_rejects_a_batch_that_is_not_whole_groups() -> None:
    with pytest.raises(ValueError, match="groups of 4"):
        rewards.LengthReward(GRPOConfig(num_generations=4))([NORMAL_OK] * 3, solution=["Normal"] * 3,
                                                             completion_ids=[[1]] * 3)


# ---------------------------------------------------------------------------------------
# AVA with a scripted model


@pytest.fixture(scope="module")
def ci_videos(ci_profile) -> tuple[list[str], int]:
    """Paths of every ci clip (8 frames at 4 fps: training samples 4 frames), 16 distinct videos."""
    splits = stages.data_splits(ci_profile)
    paths = sorted(str(p) for p in Path(splits.rl).parent.glob("videos/*/*.mp4"))
    return paths, video.read_video_info(paths[0]).num_frames


class ScriptedModel:
    """A generate_fn that answers from a script and records every call's clips."""

    def __init__(self, answers: list[str]) -> None:
        self.answers = answers
        self.calls: list[list[video.VideoClip]] = []

    def __call__(self, clips: list[video.VideoClip]) -> list[str]:
        self.calls.append(clips)
        return self.answers[: len(clips)]


def test_ava_rewards_each_rollout_on_its_own_answer(ci_videos, ci_profile) -> None:
    paths, num_frames = ci_videos
    assert num_frames == 8 and len(paths) >= 9  # one video per case: no two cases share a view
    profile = ci_profile  # bonus +0.5, penalty -0.2, trim 0.3
    cases = [  # (weak label, rollout, scripted answer on the trimmed clip, expected reward)
        ("Abnormal", ABNORMAL_OK, NORMAL_OK, 0.5),  # the anomaly was in the span: bonus
        ("Abnormal", ABNORMAL_OK, ABNORMAL_OK, 0.0),  # still abnormal without the span
        ("Normal", NORMAL_OK, ABNORMAL_OK, -0.2),  # flips under a harmless cut, earned acc + format
        ("Normal", NORMAL_OK, NORMAL_OK, 0.0),
        ("Abnormal", NORMAL_OK, "<which>Fighting</which>", -0.2),  # wrong, but format earned
        ("Abnormal", "garbage", None, 0.0),  # no verdict to check: not re-queried
        # Abnormal without a span: not re-asked, as in the release (its -0.2 needs an answer that said
        # Normal). The old rule sent it down the Normal branch and took 0.2 when the verifier agreed.
        ("Abnormal", ABNORMAL_NO_SPAN, None, 0.0),
        ("Normal", NORMAL_OK, "no answer at all", 0.0),  # a re-answer without <which> says nothing
        ("Abnormal", abnormal(span=(0.0, 1.0)), None, 0.0),  # the span covers every frame: untrimmable
    ]
    model = ScriptedModel([answer for _, _, answer, _ in cases if answer is not None])
    ava = rewards.AnomalyVerificationReward(None, None, profile, seed=0, generate_fn=model)
    logged: dict[str, float] = {}
    got = ava([as_message(c[1]) for c in cases], solution=[c[0] for c in cases],
              video_path=[paths[i % len(paths)] for i in range(len(cases))],
              log_metric=logged.__setitem__)
    assert got == [c[3] for c in cases]
    assert len(model.calls) == 1 and len(model.calls[0]) == 6  # one batched call for every re-query
    record = ava.history[-1]
    assert record["branches"] == ["abnormal", "abnormal", "normal", "normal", "normal", "no-verdict",
                                  "abnormal-no-span", "normal", "abnormal-untrimmable"]
    assert (record["queries"], record["flips"], record["bonus"], record["penalty"], record["untrimmable"]) == \
        (6, 3, 1, 2, 1)
    assert ava.flip_rate == pytest.approx(3 / 6)
    assert logged == {"ava/queries": 6.0, "ava/flip_rate": pytest.approx(3 / 6)}
    first = record["checks"][0]  # what a notebook draws: the frames the verifier saw and its answer
    assert (first["rollout"], first["answer"], first["flipped"]) == (0, NORMAL_OK, True)
    assert first["kept_frames"] == [int(i) for i in model.calls[0][0].indices]
    assert first["cut"] == parsing.parse_completion(ABNORMAL_OK).span
    assert [check["rollout"] for check in record["checks"]] == [0, 1, 2, 3, 4, 7]


def test_ava_trims_the_claimed_span_and_a_head_or_tail(ci_videos, ci_profile) -> None:
    paths, num_frames = ci_videos
    profile = ci_profile
    model = ScriptedModel([NORMAL_OK] * 8)
    ava = rewards.AnomalyVerificationReward(None, None, profile, seed=3, generate_fn=model)
    ava([ABNORMAL_OK] + [NORMAL_OK] * 7, solution=["Abnormal"] + ["Normal"] * 7, video_path=[paths[0]] * 8)
    # 8 re-queries of one video, but only 3 distinct views (span removed, head cut, tail cut):
    # greedy answers are deterministic, so each view is generated once.
    assert (ava.history[-1]["queries"], ava.history[-1]["generations"]) == (8, 3)
    span_clip, *cut_clips = model.calls[0]
    # [0.25, 0.75] covers frames 2..5 (frame i lasts i/8 to (i+1)/8); the 4 left are 0, 1, 6, 7.
    assert span_clip.indices == [0, 1, 6, 7]
    assert len(span_clip.frames) == 4
    heads = []
    for clip in cut_clips:
        assert len(clip.indices) == 4
        head_cut = all(i / num_frames > 0.3 for i in clip.indices)
        tail_cut = all(i / num_frames < 0.7 for i in clip.indices)
        assert head_cut != tail_cut
        heads.append(head_cut)
    assert len(set(heads)) == 2  # the coin is drawn per rollout
    again = ScriptedModel([NORMAL_OK] * 8)
    rewards.AnomalyVerificationReward(None, None, profile, seed=3, generate_fn=again)(
        [ABNORMAL_OK] + [NORMAL_OK] * 7, solution=["Abnormal"] + ["Normal"] * 7, video_path=[paths[0]] * 8)
    assert [c.indices for c in again.calls[0]] == [c.indices for c in model.calls[0]]  # seeded


def test_ava_without_queries_still_calls_generate_once_with_nothing(ci_videos, ci_profile) -> None:
    """Under ZeRO-3 every process must enter the generation context, even with nothing to ask."""
    paths, _ = ci_videos
    model = ScriptedModel([])
    ava = rewards.AnomalyVerificationReward(None, None, ci_profile, generate_fn=model)
    assert ava(GARBAGE, solution=["Normal"] * len(GARBAGE), video_path=[paths[0]] * len(GARBAGE)) == \
        [0.0] * len(GARBAGE)
    assert model.calls == [[]]
    assert ava.flip_rate is None


def test_a_normal_answer_that_also_writes_a_when_is_checked_as_normal(ci_videos, ci_profile) -> None:
    """A stray <when> in a Normal answer must not send it down the abnormal branch, where
    its "span" would be cut and a Normal re-answer would pay +0.5: a reward-hacking path."""
    paths, num_frames = ci_videos
    normal_with_when = NORMAL_OK.replace("</answer>", " It lasts <when>[0.25, 0.75]</when>.</answer>")
    assert prompts.NORMAL_LABEL in normal_with_when and "<when>[0.25, 0.75]</when>" in normal_with_when
    model = ScriptedModel([NORMAL_OK])
    ava = rewards.AnomalyVerificationReward(None, None, ci_profile, seed=0, generate_fn=model)
    assert ava([normal_with_when], solution=["Normal"], video_path=[paths[0]]) == [0.0]
    assert ava.history[-1]["branches"] == ["normal"]
    (clip,), = model.calls
    cuts = [ava.trimmed_indices(paths[0], video.head_tail_trim(head)) for head in (True, False)]
    assert clip.indices in cuts  # a 30% head or tail cut, not the claimed span
    assert clip.indices != ava.trimmed_indices(paths[0], (0.25, 0.75))


def test_flip_rates_are_split_by_branch_and_by_whether_the_rollout_was_right(ci_videos, ci_profile) -> None:
    paths, _ = ci_videos
    ava = rewards.AnomalyVerificationReward(None, None, ci_profile, seed=0, generate_fn=ScriptedModel([NORMAL_OK] * 3))
    ava([ABNORMAL_OK, NORMAL_OK, NORMAL_OK], solution=["Abnormal", "Normal", "Abnormal"], video_path=paths[:3])
    assert ava.flip_rates() == {  # the verifier always answers Normal here
        "abnormal, right rollout": {"queries": 1, "flip_rate": 1.0},
        "normal, right rollout": {"queries": 1, "flip_rate": 0.0},
        "normal, wrong rollout": {"queries": 1, "flip_rate": 0.0},
    }


def test_the_label_rule_pays_no_false_alarm_and_does_not_ask(ci_videos, ci_profile) -> None:
    """An Abnormal claim on a Normal-labelled video, whose cut leaves a normal video: the paper's
    rule pays +0.5 when the verifier answers Normal; the label rule pays nothing and asks nothing."""
    paths, _ = ci_videos
    claims = [ABNORMAL_OK, ABNORMAL_OK]
    labels = ["Normal", "Abnormal"]  # a false alarm, then a right claim
    paid = {}
    for rule in ("paper", "label"):
        profile = dataclasses.replace(ci_profile, grpo=dataclasses.replace(ci_profile.grpo, ava_rule=rule))
        model = ScriptedModel([NORMAL_OK, NORMAL_OK])
        ava = rewards.AnomalyVerificationReward(None, None, profile, seed=0, generate_fn=model)
        paid[rule] = ava(claims, solution=labels, video_path=paths[:2])
        paid[rule + " queries"] = len(model.calls[0])
        paid[rule + " branches"] = ava.history[-1]["branches"]
    assert paid["paper"] == [0.5, 0.5] and paid["paper queries"] == 2
    assert paid["label"] == [0.0, 0.5] and paid["label queries"] == 1
    assert paid["label branches"] == ["abnormal-unpaid", "abnormal"]


def test_an_unknown_ava_rule_or_verdict_reading_is_refused(ci_profile) -> None:
    for field, value in (("ava_rule", "generous"), ("ava_verdict", "vibes")):
        profile = dataclasses.replace(ci_profile, grpo=dataclasses.replace(ci_profile.grpo, **{field: value}))
        with pytest.raises(ValueError, match=field):
            rewards.AnomalyVerificationReward(None, None, profile, generate_fn=ScriptedModel([]))
    deciding = dataclasses.replace(ci_profile, grpo=dataclasses.replace(ci_profile.grpo, ava_verdict="deciding-token"))
    with pytest.raises(ValueError, match="SFT targets"):
        rewards.AnomalyVerificationReward(lambda: None, None, deciding)


MINI_STEP1 = "<think><step1>The video shows a campus path.</step1>  \n<step2>"
MINI_TARGETS = [(MINI_STEP1 + "Nothing unusual happens.</step2></think>\n<answer><which>Normal</which></answer>", False),
                (MINI_STEP1 + "At 2.0 s, a fire burns.</step2></think>\n<answer><which>Fire</which></answer>", True),
                (MINI_STEP1 + "From 1.0 s to 3.0 s, water spreads.</step2></think>\n<answer><which>Flooding or "
                 "Tsunami</which></answer>", True)]


@pytest.mark.parametrize(("answer", "reading"), [
    # The first words of step 2 commit to a verdict.
    (MINI_STEP1 + "Nothing", "Normal"),
    (MINI_STEP1 + "At", "Abnormal"),
    (MINI_STEP1 + "From 1", "Abnormal"),
    # Not yet decided: the shared first step.
    (MINI_STEP1, None),
    ("<think><step1>The video", None),
    # Text that leaves every target decides nothing until its <which> is closed.
    ("<think><step1>A parking lot.</step1>", None),
    ("<think><step1>A parking lot.</step1></think><answer><which>Normal</which>", "Normal"),
    ("<think><step1>A parking lot.</step1></think><answer><which>Fire</which>", "Abnormal"),
    ("<answer><which>Fire", None),  # an unclosed <which> says nothing yet
])
def test_a_cut_short_re_query_reads_its_verdict(answer, reading) -> None:
    assert rewards.VerdictReader(MINI_TARGETS)(answer) == reading
    assert rewards.VerdictReader()(answer) == (reading if "</which>" in answer else None)  # <which> only


def test_every_beginning_of_an_answer_reads_its_whole_answers_verdict_or_none() -> None:
    """A re-query stopped anywhere never reads another verdict than its whole answer's <which>,
    and each answer is decided at the first word of its step 2, long before its <which>."""
    reader, which_only = rewards.VerdictReader(MINI_TARGETS), rewards.VerdictReader()
    for text, _ in MINI_TARGETS:
        whole = which_only(text)
        readings = [reader(text[:end]) for end in range(len(text) + 1)]
        assert set(readings) <= {None, whole}
        decided_at = readings.index(whole)
        assert decided_at == len(MINI_STEP1) + 1 < text.index("<which>")


def test_reading_at_the_first_words_needs_both_verdicts() -> None:
    with pytest.raises(ValueError, match="both verdicts"):
        rewards.VerdictReader(MINI_TARGETS[1:])
