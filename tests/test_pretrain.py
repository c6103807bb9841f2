"""The tiny model's pretraining stage: its corpus never holds a Mini clip's text, it trains
the weights on the replies only, and it is cached under its own fingerprint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vadr1_lib import config, prompts, stages
from vadr1_lib.data import corpus, dataset
from vadr1_lib.model import modeling
from vadr1_lib.stage_marker import StageMarker
from vadr1_lib.training import pretrain


@pytest.fixture(scope="module")
def ci(private_runs) -> config.Profile:
    return config.load_profile("ci")


def _clip_texts(profile: config.Profile) -> tuple[set[str], set[str]]:
    """Every text written for a clip of the profile's Mini (targets of every split, abnormal
    clips' answers), with its tags and without; and the test split's targets alone."""
    splits = stages.data_splits(profile)
    written, test = set(), set()
    for split in ("sft_train", "val", "test"):
        for record in dataset.load_sft(splits.file(split)):
            texts = [record.target_text] + ([record.answer] if record.is_abnormal else [])
            written |= {variant for text in texts for variant in (text, corpus.strip_tags(text))}
            if split == "test":
                test |= {record.target_text, corpus.strip_tags(record.target_text)}
    return written, test


@pytest.mark.parametrize("kind", config.CORPUS_KINDS)
def test_the_corpus_holds_no_text_written_for_a_mini_clip(kind) -> None:
    # Many more texts than the profile reads, so that a corpus able to copy a clip's text would.
    profile = config.load_profile("ci", {"pretrain.corpus_texts": 3000, "pretrain.corpus": kind})
    written, test = _clip_texts(profile)
    assert test and test <= written
    replies = stages.pretraining_corpus(profile)
    assert len(replies) == 3000
    assert not {reply.text for reply in replies} & written
    # Not even inside a longer reply: the test clips' whole reports are nowhere in the corpus.
    assert not any(text in reply.text for reply in replies for text in test)
    assert {reply.prompt_kind for reply in replies} == set(prompts.PROMPT_KINDS)
    tagged = [reply for reply in replies if "<answer>" in reply.text]
    assert bool(tagged) == (kind == "template")


def test_a_corpus_that_cannot_avoid_the_dataset_says_so() -> None:
    geometry = dict(kind="template", seed=0, frames=8, fps=4.0, width=56, height=56)
    first_draws = [reply.text for reply in corpus.pretraining_texts(400, **geometry)]
    with pytest.raises(RuntimeError, match="differ from the texts to avoid"):
        corpus.pretraining_texts(10, **geometry, avoid=first_draws)  # every draw it may try is avoided


def test_only_the_reply_and_its_end_of_turn_carry_the_loss(ci) -> None:
    init = stages.ensure_tiny_init(ci)
    processor = modeling.load_processor(init, ci)
    collator = pretrain.ReplyCollator(processor)
    reply = stages.pretraining_corpus(ci)[0]
    batch = collator([{"prompt_kind": reply.prompt_kind, "text": reply.text},
                      {"prompt_kind": "direct", "text": "<answer>short</answer>"}])
    tokenizer = processor.tokenizer
    for row, text in enumerate([reply.text, "<answer>short</answer>"]):
        labelled = batch["labels"][row][batch["labels"][row] != -100].tolist()
        assert labelled == tokenizer(text + "<|im_end|>", add_special_tokens=False)["input_ids"]
        prompt = tokenizer.decode(batch["input_ids"][row][: batch["attention_mask"][row].sum() - len(labelled)])
        assert prompt.endswith("<|im_start|>assistant\n") and "<|video_pad|>" not in prompt
    assert (batch["labels"][1][batch["attention_mask"][1] == 0] == -100).all()  # padding never counts


def test_pretraining_trains_the_language_model_and_is_reused_with_the_same_settings(ci, capfd) -> None:
    base = stages.ensure_base_model(ci)
    init = stages.ensure_tiny_init(ci)
    record = StageMarker(base).read()
    assert record["stage"] == "pretrain" and record["global_step"] == 2
    steps, losses = pretrain.loss_curve(record)
    assert steps == [1, 2] and all(loss > 0 for loss in losses)
    before, after = (load_file(f"{folder}/model.safetensors") for folder in (init, base))
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert any("layers" in name for name in changed)  # the language model learnt
    assert not any(name.startswith(("visual", "model.visual")) and "merger" not in name for name in changed)
    assert modeling.tiny_model_info(base) == modeling.tiny_model_info(init)  # sizes and vocabulary travel along
    assert modeling.model_identity(base) == f"pretrain:{record['fingerprint']}"

    capfd.readouterr()
    marker = (Path(base) / StageMarker.FILE).stat().st_mtime_ns
    assert stages.ensure_base_model(config.load_profile("ci")) == base  # same settings: reused, not retrained
    assert "pretraining the tiny model" not in capfd.readouterr().out
    assert (Path(base) / StageMarker.FILE).stat().st_mtime_ns == marker

    other = config.load_profile("ci", {"pretrain.learning_rate": 2e-3})
    assert pretrain.fingerprint(other, init, stages.pretraining_corpus(other)) != record["fingerprint"]
    assert stages.ensure_tiny_init(other) == init  # the vocabulary does not depend on the learning rate


def test_without_a_corpus_the_base_is_the_random_tiny_model(ci) -> None:
    off = config.load_profile("ci", {"pretrain.corpus_texts": 0})
    assert stages.ensure_base_model(off) == stages.ensure_tiny_init(off)
    assert modeling.model_identity(stages.ensure_base_model(off)).startswith("tiny:")


def test_hub_models_skip_pretraining() -> None:
    hub = config.load_profile("qlora-24gb")
    assert stages.ensure_base_model(hub) == hub.model.name_or_path
    assert not config.applies(hub, "pretrain.corpus_texts")


def test_the_sft_fingerprint_follows_the_pretrained_base(ci) -> None:
    from vadr1_lib.training import sft

    splits = stages.data_splits(ci)
    base = stages.ensure_base_model(ci)
    random_start = stages.ensure_tiny_init(ci)
    assert sft.fingerprint(ci, base, splits.sft_train) != sft.fingerprint(ci, random_start, splits.sft_train)
    record = json.loads((Path(base) / StageMarker.FILE).read_text())
    assert record["corpus_texts"] == ci.pretrain.corpus_texts
