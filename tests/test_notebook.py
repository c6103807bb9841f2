"""The notebooks' shared cells: hosted notebooks keep their runs on persistent storage."""

import os
import sys
import types

import pytest

from vadr1_lib import notebook


@pytest.fixture(autouse=True)
def private_environment(monkeypatch):
    """The hosted set-up writes environment variables; keep them out of the other tests."""
    monkeypatch.setattr(os, "environ", os.environ.copy())


def test_colab_mounts_drive_and_keeps_runs_and_data_there(monkeypatch, tmp_path):
    drive = tmp_path / "drive"  # where Colab would mount it: unmounted here
    monkeypatch.setattr(notebook, "COLAB_DRIVE", drive)
    monkeypatch.setitem(notebook.HOSTED_STORAGE, "colab", drive / "MyDrive" / "vadr1")
    mounted = []
    colab = types.ModuleType("google.colab")
    colab.drive = types.SimpleNamespace(mount=mounted.append)
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    for variable in ("VADR1_RUNS", "VADR1_DATA", "VADR1_RELEASE_DIR"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("VADR1_DATA", "/my/own/data")  # a folder the user chose is kept
    root = notebook.use_hosted_storage()
    assert mounted == [str(drive)] and root == drive / "MyDrive" / "vadr1"
    assert os.environ["VADR1_RUNS"] == str(root / "runs")
    assert os.environ["VADR1_RELEASE_DIR"] == str(root / "vad-reasoning")
    assert os.environ["VADR1_DATA"] == "/my/own/data"


def test_kaggle_uses_its_working_folder_and_elsewhere_nothing_changes(monkeypatch):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    monkeypatch.delenv("VADR1_RUNS", raising=False)
    assert notebook.use_hosted_storage() is None and "VADR1_RUNS" not in os.environ
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    for variable in ("VADR1_DATA", "VADR1_RELEASE_DIR"):
        monkeypatch.delenv(variable, raising=False)
    assert str(notebook.use_hosted_storage()) == "/kaggle/working/vadr1"
    assert os.environ["VADR1_RUNS"] == "/kaggle/working/vadr1/runs"


def test_figures_follow_the_run_folder_unless_vadr1_figures_says_otherwise(monkeypatch, tmp_path):
    """A second run (another VADR1_RUNS, another profile) never overwrites the first's figures."""
    import numpy as np

    from vadr1_lib import plots

    monkeypatch.setattr(plots, "_figures_folder", None)
    monkeypatch.delenv("VADR1_FIGURES", raising=False)
    frames = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    for runs in ("first", "second"):
        monkeypatch.setenv("VADR1_RUNS", str(tmp_path / runs))
        profile = notebook.setup("ci")
        plots.frame_grid(frames, save_to="grid.png")
        assert (tmp_path / runs / "ci" / "figures" / "grid.png").is_file()
    monkeypatch.setenv("VADR1_FIGURES", str(tmp_path / "chosen"))
    notebook.setup("ci")
    plots.frame_grid(frames, save_to="grid.png")
    assert (tmp_path / "chosen" / "grid.png").is_file()
    assert profile.run_dir == tmp_path / "second" / "ci"


def test_a_variant_applies_its_own_thread_count():
    # Two runs side by side on 2 cores need one thread each; a variant that sets it and kept
    # the profile's two ran several times slower (a second OpenMP thread spinning in the barrier).
    import torch

    before = torch.get_num_threads()
    try:
        profile = notebook.setup("ci")  # one thread
        assert torch.get_num_threads() == profile.launch.torch_threads == 1
        notebook.variant(profile, "two-threads", {"launch.torch_threads": 2})
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
