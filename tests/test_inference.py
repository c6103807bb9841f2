"""Batched inference over a split: rows written, resumable after a kill, bad videos skipped."""

import json
import shutil
from pathlib import Path

import pytest

from vadr1_lib import config, stages
from vadr1_lib.data import dataset
from vadr1_lib.evaluation import inference
from vadr1_lib.model import modeling


@pytest.fixture(scope="module")
def setup(private_runs):
    profile = config.load_profile("ci", {"eval.batch_size": 2, "eval.max_new_tokens": 8})
    splits = stages.data_splits(profile)
    base = stages.ensure_base_model(profile)
    return profile, splits, base, modeling.load_model_and_processor(base, profile)


def test_predictions_cover_the_split_with_parsed_fields(setup, tmp_path):
    profile, splits, base, loaded = setup
    out = tmp_path / "pred.jsonl"
    report = inference.predict_split(base, splits.test, out, profile, loaded=loaded, progress=False)
    rows = inference.read_predictions(out)
    test = dataset.load_sft(splits.test)
    assert report.written == len(test) == len(rows) and report.already_done == 0 and not report.skipped
    assert {r["id"] for r in rows} == {t.id for t in test}
    row = rows[0]
    assert row["prompt_kind"] == "p2c" and 1 <= row["new_tokens"] <= 8
    assert set(row["parsed"]) >= {"which", "when", "predicted_label", "format_valid", "problems"}
    assert report.tokens_per_s > 0


def test_the_profile_decoding_reaches_generate(setup, tmp_path, monkeypatch):
    # The GPU profiles sample as the release did (temperature 0.1, top-p 0.9); the call must carry it.
    profile, splits, base, loaded = setup
    sampled = config.load_profile("ci", {"eval.batch_size": 2, "eval.max_new_tokens": 8, "eval.do_sample": True,
                                         "eval.temperature": 0.1, "eval.top_p": 0.9})
    model = loaded[0]
    real_generate = model.generate
    seen = {}

    def recording_generate(*args, **kwargs):
        seen.update(kwargs)
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(model, "generate", recording_generate)
    inference.predict_split(base, splits.test, tmp_path / "pred.jsonl", sampled, loaded=loaded, progress=False, limit=1)
    assert (seen["do_sample"], seen["temperature"], seen["top_p"], seen["max_new_tokens"]) == (True, 0.1, 0.9, 8)


def test_a_killed_run_resumes_without_duplicates(setup, tmp_path, monkeypatch):
    profile, splits, base, loaded = setup
    out = tmp_path / "pred.jsonl"
    model = loaded[0]
    real_generate = model.generate
    calls = {"n": 0}

    def generate_then_die(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # killed while the second batch is in flight
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(model, "generate", generate_then_die)
    with pytest.raises(KeyboardInterrupt):
        inference.predict_split(base, splits.test, out, profile, loaded=loaded, progress=False)
    assert len(inference.read_predictions(out)) == 2  # the first batch survived
    with out.open("a") as handle:
        handle.write('{"id": "torn')  # and a torn write is tolerated
    monkeypatch.setattr(model, "generate", real_generate)
    report = inference.predict_split(base, splits.test, out, profile, loaded=loaded, progress=False)
    rows = inference.read_predictions(out)
    ids = [r["id"] for r in rows]
    assert report.already_done == 2 and report.written == len(dataset.load_sft(splits.test)) - 2
    assert len(ids) == len(set(ids)) == len(dataset.load_sft(splits.test))
    again = inference.predict_split(base, splits.test, out, profile, loaded=loaded, progress=False)
    assert again.written == 0


def test_other_prompt_kind_in_the_same_file_is_refused(setup, tmp_path):
    profile, splits, base, loaded = setup
    out = tmp_path / "pred.jsonl"
    inference.predict_split(base, splits.test, out, profile, loaded=loaded, progress=False, limit=1)
    with pytest.raises(ValueError, match="holds \\['p2c'\\] predictions"):
        inference.predict_split(base, splits.test, out, profile, prompt_kind="direct", loaded=loaded, progress=False)


def test_unreadable_videos_are_skipped_and_reported(setup, tmp_path):
    profile, splits, base, loaded = setup
    copy = tmp_path / "split"
    shutil.copytree(splits.test.parent / "videos", copy / "videos")
    rows = [json.loads(line) for line in splits.test.read_text().splitlines()]
    (copy / rows[0]["path"]).write_bytes(b"")
    (copy / rows[1]["path"]).unlink()
    (copy / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = inference.predict_split(base, copy / "test.jsonl", tmp_path / "p.jsonl", profile, loaded=loaded, progress=False)
    assert report.written == len(rows) - 2
    reasons = dict(report.skipped)
    assert "corrupt video" in reasons[f"{rows[0]['source']}/{rows[0]['video']}"]
    assert "not found" in reasons[f"{rows[1]['source']}/{rows[1]['video']}"]


def test_a_cached_tiny_model_is_rebuilt_when_its_settings_change(setup):
    profile, _, base, _ = setup
    stamp = (Path(base) / "model.safetensors").stat().st_mtime_ns
    assert stages.ensure_base_model(profile) == base  # same settings: reused
    assert (Path(base) / "model.safetensors").stat().st_mtime_ns == stamp
    deeper = config.load_profile("ci", {"model.tiny.num_layers": profile.model.tiny.num_layers + 1})
    rebuilt = stages.ensure_base_model(deeper)  # same folder, other settings: built again, not reused
    assert json.loads((Path(rebuilt) / "config.json").read_text())["text_config"]["num_hidden_layers"] == \
        profile.model.tiny.num_layers + 1
    assert stages.ensure_base_model(profile) == base  # and back (the other tests of this module use it)
    assert json.loads((Path(base) / "config.json").read_text())["text_config"]["num_hidden_layers"] == \
        profile.model.tiny.num_layers
