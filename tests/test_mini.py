"""Vad-Reasoning-Mini: schema, balance, videos, ground truth, determinism, footage errors.

Everything is built with the ci profile into tmp_path; only the footage (vtest.avi) is
cached under the real data dir, by footage.ensure_vtest.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from vadr1_lib.config import load_profile
from vadr1_lib.data import clips, drawing, mini, taxonomy
from vadr1_lib.data.dataset import load_rl, load_sft
from vadr1_lib.data.footage import FootageUnavailableError, ensure_vtest
from vadr1_lib.data.video import load_frames, read_video_info, write_video

WHEN = re.compile(r"<when>\[([0-9.]+), ([0-9.]+)\]</when>")


@pytest.fixture(scope="module")
def built(tmp_path_factory, ci_profile) -> mini.BuildReport:
    return mini.build_dataset(ci_profile, tmp_path_factory.mktemp("mini") / "ci", progress=False)


@pytest.fixture(scope="module")
def vtest_window() -> np.ndarray:
    """32 frames (8 s at 4 fps) of vtest, at a quarter of its size."""
    frames = load_frames(ensure_vtest(), clips.source_indices(100, 32, 10.0, 4.0))
    return np.ascontiguousarray(frames[:, ::4, ::4])


def _raw_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _frames_digest(root: Path) -> dict[str, str]:
    digests = {}
    for video in sorted((root / "videos").rglob("*.mp4")):
        info = read_video_info(video)
        frames = load_frames(video, list(range(info.num_frames)))
        digests[video.relative_to(root).as_posix()] = hashlib.sha256(frames.tobytes()).hexdigest()
    return digests


def test_splits_follow_the_release_schema_and_are_balanced(built, ci_profile):
    data = ci_profile.data
    paths = built.paths
    sft, val, test, rl = load_sft(paths.sft_train), load_sft(paths.val), load_sft(paths.test), load_rl(paths.rl)
    assert (len(sft), len(rl), len(val), len(test)) == (data.n_sft_train, data.n_rl, data.n_val, data.n_test) == \
        (8, 4, 4, 4)
    for records in (sft, rl, val, test):
        assert sum(r.is_abnormal for r in records) == len(records) // 2
    assert [r.category for r in sft] == ["Fire", "Normal", "Flooding or Tsunami", "Normal",
                                         "Illegal Parking", "Normal", "Electrical Failures", "Normal"]
    assert [r.solution for r in rl] == ["Abnormal", "Normal", "Abnormal", "Normal"]
    assert {r.source for r in [*sft, *rl, *val, *test]} == {"Mini"}
    assert len({r.video for r in [*sft, *rl, *val, *test]}) == 20  # ids are unique across splits
    for path in (paths.sft_train, paths.rl, paths.val, paths.test):
        for row in _raw_rows(path):
            assert row["path"].startswith("videos/") and not Path(row["path"]).is_absolute()
    for row in _raw_rows(paths.rl):
        assert list(row) == ["source", "video", "anomaly_type", "path", "data_type", "solution"]
    for record in (*sft, *val, *test):
        assert record.total_frames == data.clip_frames
        assert (record.start is None) == (not record.is_abnormal)
    assert built.counts == {split: {"rows": n, "abnormal": n // 2, "normal": n // 2}
                            for split, n in (("sft_train", 8), ("rl", 4), ("val", 4), ("test", 4))}
    assert built.categories["test"] == {"Fire": 1, "Flooding or Tsunami": 1}


def test_every_video_exists_with_the_profile_shape(built, ci_profile):
    data = ci_profile.data
    records = [*load_sft(built.paths.sft_train), *load_rl(built.paths.rl), *load_sft(built.paths.val),
               *load_sft(built.paths.test)]
    for record in records:
        info = read_video_info(record.path)
        assert (info.num_frames, info.width, info.height) == (data.clip_frames, data.frame_width, data.frame_height)
        assert info.fps == pytest.approx(data.clip_fps)
    assert len(list(built.paths.videos.rglob("*.mp4"))) == len(records)


def test_answers_carry_the_exact_span_and_boxes_cover_it(built):
    boxes = mini.load_boxes(built.paths)
    for record in [*load_sft(built.paths.sft_train), *load_sft(built.paths.test)]:
        truth = boxes[record.video]
        assert truth["category"] == record.category
        match = WHEN.search(record.answer)
        if not record.is_abnormal:
            assert match is None and truth["boxes"] == {} and truth["start"] is None
            continue
        assert (float(match[1]), float(match[2])) == (round(record.start / record.total_frames, 3),
                                                      round(record.end / record.total_frames, 3))
        assert (truth["start"], truth["end"]) == (record.start, record.end)
        assert sorted(truth["boxes"]) == list(range(record.start, record.end))
        span = record.end - record.start
        assert math.ceil(0.25 * record.total_frames) <= span <= math.floor(0.7 * record.total_frames)


def test_val_and_test_clips_come_from_later_footage_than_training_clips(built):
    boxes = mini.load_boxes(built.paths)
    split_point = int(795 * clips.TRAIN_FRACTION)  # 596 for vtest
    for entry in boxes.values():
        frames = entry["source_frames"]
        if entry["split"] in ("val", "test"):
            assert min(frames) >= split_point
        else:
            assert max(frames) < split_point
    # The same held-out footage, other clips: val is drawn like test, never as a copy of it.
    held_out = {split: [(tuple(e["source_frames"]), tuple(e["crop"]), e["category"]) for e in boxes.values()
                        if e["split"] == split] for split in ("val", "test")}
    assert held_out["val"] and not set(held_out["val"]) & set(held_out["test"])
    manifest = json.loads(built.paths.manifest.read_text())
    assert manifest["split_points"]["vtest.avi"] == {"train_windows_start": [0, 577], "test_windows_start": [596, 776],
                                                    "frames": 795}


def test_same_seed_gives_identical_files_and_frames(built, ci_profile, tmp_path):
    again = mini.build_dataset(ci_profile, tmp_path / "again", progress=False)
    for name in ("sft_train.jsonl", "rl.jsonl", "test.jsonl", "boxes.json"):
        assert _sha256(built.paths.root / name) == _sha256(again.paths.root / name)
    assert _frames_digest(built.paths.root) == _frames_digest(again.paths.root)


def test_a_clip_does_not_depend_on_the_split_size(built, tmp_path):
    smaller = load_profile("ci", {"data.n_sft_train": 2, "data.n_rl": 0, "data.n_test": 0})
    report = mini.build_dataset(smaller, tmp_path / "small", progress=False)
    assert _raw_rows(report.paths.sft_train) == _raw_rows(built.paths.sft_train)[:2]
    assert report.paths.rl.read_text() == ""


@pytest.mark.parametrize("category", drawing.DRAWN_CATEGORIES)
def test_drawn_anomaly_is_large_and_only_inside_its_span(category, vtest_window):
    """Rendered with the same generator as a normal clip, the background is identical, so
    every difference is the drawing: none outside the span, a large one inside the box."""
    for seed in range(3):
        clip = clips.render_clip(vtest_window, category, np.random.default_rng(seed), width=112, height=112)
        plain = clips.render_clip(vtest_window, taxonomy.NORMAL, np.random.default_rng(seed), width=112, height=112)
        assert (clip.crop, clip.flipped, clip.brightness) == (plain.crop, plain.flipped, plain.brightness)
        assert sorted(clip.boxes) == list(range(clip.start, clip.end))
        for k in range(32):
            if k not in clip.boxes:
                assert np.array_equal(clip.frames[k], plain.frames[k]), f"{category}: frame {k} changed"
        areas, differences = [], []
        for k, (x0, y0, x1, y1) in clip.boxes.items():
            assert 0 <= x0 < x1 <= 112 and 0 <= y0 < y1 <= 112
            areas.append((x1 - x0) * (y1 - y0) / 112**2)
            inside = np.abs(clip.frames[k, y0:y1, x0:x1].astype(int) - plain.frames[k, y0:y1, x0:x1])
            differences.append(inside.mean())
        # Large enough for a tiny model (one video token is 28 px) and clearly visible.
        assert np.mean(areas) >= 0.3, f"{category}: mean box area {np.mean(areas):.2f} of the frame"
        assert min(differences) >= 10 and np.mean(differences) >= 20, f"{category}: {differences}"


def test_draw_anomaly_respects_a_given_span_and_rejects_bad_input(vtest_window):
    frames = vtest_window[:8]
    out, boxes = drawing.draw_anomaly(frames, "Fire", np.random.default_rng(0), span=(2, 5))
    assert sorted(boxes) == [2, 3, 4]
    assert np.array_equal(out[:2], frames[:2]) and np.array_equal(out[5:], frames[5:])
    with pytest.raises(ValueError, match="no drawing"):
        drawing.draw_anomaly(frames, "Robbery", np.random.default_rng(0))
    with pytest.raises(ValueError, match="span"):
        drawing.draw_anomaly(frames, "Fire", np.random.default_rng(0), span=(3, 9))


@pytest.mark.parametrize("total", [2, 8, 32])
def test_random_span_covers_25_to_70_percent(total):
    lengths = set()
    for seed in range(200):
        start, end = drawing.random_span(total, np.random.default_rng(seed))
        assert 0 <= start < end <= total
        lengths.add(end - start)
    assert min(lengths) == max(1, math.ceil(0.25 * total))
    assert max(lengths) == max(1, min(total - 1, math.floor(0.7 * total)))


def _write_footage(folder: Path) -> None:
    """A usable 100-frame video, a too-short one and a corrupt one."""
    frames = load_frames(ensure_vtest(), list(range(100)))[:, ::4, ::4]
    write_video(np.ascontiguousarray(frames), folder / "good.mp4", fps=10.0)
    write_video(np.ascontiguousarray(frames[:20]), folder / "short.mp4", fps=10.0)
    (folder / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)


def test_user_footage_folder_skips_and_counts_bad_files(tmp_path, ci_profile):
    folder = tmp_path / "my footage"
    _write_footage(folder)
    report = mini.build_dataset(ci_profile, tmp_path / "out", footage=folder, progress=False)
    assert report.footage == ["good.mp4"]
    assert sorted(name for name, _ in report.skipped_footage) == ["broken.mp4", "short.mp4"]
    assert "too short" in dict(report.skipped_footage)["short.mp4"]
    manifest = json.loads(report.paths.manifest.read_text())
    assert len(manifest["skipped_footage"]) == 2 and manifest["key"]["footage"][0]["name"] == "good.mp4"
    records = load_sft(report.paths.test)
    assert len(records) == 4 and all(clips.USER_FOOTAGE_SCENE in r.think for r in records)
    text = mini.format_build_report(report)
    assert "sft_train     8 clips (4 abnormal, 4 normal)" in text
    assert "skipped 2 footage file(s)" in text and "broken.mp4:" in text


def test_missing_or_unusable_footage_is_a_clear_error(tmp_path, ci_profile):
    with pytest.raises(FileNotFoundError, match="footage folder not found"):
        mini.build_dataset(ci_profile, tmp_path / "out", footage=tmp_path / "nowhere", progress=False)
    only_short = tmp_path / "short"
    only_short.mkdir()
    frames = np.zeros((10, 48, 64, 3), np.uint8)
    write_video(frames, only_short / "tiny.mp4", fps=10.0)
    with pytest.raises(FootageUnavailableError, match="long enough"):
        mini.build_dataset(ci_profile, tmp_path / "out", footage=only_short, progress=False)
    assert not (tmp_path / "out").exists()


def test_ensure_dataset_reuses_a_matching_build_and_rebuilds_otherwise(built, ci_profile, monkeypatch):
    def no_build(*args, **kwargs):
        raise AssertionError("rebuilt although the manifest matches")

    monkeypatch.setattr(mini, "_build", no_build)
    assert mini.ensure_dataset(ci_profile, built.paths.root, progress=False) == built.paths
    calls = []
    monkeypatch.setattr(mini, "_build", lambda *args, **kwargs: calls.append(args) or built)
    mini.ensure_dataset(load_profile("ci", {"data.seed": 1}), built.paths.root, progress=False)
    assert len(calls) == 1


def test_interrupted_build_leaves_no_dataset_and_keeps_the_old_one(ci_profile, tmp_path, monkeypatch):
    out = tmp_path / "ds"
    mini.build_dataset(load_profile("ci", {"data.n_sft_train": 2, "data.n_rl": 0, "data.n_test": 0}), out,
                        progress=False)
    before = _sha256(out / "sft_train.jsonl")
    written = []

    def failing_write(frames, path, fps):
        written.append(path)
        if len(written) == 5:
            raise KeyboardInterrupt
        return write_video(frames, path, fps)

    monkeypatch.setattr(mini, "write_video", failing_write)
    with pytest.raises(KeyboardInterrupt):
        mini.build_dataset(load_profile("ci", {"data.seed": 3}), out, progress=False)
    assert _sha256(out / "sft_train.jsonl") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no staging folder left
    with pytest.raises(KeyboardInterrupt):
        written.clear()
        mini.build_dataset(ci_profile, tmp_path / "fresh", progress=False)
    assert not (tmp_path / "fresh").exists()


def test_refuses_to_overwrite_a_folder_that_is_not_a_build(tmp_path, ci_profile):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(mini.DatasetBuildError, match="not a Vad-Reasoning-Mini build"):
        mini.build_dataset(ci_profile, tmp_path, progress=False)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_bad_parameters_are_rejected(tmp_path):
    with pytest.raises(mini.DatasetBuildError, match="even"):
        mini.build_dataset(load_profile("ci", {"data.frame_width": 55}), tmp_path / "x", progress=False)


def test_a_variant_reuses_the_profiles_dataset_or_builds_its_own_beside_it(tmp_path, monkeypatch, ci_profile):
    """An exercise that changes data settings must not replace the chapter's dataset."""
    monkeypatch.setenv("VADR1_DATA", str(tmp_path))
    own = mini.ensure_dataset(ci_profile, progress=False)
    before = own.manifest.read_text()
    same = mini.ensure_dataset(load_profile("ci", variant="same-data"), progress=False)
    assert same.root == own.root  # nothing built: the settings are the profile's
    other = mini.ensure_dataset(load_profile("ci", {"data.seed": 1}, variant="other-seed"), progress=False)
    assert other.root == tmp_path / "vad-reasoning-mini" / "ci-variants" / "other-seed"
    assert own.manifest.read_text() == before  # the profile's own dataset is untouched
