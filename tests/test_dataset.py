import json
import re
import time
from pathlib import Path

import pytest

from vadr1_lib.data import dataset
from vadr1_lib.data.dataset import DatasetFormatError, SFTRecord

ABNORMAL_ROW = {
    "source": "ECVA",
    "video": "1900",
    "anomaly_type": "Animal Hurts Human",
    "start": 600,
    "end": 3420,
    "total_frames": 5294,
    "path": "/media/wbf/VA-Reasoning-SFT/ECVA/1900.mp4",
    "think": "<think><step1>A street.</step1> <step2>A dog bites.</step2></think>",
    "answer": "<answer>The anomaly category of the video is <which>Animal Hurts Human</which>.</answer>",
}
NORMAL_ROW = {
    "source": "XD",
    "video": "v=abc",
    "anomaly_type": "Normal",
    "total_frames": 1000,
    "path": "/media/wbf/VA-Reasoning-SFT/Normal_XD/v=abc.mp4",
    "think": "<think><step1>A quiet road with cars.</step1></think>",
    "answer": "<answer><which>Normal</which> nothing odd</answer>",
}
RL_ROW = {
    "source": "SH",
    "video": "01_0015",
    "anomaly_type": "Abnormal",
    "path": "/media/wbf/VA-Reasoning-RL/SH/Abnormal/01_0015.mp4",
    "data_type": "video",
    "solution": "Abnormal",
}


def write_lines(path: Path, lines: list) -> Path:
    """Each item is a dict (written as JSON) or a raw string (written verbatim)."""
    text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    path.write_text(text, encoding="utf-8")
    return path


def test_load_sft_builds_typed_records_with_remapped_paths(tmp_path):
    file = write_lines(tmp_path / "sft.jsonl", [ABNORMAL_ROW, NORMAL_ROW])
    abnormal, normal = dataset.load_sft(file, video_root=tmp_path / "videos")
    assert abnormal == SFTRecord(
        source="ECVA",
        video="1900",
        anomaly_type="Animal Hurts Human",
        category="Animals Hurt Human",
        path=tmp_path / "videos" / "ECVA" / "1900.mp4",
        total_frames=5294,
        think=ABNORMAL_ROW["think"],
        answer=ABNORMAL_ROW["answer"],
        start=600,
        end=3420,
    )
    assert abnormal.is_abnormal and not normal.is_abnormal
    assert abnormal.span_fraction == (0.113, 0.646)
    assert normal.span_fraction is None
    assert (normal.start, normal.end) == (None, None)
    assert normal.path == tmp_path / "videos" / "Normal_XD" / "v=abc.mp4"
    assert abnormal.target_text == ABNORMAL_ROW["think"] + "\n" + ABNORMAL_ROW["answer"]


