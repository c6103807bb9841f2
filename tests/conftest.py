from pathlib import Path

import pytest

from vadr1_lib import paths


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
