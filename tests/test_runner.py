"""run-notebooks: papermill with the profile as a parameter; a failure names the notebook and cell."""

import json

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from vadr1_lib import cli, config, runner


def _write(path, *sources, tag_first=True):
    nb = new_notebook(cells=[new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    if tag_first:
        nb.cells[0].metadata["tags"] = ["parameters"]
    nbformat.write(nb, path)


@pytest.fixture()
def notebooks(tmp_path, monkeypatch):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    monkeypatch.setattr(runner.paths, "NOTEBOOKS_DIR", folder)
    monkeypatch.setenv("VADR1_RUNS", str(tmp_path / "runs"))
    _write(folder / "00_ok.ipynb", 'profile = "cpu"\noverrides = {}',
           "import json, os, pathlib\n"
           "pathlib.Path('seen.json').write_text(json.dumps([profile, overrides, os.environ.get('VADR1_PROFILE'),\n"
           "                                                  os.environ.get('VADR1_UNATTENDED')]))")
    return folder


def test_parameters_reach_the_notebook_and_outputs_land_under_runs(notebooks, tmp_path, monkeypatch):
    monkeypatch.setenv(config.PROFILE_ENV_VAR, "cpu")  # as under nbmake: must not win over the parameter
    monkeypatch.delenv("VADR1_UNATTENDED", raising=False)
    runs = runner.run_notebooks("ci", overrides=["sft.max_steps=3"], log=lambda *_: None)
    assert config.os.environ[config.PROFILE_ENV_VAR] == "cpu"  # and is restored for whatever runs next
    assert [r.notebook for r in runs] == ["00_ok.ipynb"] and runs[0].error is None
    # the profile comes from the parameter; the kernels know nobody is watching (widgets go static)
    assert json.loads((notebooks / "seen.json").read_text()) == ["ci", {"sft.max_steps": 3}, None, "1"]
    assert "VADR1_UNATTENDED" not in config.os.environ
    assert (tmp_path / "runs" / "ci" / "notebooks" / "00_ok.ipynb").is_file()


def test_first_failure_stops_the_run_and_names_notebook_and_cell(notebooks, capsys):
    _write(notebooks / "01_broken.ipynb", 'profile = "cpu"\noverrides = {}', "x = 1", "raise RuntimeError('boom')")
    _write(notebooks / "02_never.ipynb", 'profile = "cpu"\noverrides = {}', "open('ran.txt', 'w')")
    assert cli.main(["run-notebooks", "--profile", "ci"]) == 1
    out, err = capsys.readouterr()
    assert "01_broken.ipynb failed at cell 2" in err and "RuntimeError: boom" in err
    assert "00_ok.ipynb" in out and "FAILED" in out
    assert not (notebooks / "ran.txt").exists()


def test_only_selects_by_number_and_rejects_unknown_numbers(notebooks):
    assert [p.name for p in runner.notebook_paths(["00"])] == ["00_ok.ipynb"]
    with pytest.raises(ValueError, match="no notebook numbered 07"):
        runner.notebook_paths(["07"])
    with pytest.raises(config.ProfileError):
        runner.run_notebooks("nope", log=lambda *_: None)