@pytest.mark.parametrize(
    ("bad_line", "reason"),
    [
        ('{"source": "ECVA", "video": ', "invalid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ({k: v for k, v in ABNORMAL_ROW.items() if k != "think"}, "missing field 'think'"),
        ({**ABNORMAL_ROW, "total_frames": "5294"}, "field 'total_frames' must be int, got str"),
        ({**ABNORMAL_ROW, "total_frames": True}, "field 'total_frames' must be int, got bool"),
        ({**ABNORMAL_ROW, "video": "  "}, "field 'video' is empty"),
        ({**ABNORMAL_ROW, "start": 3500}, "span start=3500 end=3420 is empty or reversed"),
        ({**ABNORMAL_ROW, "start": 3420}, "span start=3420 end=3420 is empty or reversed"),
        ({**ABNORMAL_ROW, "start": -1}, "span start=-1 end=3420 is empty or reversed"),
        ({**ABNORMAL_ROW, "end": 6000}, "span end=6000 lies beyond total_frames=5294"),
        ({k: v for k, v in ABNORMAL_ROW.items() if k != "end"}, "lacks start/end"),
        ({**NORMAL_ROW, "start": 1, "end": 5}, "normal row carries an anomaly span"),
        ({**ABNORMAL_ROW, "anomaly_type": "Meteor Strike"}, "unknown anomaly label 'Meteor Strike'"),
        ({**ABNORMAL_ROW, "anomaly_type": "Abnormal"}, "not the binary label"),
    ],
)
def test_bad_sft_row_raises_with_file_line_and_reason(tmp_path, bad_line, reason):
    file = write_lines(tmp_path / "sft.jsonl", [NORMAL_ROW, "", bad_line, ABNORMAL_ROW])
    with pytest.raises(DatasetFormatError) as caught:
        dataset.load_sft(file)
    error = caught.value
    assert isinstance(error, ValueError)
    assert (error.path, error.line) == (file, 3)  # the blank line 2 is skipped but counted
    assert reason in error.reason
    assert str(error).startswith(f"{file}:3: ")


def test_collect_mode_returns_good_records_and_every_error(tmp_path):
    lines = [ABNORMAL_ROW, "not json", NORMAL_ROW, {**ABNORMAL_ROW, "end": 99999}]
    file = write_lines(tmp_path / "sft.jsonl", lines)
    records, errors = dataset.load_sft(file, errors="collect")
    assert [record.video for record in records] == ["1900", "v=abc"]
    assert [error.line for error in errors] == [2, 4]
    with pytest.raises(ValueError, match="errors must be"):
        dataset.load_sft(file, errors="skip")  # type: ignore[call-overload]


def test_invalid_utf8_is_reported_on_its_line(tmp_path):
    file = tmp_path / "sft.jsonl"
    file.write_bytes(json.dumps(NORMAL_ROW).encode() + b"\n\xff\xfe\n")
    with pytest.raises(DatasetFormatError, match="not UTF-8") as caught:
        dataset.load_sft(file)
    assert caught.value.line == 2


def test_load_rl_checks_labels_agree(tmp_path):
    normal_row = {**RL_ROW, "anomaly_type": "Normal", "solution": "Normal", "path": "clips/n.mp4"}
    file = write_lines(tmp_path / "rl.jsonl", [RL_ROW, normal_row])
    abnormal, normal = dataset.load_rl(file, video_root=tmp_path)
    assert abnormal.path == tmp_path / "SH" / "Abnormal" / "01_0015.mp4"
    assert (abnormal.label, abnormal.category, abnormal.is_abnormal) == ("Abnormal", "Abnormal", True)
    assert (normal.label, normal.is_abnormal, normal.path) == ("Normal", False, tmp_path / "clips" / "n.mp4")
    fine_grained = {**RL_ROW, "anomaly_type": "Drown"}  # a generated RL file may name the category
    [record] = dataset.load_rl(write_lines(tmp_path / "fine.jsonl", [fine_grained]))
    assert (record.category, record.label) == ("Drowning", "Abnormal")

    for bad_row, reason in [
        ({**RL_ROW, "anomaly_type": "Normal"}, "contradicts solution"),
        ({**RL_ROW, "solution": "Fire"}, "solution must be Abnormal or Normal"),
        ({**RL_ROW, "data_type": "image"}, "data_type must be 'video'"),
        ({k: v for k, v in RL_ROW.items() if k != "solution"}, "missing field 'solution'"),
    ]:
        with pytest.raises(DatasetFormatError, match=reason):
            dataset.load_rl(write_lines(tmp_path / "bad.jsonl", [bad_row]))


def test_path_remapping_rule(tmp_path):
    root = tmp_path / "root"
    remap = dataset.remap_video_path
    assert remap("/media/wbf/VA-Reasoning-SFT/UCF/Burglary073_x264.mp4", root) == root / "UCF" / "Burglary073_x264.mp4"
    assert remap("/media/wbf/VA-Reasoning-RL/UB/Scene10/a.mp4", root) == root / "UB" / "Scene10" / "a.mp4"
    assert remap("videos/abc.mp4", root) == root / "videos" / "abc.mp4"
    assert remap("/data/own/abc.mp4", root) == Path("/data/own/abc.mp4")
    # Without video_root, paths resolve against the JSONL file's folder.
    (tmp_path / "sets").mkdir()
    file = write_lines(tmp_path / "sets" / "sft.jsonl", [{**NORMAL_ROW, "path": "videos/n.mp4"}])
    [record] = dataset.load_sft(file)
    assert record.path == tmp_path / "sets" / "videos" / "n.mp4"
    with pytest.raises(DatasetFormatError, match="names the release folder"):
        dataset.load_sft(write_lines(tmp_path / "x.jsonl", [{**NORMAL_ROW, "path": "/media/VA-Reasoning-SFT"}]))


def test_missing_videos_lists_only_absent_files(tmp_path):
    (tmp_path / "ECVA").mkdir()
    (tmp_path / "ECVA" / "1900.mp4").write_bytes(b"")
    (tmp_path / "Normal_XD").mkdir()
    (tmp_path / "Normal_XD" / "v=abc.mp4").mkdir()  # a folder where a video should be
    records = dataset.load_sft(write_lines(tmp_path / "sft.jsonl", [ABNORMAL_ROW, NORMAL_ROW]))
    assert dataset.missing_videos(records) == [tmp_path / "Normal_XD" / "v=abc.mp4"]


def test_write_jsonl_round_trips_with_release_key_order(tmp_path):
    records = dataset.load_sft(write_lines(tmp_path / "in.jsonl", [ABNORMAL_ROW, NORMAL_ROW]))
    out = tmp_path / "out.jsonl"
    assert dataset.write_jsonl(records, out) == 2
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert list(rows[0]) == list(dataset.SFT_KEYS)
    assert list(rows[1]) == [key for key in dataset.SFT_KEYS if key not in ("start", "end")]
    assert rows[0]["path"] == "ECVA/1900.mp4"  # inside the output's folder: written relative
    assert rows[0]["anomaly_type"] == "Animal Hurts Human"  # the raw label is kept
    assert dataset.load_sft(out) == records

    elsewhere = tmp_path / "elsewhere" / "out.jsonl"
    dataset.write_jsonl(records, elsewhere)
    assert json.loads(elsewhere.read_text().splitlines()[0])["path"] == str(tmp_path / "ECVA" / "1900.mp4")

    rl_records = dataset.load_rl(write_lines(tmp_path / "rl.jsonl", [RL_ROW]))
    dataset.write_jsonl(rl_records, tmp_path / "rl_out.jsonl")
    assert dataset.load_rl(tmp_path / "rl_out.jsonl") == rl_records
    assert dataset.record_to_row(rl_records[0], "a.mp4") == {**RL_ROW, "path": "a.mp4"}


def test_write_jsonl_validates_and_orders_dicts(tmp_path):
    shuffled = {"extra": 1, **{key: NORMAL_ROW[key] for key in reversed(NORMAL_ROW)}, "start": None}
    out = tmp_path / "out.jsonl"
    dataset.write_jsonl([shuffled, RL_ROW], out)
    first, second = (json.loads(line) for line in out.read_text().splitlines())
    assert list(first) == [*(key for key in dataset.SFT_KEYS if key not in ("start", "end")), "extra"]
    assert list(second) == list(dataset.RL_KEYS)
    with pytest.raises(DatasetFormatError, match="span end=6000") as caught:
        dataset.write_jsonl([NORMAL_ROW, {**ABNORMAL_ROW, "end": 6000}], out)
    assert caught.value.line == 2


def test_to_hf_dataset_keeps_light_typed_columns(tmp_path):
    pytest.importorskip("datasets")
    normal = dataset.load_sft(write_lines(tmp_path / "sft.jsonl", [NORMAL_ROW]))
    table = dataset.to_hf_dataset(normal)
    assert table.column_names == [
        "source",
        "video",
        "anomaly_type",
        "category",
        "path",
        "total_frames",
        "think",
        "answer",
        "start",
        "end",
    ]
    assert table.features["start"].dtype == "int64"  # typed even when every row is normal
    assert table[0]["path"] == str(tmp_path / "Normal_XD" / "v=abc.mp4")
    assert table[0]["start"] is None
    rl = dataset.load_rl(write_lines(tmp_path / "rl.jsonl", [RL_ROW]))
    assert dataset.to_hf_dataset(rl)[0]["label"] == "Abnormal"
    with pytest.raises(TypeError, match="mix"):
        dataset.to_hf_dataset([*normal, *rl])
    with pytest.raises(ValueError, match="no records"):
        dataset.to_hf_dataset([])


def test_dataset_stats_on_a_small_split(tmp_path):
    second_abnormal = {**ABNORMAL_ROW, "anomaly_type": "Drown", "start": 0, "end": 250, "total_frames": 1000}
    records = dataset.load_sft(write_lines(tmp_path / "sft.jsonl", [ABNORMAL_ROW, NORMAL_ROW, second_abnormal]))
    stats = dataset.dataset_stats(records, count_tokens=len)
    assert stats["rows"] == 3 and stats["abnormal"] == 2 and stats["normal"] == 1
    assert stats["categories"] == {"Animals Hurt Human": 1, "Drowning": 1}
    assert stats["sources"] == {"ECVA": 2, "XD": 1}
    span, mean = (3420 - 600) / 5294, ((3420 - 600) / 5294 + 0.25) / 2
    assert stats["span_fraction"] == pytest.approx({"min": 0.25, "mean": mean, "median": mean, "max": span})
    # Tags are not words: "A street. A dog bites." is 5 words, "A quiet road with cars." 5.
    assert stats["think_words"] == {"min": 5.0, "mean": 5.0, "median": 5.0, "max": 5.0}
    think_chars = [len(ABNORMAL_ROW["think"]), len(NORMAL_ROW["think"]), len(ABNORMAL_ROW["think"])]
    assert stats["think_tokens"]["max"] == max(think_chars)
    assert "answer_tokens" in stats and "answer_tokens" not in dataset.dataset_stats(records)

    rl = dataset.load_rl(write_lines(tmp_path / "rl.jsonl", [RL_ROW]))
    rl_stats = dataset.dataset_stats(rl)
    assert (rl_stats["rows"], rl_stats["abnormal"], rl_stats["categories"]) == (1, 1, {})
    assert rl_stats["span_fraction"] is None and rl_stats["think_words"] is None
    assert dataset.dataset_stats([])["rows"] == 0


def test_real_sft_file_loads_fast_and_has_the_papers_counts(release_sft_path):
    began = time.perf_counter()
    records = dataset.load_sft(release_sft_path)
    assert time.perf_counter() - began < 2.0
    stats = dataset.dataset_stats(records)
    assert (stats["rows"], stats["abnormal"], stats["normal"]) == (1755, 814, 941)
    assert len(stats["categories"]) == 37
    assert sum(stats["categories"].values()) == 814
    assert stats["sources"] == {"UCF": 540, "XD": 521, "NEW": 217, "ECVA": 197, "TAD": 151, "SH": 66, "UB": 63}


def test_real_sft_span_fraction_matches_the_when_tag(release_sft_path):
    for record in dataset.load_sft(release_sft_path):
        if record.is_abnormal:
            start, end = (float(x) for x in re.search(r"<when>\[(.*?)\]</when>", record.answer).group(1).split(","))
            assert record.span_fraction == (start, end)


def test_real_rl_file_counts(release_rl_path):
    records = dataset.load_rl(release_rl_path)
    stats = dataset.dataset_stats(records)
    assert (stats["rows"], stats["abnormal"], stats["normal"]) == (6448, 3484, 2964)
    assert stats["categories"] == {}
    assert records[0].path == release_rl_path.parent / "SH" / "Abnormal" / "01_0015.mp4"


def test_writing_the_real_release_reproduces_its_lines(release_sft_path, release_rl_path, tmp_path):
    for path, load in [(release_sft_path, dataset.load_sft), (release_rl_path, dataset.load_rl)]:
        out = tmp_path / path.name
        dataset.write_jsonl(load(path, video_root=tmp_path), out)
        originals = path.read_text(encoding="utf-8").splitlines()
        written = out.read_text(encoding="utf-8").splitlines()
        for original, line in zip(originals, written, strict=True):
            row = json.loads(original)
            row["path"] = row["path"].split("/", 4)[4]  # "/media/wbf/VA-Reasoning-*/" removed
            assert line == json.dumps(row, ensure_ascii=False)
