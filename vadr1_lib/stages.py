"""The pipeline's stages, each built once and reused: dataset -> base model -> SFT -> GRPO.

Every notebook must also run on its own, so a notebook that needs an earlier stage's
output calls ``ensure_*`` here: it returns the cached result when it exists and builds it
(through the same library code the earlier notebook uses) when it does not. The ordered
``make run`` therefore pays for each stage once.
"""

from __future__ import annotations

from pathlib import Path

from vadr1_lib import dataset, modeling
from vadr1_lib.config import Profile


def base_model_dir(profile: Profile) -> Path:
    return profile.run_dir / "base-model"


def ensure_base_model(profile: Profile) -> str:
    """The profile's starting checkpoint: a hub id / folder, or the tiny model built here.

    The tiny model's vocabulary is Qwen2.5's BPE restricted to the texts it will read and
    write, so it is built from the profile's dataset (built first when missing) and the
    prompts. Rebuilt when the dataset's text changed (the marker records the corpus hash).
    """
    if profile.model.name_or_path != "tiny":
        return profile.model.name_or_path
    from vadr1_lib import synth

    data = synth.ensure_dataset(profile)
    # Training targets and prompts; test answers stay out so the vocabulary does not peek.
    corpus = [record.target_text for record in dataset.load_sft(data.sft_train)]
    out = base_model_dir(profile)
    info = modeling.tiny_model_info(out)
    if info is not None and info["corpus_sha256"] == modeling.corpus_sha256(corpus) and (out / "model.safetensors").is_file():
        return str(out)
    modeling.build_tiny_model(profile, out, corpus)
    return str(out)
