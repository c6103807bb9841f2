"""The command line: real invocations, including the broken inputs a user will type."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from vadr1_lib import cli
from vadr1_lib.data import video


def run_cli(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_help_lists_the_commands():
    result = subprocess.run([sys.executable, "-m", "vadr1_lib", "--help"], capture_output=True, text=True, check=True)
    for command in ("doctor", "tokenize", "tiny-model", "generate", "run-notebooks"):
        assert command in result.stdout


def test_tokenize_prints_real_qwen_ids(capsys):
    code, out, _ = run_cli(capsys, "tokenize", "<|im_start|>hello<|im_end|>")
    assert code == 0 and json.loads(out) == [151644, 14990, 151645]


def test_doctor_json_reports_profiles_and_packages(capsys):
    code, out, _ = run_cli(capsys, "doctor", "--json")
    report = json.loads(out)
    assert code == 0
    assert report["profiles"] == ["ci", "cpu", "full-4xa100", "qlora-24gb", "qlora-t4-16gb"]
    assert report["packages"]["transformers"].startswith("5.24")


def test_unknown_profile_and_unknown_key_are_clear_errors(capsys, tmp_path):
    code, _, err = run_cli(capsys, "tiny-model", "--profile", "gpu", "--out", str(tmp_path))
    assert code == 2 and "unknown profile 'gpu'" in err and "ci, cpu" in err
    code, _, err = run_cli(capsys, "tiny-model", "--profile", "ci", "--set", "model.tiny.hiden_size=8", "--out", str(tmp_path))
    assert code == 2 and "unknown key 'model.tiny.hiden_size'" in err and "model.tiny.hidden_size" in err
    assert not any(tmp_path.iterdir())


@pytest.fixture(scope="module")
def tiny_and_clip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    assert cli.main(["tiny-model", "--profile", "ci", "--out", str(folder / "tiny")]) == 0
    frames = np.random.RandomState(3).randint(0, 256, (8, 56, 56, 3), dtype=np.uint8)
    clip = video.write_video(frames, folder / "clip.mp4", fps=4.0)
    return folder / "tiny", clip


def test_generate_prints_a_completion_and_its_speed(capsys, tiny_and_clip):
    model_dir, clip = tiny_and_clip
    code, out, err = run_cli(capsys, "generate", "--profile", "ci", "--model", str(model_dir), "--video", str(clip),
                             "--max-new-tokens", "12")
    assert code == 0
    new_tokens = int(re.search(r"\[(\d+) tokens in", err).group(1))
    assert 1 <= new_tokens <= 12 and "tokens/s" in err and "video tokens from 4 frames" in err
    assert out.endswith("\n")  # an untrained model's text may be only whitespace


@pytest.mark.parametrize("kind", ["missing", "zero-byte", "truncated"])
def test_generate_on_a_broken_video_names_the_file(capsys, tiny_and_clip, tmp_path, kind):
    model_dir, clip = tiny_and_clip
    bad = tmp_path / f"{kind}.mp4"
    if kind == "zero-byte":
        bad.write_bytes(b"")
    elif kind == "truncated":
        data = clip.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    code, _, err = run_cli(capsys, "generate", "--profile", "ci", "--model", str(model_dir), "--video", str(bad))
    assert code == 1
    assert str(bad) in err and ("not found" in err if kind == "missing" else "corrupt video" in err)


def test_json_output_stays_parseable_when_a_command_prints_on_the_way(capsys, monkeypatch, tmp_path):
    """Progress lines (WordNet loading, inference) must not corrupt what --json promises."""
    from vadr1_lib.evaluation import scores

    real = scores.evaluate_file

    def noisy(*args, **kwargs):
        print("loading WordNet for METEOR's synonym matches (once per process) ...")
        return real(*args, **kwargs)

    monkeypatch.setattr(scores, "evaluate_file", noisy)
    rows = tmp_path / "truth.jsonl"
    rows.write_text(json.dumps({"source": "Mini", "video": "v1", "anomaly_type": "Normal", "path": "v1.mp4",
                                "total_frames": 8, "think": "<think><step1>a.</step1><step2>b.</step2></think>",
                                "answer": "<answer><which>Normal</which></answer>"}) + "\n")
    code, out, err = run_cli(capsys, "evaluate", "--pred", str(rows), "--gt", str(rows), "--json", "--bootstrap", "0",
                             "--no-text")
    assert code == 0 and json.loads(out)["detection"]["accuracy"] == 1.0
    assert "loading WordNet" in err
