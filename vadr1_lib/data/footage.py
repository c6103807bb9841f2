"""Real CCTV-like footage to inject synthetic anomalies into.

The default is OpenCV's sample `vtest.avi`: 795 frames (79.5 s at 10 fps) of 768x576
video of pedestrians on a campus path, filmed from above by a fixed camera, exactly
the kind of normal background a surveillance anomaly benchmark needs, and redistributable
with OpenCV. No package ships it as a plain download, so `ensure_vtest` takes it from
one of two places, in this order:

1. Debian's `opencv-doc` package, when it is installed (found with `dpkg -L`; this code
   never installs system packages).
2. The source distribution of `opencv-python` on PyPI, fetched with pip itself so that
   the user's index, proxy and certificate settings apply. The sdist is ~95 MB; only the
   one member is extracted and the archive is deleted afterwards. pip still prepares the
   sdist's metadata, which installs its build requirements into a throw-away environment
   (about a minute); `--no-binary :all:` would build those from source and fails, so only
   opencv-python itself is fetched as source.

The copy is checked by MD5 and written under a temporary name then renamed, so an
interrupted download never leaves a file that passes. Users with their own normal
footage point `scan_footage` at a folder instead.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from vadr1_lib import paths
from vadr1_lib.data.video import CorruptVideoError, VideoInfo, read_video_info

VTEST_MD5 = "d401fe2028f78dd585e2ade0a0d678c0"
VTEST_NAME = "vtest.avi"
# 4.10.0.84 is checked to hold vtest.avi with the MD5 above; pinned so the download
# never changes under us.
OPENCV_PYTHON_SDIST_VERSION = "4.10.0.84"
OPENCV_PYTHON_SDIST_MEMBER = f"opencv-python-{OPENCV_PYTHON_SDIST_VERSION}/opencv/samples/data/{VTEST_NAME}"
PIP_DOWNLOAD_TIMEOUT_S = 1800

VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mkv", ".mov", ".webm"})

_COPY_CHUNK_BYTES = 1 << 20


class FootageUnavailableError(RuntimeError):
    """No usable footage could be found or fetched; the message says what to do."""


@dataclass
class FootageScan:
    """What `scan_footage` found: readable videos, and the others with the reason."""

    usable: list[VideoInfo] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def vtest_path(data_dir: Path | None = None) -> Path:
    """Where `ensure_vtest` keeps its copy."""
    return (data_dir if data_dir is not None else paths.data_dir()) / "footage" / VTEST_NAME


def ensure_vtest(data_dir: Path | None = None) -> Path:
    """The path of a verified `vtest.avi` under `<data_dir>/footage/`, fetched if needed.

    `data_dir` defaults to `paths.data_dir()`, so every run on a machine shares one copy.
    Raises FootageUnavailableError when neither source works.
    """
    target = vtest_path(data_dir)
    if target.is_file() and md5(target) == VTEST_MD5:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    for name, fetch in (("Debian opencv-doc", _vtest_from_debian), ("PyPI opencv-python sdist", _vtest_from_pypi)):
        try:
            fetch(target)
            return target
        except _SourceFailed as failure:
            failures.append(f"- {name}: {failure}")
    raise FootageUnavailableError(
        f"could not obtain {VTEST_NAME} (md5 {VTEST_MD5}):\n"
        + "\n".join(failures)
        + f"\nTo fix: let pip reach PyPI (it downloads opencv-python=={OPENCV_PYTHON_SDIST_VERSION}'s ~95 MB"
        " sdist), or `apt-get install opencv-doc`, or copy vtest.avi to"
        f" {target}, or use your own normal footage with scan_footage(folder)."
    )


class _SourceFailed(Exception):
    """One source of vtest.avi did not work; ensure_vtest tries the next."""


def md5(path: Path) -> str:
    """Content identity of a file (read in chunks: a few seconds per GB)."""
    digest = hashlib.md5()
    with path.open("rb") as f:
        while chunk := f.read(_COPY_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _install_verified(source: IO[bytes], target: Path) -> None:
    """Copy a stream to `target` if its MD5 is vtest's: written to a temporary file in
    the same folder and renamed, so `target` is either absent, old, or complete."""
    digest = hashlib.md5()
    handle, partial_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    partial = Path(partial_name)
    try:
        with os.fdopen(handle, "wb") as out:
            while chunk := source.read(_COPY_CHUNK_BYTES):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != VTEST_MD5:
            raise _SourceFailed(f"md5 {digest.hexdigest()} differs from the expected {VTEST_MD5}")
        partial.chmod(0o644)  # mkstemp creates 0600; a shared data dir should be readable
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def _vtest_from_debian(target: Path) -> None:
    if shutil.which("dpkg") is None:
        raise _SourceFailed("dpkg not found (not a Debian-like system)")
    listing = subprocess.run(["dpkg", "-L", "opencv-doc"], capture_output=True, text=True, check=False)
    if listing.returncode != 0:
        raise _SourceFailed("package not installed")
    # Debian may compress example files; both forms are accepted.
    candidates = [
        Path(line)
        for line in listing.stdout.splitlines()
        if line.endswith((f"/{VTEST_NAME}", f"/{VTEST_NAME}.gz")) and Path(line).is_file()
    ]
    if not candidates:
        raise _SourceFailed(f"installed, but it holds no {VTEST_NAME}")
    source = candidates[0]
    opener = gzip.open if source.suffix == ".gz" else open
    with opener(source, "rb") as stream:
        _install_verified(stream, target)


def _vtest_from_pypi(target: Path) -> None:
    with tempfile.TemporaryDirectory(prefix=".opencv-sdist-", dir=target.parent) as download_dir:
        command = [
            sys.executable, "-m", "pip", "download",
            "--no-deps", "--no-cache-dir", "--disable-pip-version-check",
            "--no-binary", "opencv-python",
            f"opencv-python=={OPENCV_PYTHON_SDIST_VERSION}",
            "-d", download_dir,
        ]  # fmt: skip
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=PIP_DOWNLOAD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise _SourceFailed(f"pip download took longer than {PIP_DOWNLOAD_TIMEOUT_S} s") from None
        sdists = sorted(Path(download_dir).glob("opencv-python-*.tar.gz"))
        if result.returncode != 0 or not sdists:
            tail = "\n    ".join((result.stderr or result.stdout).strip().splitlines()[-5:])
            raise _SourceFailed(
                f"`pip download opencv-python=={OPENCV_PYTHON_SDIST_VERSION}` failed (exit {result.returncode}):\n    {tail}"
            )
        # Streaming mode reads the 95 MB archive once, front to back, without an index.
        with tarfile.open(sdists[0], mode="r|gz") as archive:
            for member in archive:
                if member.name == OPENCV_PYTHON_SDIST_MEMBER and member.isfile():
                    stream = archive.extractfile(member)
                    assert stream is not None  # a regular file member always has data
                    _install_verified(stream, target)
                    return
        raise _SourceFailed(f"{sdists[0].name} has no member {OPENCV_PYTHON_SDIST_MEMBER}")


def scan_footage(folder: Path) -> FootageScan:
    """Every video under `folder` (recursively, by extension, case-insensitive, in sorted
    order), read with `read_video_info`. Unreadable files are skipped with their reason;
    files with other extensions are ignored. Raises FileNotFoundError for a missing
    folder and FootageUnavailableError when no video in it is usable.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"footage folder not found: {folder}")
    scan = FootageScan()
    videos = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
    for video in videos:
        try:
            scan.usable.append(read_video_info(video))
        except CorruptVideoError as error:
            scan.skipped.append((video, error.reason))
    if not scan.usable:
        details = "".join(f"\n- {path.name}: {reason}" for path, reason in scan.skipped[:10])
        raise FootageUnavailableError(
            f"no usable video in {folder} ({len(scan.skipped)} skipped as unreadable;"
            f" extensions searched: {', '.join(sorted(VIDEO_EXTENSIONS))}){details}"
        )
    return scan
