"""Fixtures shared by the test modules: the real release files (skipped with a reason when
this machine lacks them), the ci profile, and a private runs folder per module."""

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from vadr1_lib import config, paths


@pytest.fixture(scope="session")
def release_sft_path() -> Path:
    path = paths.release_file(paths.RELEASE_SFT_FILE)
    if path is None:
        pytest.skip(f"real release file {paths.RELEASE_SFT_FILE} not found under {paths.release_dir()}")
    return path


@pytest.fixture(scope="session")
def release_rl_path() -> Path:
    path = paths.release_file(paths.RELEASE_RL_FILE)
    if path is None:
        pytest.skip(f"real release file {paths.RELEASE_RL_FILE} not found under {paths.release_dir()}")
    return path


@pytest.fixture(scope="module")
def ci_profile() -> config.Profile:
    """The ci profile as committed (a module's own copy: tests that need other settings load
    the profile with overrides instead of changing this one)."""
    return config.load_profile("ci")


@pytest.fixture(scope="module")
def private_runs(tmp_path_factory) -> Iterator[Path]:
    """A runs folder of the test module's own (``VADR1_RUNS``) and one torch thread: the
    stages a module builds (base model, SFT, predictions) are shared by its tests and no
    other module's, and nothing lands in the project's runs/."""
    with pytest.MonkeyPatch.context() as patch:
        folder = tmp_path_factory.mktemp("runs")
        patch.setenv("VADR1_RUNS", str(folder))
        torch.set_num_threads(1)
        yield folder
