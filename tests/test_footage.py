import os
import time
from pathlib import Path

import numpy as np
import pytest

from vadr1_lib import paths
from vadr1_lib.data import footage
from vadr1_lib.data.footage import (
    FootageUnavailableError,
    ensure_vtest,
    scan_footage,
    vtest_path,
)
from vadr1_lib.data.video import read_video_info, write_video


@pytest.mark.network
def test_ensure_vtest_fetches_verifies_and_caches() -> None:
    """End to end against the real sources. The first run on a machine downloads the
    opencv-python sdist from PyPI (about a minute); later runs find the cached copy under
    the project's data dir."""
    path = ensure_vtest()
    assert path == paths.data_dir() / "footage" / "vtest.avi"
    info = read_video_info(path)
    assert (info.width, info.height, info.fps, info.num_frames) == (768, 576, 10.0, 795)
    assert not [p.name for p in path.parent.iterdir() if p.name.startswith(".")]  # no partial files

    started = time.perf_counter()
    assert ensure_vtest() == path
    assert time.perf_counter() - started < 1.0  # the warm path only hashes the cached file


def test_ensure_vtest_replaces_nothing_and_explains_when_no_source_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A wrong file in the cache must not pass, and a failed fetch must leave no partial file.
    cached = vtest_path(tmp_path)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"not vtest")
    monkeypatch.setattr(footage.shutil, "which", lambda name: None)  # no dpkg
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # ignore the machine's indexes...
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # ...and reach none, so pip fails at once
    with pytest.raises(FootageUnavailableError) as caught:
        ensure_vtest(tmp_path)
    message = str(caught.value)
    assert "dpkg not found" in message
    assert "pip download" in message and "failed" in message
    assert str(cached) in message
    assert cached.read_bytes() == b"not vtest"
    assert sorted(p.name for p in cached.parent.iterdir()) == ["vtest.avi"]


def moving_square(num_frames: int, shade: int) -> np.ndarray:
    frames = np.full((num_frames, 32, 48, 3), shade, np.uint8)
    for t in range(num_frames):
        frames[t, 8:16, t : t + 8] = 255
    return frames


def test_scan_footage_counts_usable_and_skipped(tmp_path: Path) -> None:
    write_video(moving_square(10, 40), tmp_path / "a.mp4", 5.0)
    (tmp_path / "sub").mkdir()
    write_video(moving_square(6, 90), tmp_path / "sub" / "B.MP4", 3.0)
    (tmp_path / "broken.avi").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("ignored: not a video extension")

    scan = scan_footage(tmp_path)
    assert [(i.path.name, i.num_frames, i.fps) for i in scan.usable] == [("a.mp4", 10, 5.0), ("B.MP4", 6, 3.0)]
    assert scan.skipped == [(tmp_path / "broken.avi", "zero-byte file")]


def test_scan_footage_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing"):
        scan_footage(tmp_path / "missing")
    (tmp_path / "cut.mp4").write_bytes(b"\0\0\0\x20ftypisom")
    with pytest.raises(FootageUnavailableError, match=r"no usable video .*1 skipped(.|\n)*cut.mp4: truncated"):
        scan_footage(tmp_path)
