"""VANE-style questions: four distinct options, the truth among them, answered by a real model."""

import pytest

from vadr1_lib import stages
from vadr1_lib.data import dataset
from vadr1_lib.evaluation import vane
from vadr1_lib.model import modeling


@pytest.fixture(scope="module")
def ci(private_runs, ci_profile):
    records = dataset.load_sft(stages.data_splits(ci_profile).test)
    return ci_profile, records, stages.ensure_base_model(ci_profile)


def test_questions_have_four_distinct_options_with_the_truth(ci):
    _, records, _ = ci
    questions = vane.make_questions(records, seed=0)
    assert questions and {q.kind for q in questions} >= {"which", "what"}
    for q in questions:
        assert len(q.options) == 4 == len(set(q.options))
    for record in records:
        which = [q for q in questions if q.video_id.endswith(record.video) and q.kind == "which"]
        assert which and which[0].options[which[0].answer] == record.category
    assert vane.make_questions(records, seed=0) == questions  # seeded


def test_release_questions_use_other_clips_as_distractors(release_sft_path):
    records = [r for r in dataset.load_sft(release_sft_path) if r.is_abnormal][:40]
    questions = vane.make_questions(records, seed=1)
    whats = {r.video: vane._fields(r)["what"] for r in records}
    for q in (q for q in questions if q.kind == "what"):
        own = whats[q.video_id.split("/", 1)[1]]
        assert q.options[q.answer] == own and sum(o == own for o in q.options) == 1


def test_a_model_answers_and_is_scored(ci):
    profile, records, base = ci
    model, processor = modeling.load_model_and_processor(base, profile)
    questions = vane.make_questions(records, seed=0)[:3]
    scores = vane.option_scores(model, processor, questions[0], profile)
    assert len(scores) == 4 and all(s < 0 for s in scores) and len(set(scores)) == 4
    result = vane.ask(model, processor, questions, profile)
    assert result["questions"] == 3 and 0.0 <= result["accuracy"] <= 1.0
    assert len(result["choices"]) == 3
