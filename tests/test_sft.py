"""SFT on the ci profile: the video is in the loss, each mode trains what it should, runs resume."""

import re

import pytest
import torch
from transformers import TrainerCallback

from vadr1_lib import config, prompts, stages
from vadr1_lib.data import dataset, video
from vadr1_lib.model import modeling
from vadr1_lib.training import common, sft
from vadr1_lib.training.common import TrainingDiverged
from vadr1_lib.stage_marker import StageMarker


@pytest.fixture(scope="module")
def ci(private_runs, ci_profile):
    splits = stages.data_splits(ci_profile)
    base = stages.ensure_base_model(ci_profile)
    records = dataset.load_sft(splits.sft_train)
    return ci_profile, base, records, splits


def _batch(profile, processor, records, **kwargs):
    collator = sft.VideoSFTCollator(processor, profile, **kwargs)
    rows = sft.sft_dataset(records[:2], processor.tokenizer).to_list()
    return collator(rows), collator


def _trainer(profile, model, processor, train, tmp_path, **kwargs):
    """The SFT trainer as ``sft.train`` builds it, without training."""
    return sft.VideoSFTTrainer(
        model=model, args=sft.training_arguments(profile, tmp_path), processing_class=processor, train_dataset=train,
        data_collator=sft.VideoSFTCollator(processor, profile), **kwargs)


def test_collator_carries_video_and_masks_all_but_the_answer(ci):
    profile, base, records, _ = ci
    _, processor = modeling.load_model_and_processor(base, profile)
    batch, _ = _batch(profile, processor, records)
    assert {"pixel_values_videos", "video_grid_thw", "second_per_grid_ts", "mm_token_type_ids", "labels"} <= set(batch)
    # 8 frames at 4 fps sampled at 2 fps -> 4 frames, 2 temporal grids one second apart.
    assert batch["video_grid_thw"][:, 0].tolist() == [2, 2]
    assert batch["second_per_grid_ts"].tolist() == [1.0, 1.0]
    for row, labels in zip(records[:2], batch["labels"]):
        kept = labels[labels != -100]
        assert processor.tokenizer.decode(kept) == row.target_text + "<|im_end|>"


# Qwen/Qwen2.5-VL-7B-Instruct's chat_template.json, as downloaded from the Hub: no
# {% generation %} markers. Kept here as a literal so that the project's template cannot
# drift from it unnoticed.
HUB_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in "
    "content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] "
    "== 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}"
    "{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module", params=["restricted", "full"])
def hub_shaped(request, ci, tmp_path_factory):
    """A tiny checkpoint saved with the Hub's template, on the restricted or the full Qwen2.5 vocabulary."""
    _, _, records, _ = ci
    profile = config.load_profile("ci", {"model.tiny.vocabulary": request.param})
    out = modeling.build_tiny_model(profile, tmp_path_factory.mktemp(request.param), [r.target_text for r in records])
    return profile, out, records


def test_the_tiny_checkpoint_has_the_hub_template_and_real_ids_with_the_full_vocabulary(hub_shaped):
    profile, out, _ = hub_shaped
    model, processor = modeling.load_model_and_processor(out, profile)
    assert processor.chat_template == HUB_TEMPLATE == (out / "chat_template.jinja").read_text()
    if profile.model.tiny.vocabulary == "full":
        tok = processor.tokenizer
        assert model.config.text_config.vocab_size == 151_936 and len(tok) == 151_665
        assert tok.convert_tokens_to_ids("<|video_pad|>") == 151656 == model.config.video_token_id
        assert tok("<|im_start|>hello<|im_end|>")["input_ids"] == [151644, 14990, 151645]


def test_exactly_the_reply_and_its_end_of_turn_carry_loss_without_generation_markers(hub_shaped):
    profile, out, records = hub_shaped
    model, processor = modeling.load_model_and_processor(out, profile)
    batch, collator = _batch(profile, processor, records)
    decode = processor.tokenizer.decode
    for row, ids, labels, attention in zip(records[:2], batch["input_ids"], batch["labels"], batch["attention_mask"]):
        length = int(attention.sum())
        scored = (labels != -100).nonzero().flatten().tolist()
        first = scored[0]
        assert scored == list(range(first, length - 1))  # one run, up to the template's closing newline
        assert decode(ids[first:length - 1]) == row.target_text + "<|im_end|>"
        assert decode(ids[:first]).endswith("<|im_start|>assistant\n") and decode(ids[length - 1]) == "\n"
        assert torch.isin(ids, collator.vision_ids).sum() > 0  # the video is there, and carries no loss
    with torch.no_grad():
        assert torch.isfinite(model(**{k: v for k, v in batch.items() if k != "loss_weights"}).loss)


def test_a_template_that_rewrites_the_reply_is_refused(ci):
    _, base, _, _ = ci
    profile = ci[0]
    _, processor = modeling.load_model_and_processor(base, profile)
    processor.chat_template = HUB_TEMPLATE.replace("<|im_start|>assistant\n{% endif %}",
                                                   "<|im_start|>assistant\n<think>\n{% endif %}")
    with pytest.raises(ValueError, match="reply right after its generation prompt"):
        modeling.ReplyLocator(processor)


def test_cached_examples_pad_to_the_processors_own_batch(ci):
    """The collator processes each row once and pads later batches itself: the result must
    be the processor's batched output, tensor for tensor."""
    profile, base, records, _ = ci
    _, processor = modeling.load_model_and_processor(base, profile)
    collator = sft.VideoSFTCollator(processor, profile)
    rows = sft.sft_dataset(records[:3], processor.tokenizer).to_list()
    assert len({len(r["target"]) for r in rows}) > 1  # rows of different lengths: real padding
    clips = [video.training_clip(row["video_path"], profile.video) for row in rows]
    expected = processor.apply_chat_template(
        [prompts.build_messages("p2c", video=clip.frames, target=row["target"]) for clip, row in zip(clips, rows)],
        tokenize=True, return_dict=True, return_tensors="pt",
        processor_kwargs={"padding": True, "padding_side": "right", "add_special_tokens": False,
                          "video_metadata": modeling.video_inputs(clips)["video_metadata"], "do_sample_frames": False},
    )
    for _ in range(2):  # the second call is served from the cache
        batch = collator.pad([collator.examples((row["video_path"], row["target"])) for row in rows])
        assert set(batch) == set(expected) | {"reply_mask"}
        for key, value in expected.items():
            assert torch.equal(batch[key], value), key


def test_release_style_loss_covers_the_prompt_but_never_video_tokens(ci):
    profile, base, records, _ = ci
    _, processor = modeling.load_model_and_processor(base, profile)
    batch, collator = _batch(profile, processor, records, assistant_only_loss=False)
    labels = batch["labels"][0]
    text = processor.tokenizer.decode(labels[labels != -100])
    assert text.startswith("<|im_start|>system") and records[0].target_text in text
    assert not torch.isin(labels, collator.vision_ids).any()
    assert torch.isin(batch["input_ids"][0], collator.vision_ids).sum() > 0


def test_loss_depends_on_the_video(ci):
    profile, base, records, _ = ci
    model, processor = modeling.load_model_and_processor(base, profile)
    batch, _ = _batch(profile, processor, records)
    with torch.no_grad():
        loss = model(**batch).loss
        swapped = dict(batch, pixel_values_videos=batch["pixel_values_videos"].flip(0))
        other = model(**swapped).loss
    assert not torch.equal(loss, other)  # random init: the effect is small (~1e-5) but exact inputs give exact outputs


def test_decision_token_is_where_the_verdicts_part():
    targets = [[1, 2, 3], [1, 2, 4, 5], [1, 6], [7]]
    assert sft.decision_token_indices(targets, [True, False, False, True]) == [2, 2, 1, 0]
    assert sft.decision_token_indices([[1, 2], [1, 3]], [True, True]) == [-1, -1]  # no other verdict
    assert sft.decision_token_indices([[1, 2], [1, 2, 3]], [True, False]) == [-1, 2]  # a prefix of the other


def test_balanced_sampler_puts_both_verdicts_in_every_batch():
    is_abnormal = [True] * 7 + [False] * 3  # as in the real release, one verdict is scarcer
    sampler = sft.ClassBalancedSampler(is_abnormal, batch_size=4, seed=1)
    order = list(sampler)
    assert len(order) == len(sampler) == 10
    batches = [order[i:i + 4] for i in range(0, 10, 4)]
    assert [sum(is_abnormal[i] for i in b) for b in batches] == [2, 2, 1]  # the last, partial batch: 1 of 2
    assert set(i for i in order if not is_abnormal[i]) == {7, 8, 9}  # the scarce verdict, all of it, reused
    assert len(set(i for i in order if is_abnormal[i])) == 5  # the other: 5 draws, no repeat
    assert list(sampler) == order  # same seed and epoch, same order (what resuming replays)
    sampler.set_epoch(1)
    assert list(sampler) != order
    odd = list(sft.ClassBalancedSampler(is_abnormal, batch_size=3, seed=1))
    assert [sum(is_abnormal[i] for i in odd[k:k + 3]) for k in (0, 3, 6)] == [2, 1, 2]  # the extra place alternates
    with pytest.raises(ValueError, match="both verdicts"):
        sft.ClassBalancedSampler([True, True], batch_size=2, seed=0)


def test_trainer_draws_balanced_batches_when_asked(ci, tmp_path):
    profile, base, records, _ = ci
    model, processor = modeling.load_model_and_processor(base, profile)
    train = sft.sft_dataset(records, processor.tokenizer)
    for balanced in (True, False):
        trainer = _trainer(profile, model, processor, train, tmp_path, balanced_batches=balanced)
        loader = trainer.get_train_dataloader()
        batches = []
        for epoch in range(5):  # the trainer's epochs, each with its own order
            loader.set_epoch(epoch)
            batches += list(loader.batch_sampler)
        mixed = [sum(train[i]["abnormal"] for i in batch) == 1 for batch in batches]
        assert all(mixed) if balanced else not all(mixed)  # a shuffle of 4 + 4 clips: some pairs share a verdict


def test_collator_weights_the_deciding_token(ci):
    profile, base, records, _ = ci
    _, processor = modeling.load_model_and_processor(base, profile)
    profile = config.load_profile("ci", {"sft.decision_weight": 7.0})
    normal = next(r for r in records if not r.is_abnormal)
    abnormal = next(r for r in records if r.is_abnormal)
    rows = sft.sft_dataset([normal, abnormal], processor.tokenizer).to_list()
    batch = sft.VideoSFTCollator(processor, profile)(rows)
    weights, labels = batch["loss_weights"], batch["labels"]
    assert torch.equal(weights == 0, labels == -100)
    for row in range(2):
        heavy = (weights[row] == 7.0).nonzero().flatten().tolist()
        assert len(heavy) == 1 and ((weights[row] != 0) & (weights[row] != 7.0)).sum() == (labels[row] != -100).sum() - 1
        written = processor.tokenizer.decode(batch["input_ids"][row, : heavy[0] + 1])
        assert written.endswith("<step2>" + ("Nothing" if row == 0 else rows[1]["target"].split("<step2>")[1].split()[0]))


def test_weighted_loss_is_the_token_mean_at_weight_one_and_padding_free(ci, tmp_path):
    """The trainer's loss equals the model's own loss (mean over target tokens, padding
    mask applied) when every weight is 1: dropping the mask of a right-padded batch and
    scoring only the tail that holds the answers change nothing but speed."""
    _, base, records, _ = ci
    profile = config.load_profile("ci", {"sft.decision_weight": 1.0})
    model, processor = modeling.load_model_and_processor(base, profile)
    trainer = _trainer(profile, model, processor, sft.sft_dataset(records[:2], processor.tokenizer), tmp_path)
    for assistant_only_loss, first_scored in ((True, 100), (False, 0)):  # a short tail; the whole sequence
        batch, _ = _batch(profile, processor, records, assistant_only_loss=assistant_only_loss)
        assert batch["attention_mask"].sum() < batch["attention_mask"].numel()  # the batch really has padding
        assert ((batch["labels"] != -100).any(0).nonzero()[0] > first_scored) == assistant_only_loss
        with torch.no_grad():
            expected = model(**{k: v for k, v in batch.items() if k != "loss_weights"}).loss
            got = trainer.compute_loss(model, dict(batch))
            doubled = dict(batch, loss_weights=batch["loss_weights"] * 2)
            assert torch.isclose(trainer.compute_loss(model, doubled), 2 * got)
        assert torch.isclose(got, expected, atol=1e-5)


def _train_one_step(profile, base, splits, monkeypatch, tmp_path):
    """One optimizer step; returns the weights before and after and the model that was trained."""
    seen: list[set] = []
    captured = {}
    real_load = modeling.load_for_training

    def load_and_watch(path, prof):
        model, processor = real_load(path, prof)
        captured["model"] = model
        captured["before"] = {n: p.detach().clone().float() for n, p in model.named_parameters()}
        model.register_forward_pre_hook(lambda module, args, kwargs: seen.append(set(kwargs)), with_kwargs=True)
        return model, processor

    monkeypatch.setattr(modeling, "load_for_training", load_and_watch)
    sft.train(profile, base, splits.sft_train, output_dir=tmp_path / profile.train.mode)
    model = captured["model"]
    after = {n: p.detach().float() for n, p in model.named_parameters()}
    return captured["before"], after, model, seen


@pytest.mark.parametrize("mode", ["full", "lora", "qlora"])
def test_one_step_changes_the_trainable_parameters_and_only_those(ci, monkeypatch, tmp_path, mode):
    profile, base, _, splits = ci
    profile = config.load_profile("ci", {"sft.max_steps": 1, "train.mode": mode, "sft.learning_rate": 1e-2,
                                         "train.train_vision_encoder": True})  # full mode: every weight
    before, after, model, seen = _train_one_step(profile, base, splits, monkeypatch, tmp_path)
    assert {"pixel_values_videos", "video_grid_thw"} <= seen[0]  # the video reaches the training forward
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    changed = {n for n in trainable if not torch.equal(before[n], after[n])}
    frozen_changed = {n for n in before if n not in trainable and not torch.equal(before[n], after[n])}
    assert not frozen_changed
    if mode == "full":
        assert trainable == set(before) and len(changed) > 0.5 * len(trainable)
    else:
        assert trainable and all("lora_" in n for n in trainable)
        assert not any("visual" in n for n in trainable)  # adapters only on the language model
        assert any("lora_B" in n for n in changed)  # B starts at zero, so a step must move it
    if mode == "qlora":
        four_bit = {name for name, m in model.named_modules() if type(m).__name__ == "Linear4bit"}
        assert four_bit and all(".language_model.layers." in name for name in four_bit)  # the vision tower stays whole
    saved = tmp_path / mode
    assert (saved / ("adapter_config.json" if mode != "full" else "model.safetensors")).is_file()
    reloaded, _ = modeling.load_model_and_processor(saved, profile)
    assert type(reloaded).__name__.startswith("Qwen2_5_VLForConditionalGeneration" if mode == "full" else "PeftModel")


def test_a_frozen_vision_encoder_keeps_its_weights_while_the_merger_trains(ci, monkeypatch, tmp_path):
    profile, base, _, splits = ci
    profile = config.load_profile("ci", {"sft.max_steps": 1, "sft.learning_rate": 1e-2, "train.train_vision_encoder": False})
    before, after, model, _ = _train_one_step(profile, base, splits, monkeypatch, tmp_path)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    encoder = {n for n in before if ".visual." in n and ".merger." not in n}
    merger = {n for n in before if ".visual.merger." in n}
    assert encoder and merger and not encoder & trainable and merger <= trainable
    assert trainable == set(before) - encoder  # the language model trains as in full mode
    assert all(torch.equal(before[n], after[n]) for n in encoder)
    assert any(not torch.equal(before[n], after[n]) for n in merger)


class _StopAfter(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            raise KeyboardInterrupt


def test_an_interrupted_run_resumes_from_its_last_checkpoint(ci, monkeypatch):
    profile = config.load_profile("ci", {"sft.max_steps": 3, "sft.save_steps": 1})
    from trl import SFTTrainer

    real_init = SFTTrainer.__init__

    def init_with_interrupt(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        self.add_callback(_StopAfter(2))

    monkeypatch.setattr(SFTTrainer, "__init__", init_with_interrupt)
    with pytest.raises(KeyboardInterrupt):
        stages.ensure_sft(profile)
    monkeypatch.setattr(SFTTrainer, "__init__", real_init)
    out = stages.ensure_sft(profile)
    marker = StageMarker(out).read()
    assert marker["resumed_from"].endswith("checkpoint-2")
    assert marker["global_step"] == 3
    assert stages.ensure_sft(profile) == out  # finished: reused, not retrained
    assert StageMarker(out).read()["train_seconds"] == marker["train_seconds"]


def test_a_copied_run_folder_is_reused_and_a_variant_trains_beside_it(ci, monkeypatch, tmp_path, capfd):
    """Fingerprints name what a model is, not where it lies: a run folder copied elsewhere
    is recognised (nothing retrains), and a variant never replaces the profile's own result."""
    import shutil

    from vadr1_lib import notebook, paths

    profile = config.load_profile("ci", {"sft.max_steps": 1})
    out = stages.ensure_sft(profile)
    trained = StageMarker(out).read()
    printed = capfd.readouterr()
    assert "sft: 1/1 steps in" in printed.out  # progress as a line of text: no tqdm bar to save as "0%"
    assert "%|" not in printed.out + printed.err
    copy = tmp_path / "copied-runs"
    shutil.copytree(paths.runs_dir() / "ci", copy / "ci")
    monkeypatch.setenv("VADR1_RUNS", str(copy))

    def no_training(*args, **kwargs):
        raise AssertionError("a copied, finished stage was trained again")

    with monkeypatch.context() as patch:
        patch.setattr(sft, "train", no_training)
        moved = stages.ensure_sft(profile)
    assert moved == copy / "ci" / "sft" and StageMarker(moved).read() == trained

    other = notebook.variant(profile, "lr-test", {"sft.learning_rate": 1e-4})
    assert other.run_dir == copy / "ci" / "variants" / "lr-test"
    assert dict(o.split("=", 1) for o in other.overrides) == {"sft.max_steps": "1", "sft.learning_rate": "0.0001"}
    assert stages.ensure_sft(other) == other.run_dir / "sft"
    assert StageMarker(moved).read() == trained  # the profile's own result is untouched
    grpo_only = notebook.variant(profile, "grpo-only", {"grpo.beta": 0.0})
    with monkeypatch.context() as patch:
        patch.setattr(sft, "train", no_training)
        assert stages.ensure_sft(grpo_only) == moved  # SFT's settings are the profile's: reused, not retrained
    assert stages.ensure_base_model(grpo_only) == str(copy / "ci" / "base-model")
    with pytest.raises(config.ProfileError, match="variant"):
        config.load_profile("ci", variant="../escape")


def test_verdict_branches_name_the_deciding_token_and_what_continues_each_verdict():
    normal_a, normal_b = [1, 2, 3, 9], [1, 2, 4, 9]  # "the scene ... nothing happens" in two wordings
    abnormal_a, abnormal_b = [1, 2, 5, 7], [1, 6, 8]
    branches = sft.verdict_branches([normal_a, abnormal_a, normal_b, abnormal_b], [True, False, True, False])
    assert branches[0] == (2, {3, 4}, {5})  # after [1, 2]: 3 or 4 continue a normal target, 5 an abnormal one
    assert branches[1] == (2, {3, 4}, {5})
    assert branches[3] == (1, {2} - {2}, {6})  # 2 continues both verdicts: it decides nothing
    assert sft.decision_token_indices([[1, 2], [1, 2, 3]], [True, False]) == [-1, 2]


def test_verdict_probabilities_are_read_at_the_deciding_token_for_every_test_clip(ci):
    from vadr1_lib.evaluation import verdicts

    profile, base, train, _ = ci
    test = stages.test_records(profile)
    probabilities = verdicts.abnormal_probabilities(base, test, profile, reference=train)
    assert len(probabilities) == len(test) and all(0 < p < 1 for p in probabilities)


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_resuming_restores_the_checkpoints_weights(ci, tmp_path, mode):
    """A requeued job must go on from its checkpoint, not from the base model with the
    checkpoint's step count (transformers' own loading matched no tensor name here)."""
    profile, base, _, splits = ci
    profile = config.load_profile("ci", {"sft.max_steps": 1, "sft.save_steps": 1, "sft.learning_rate": 5e-2,
                                         "train.mode": mode})
    sft.train(profile, base, splits.sft_train, output_dir=tmp_path / "run", video_root=splits.video_root)
    checkpoint = tmp_path / "run" / "checkpoints" / "checkpoint-1"
    model, processor = modeling.load_for_training(base, profile)
    trainer = _trainer(profile, model, processor, sft.sft_dataset(dataset.load_sft(splits.sft_train), processor.tokenizer),
                       tmp_path / "again")
    start = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer._load_from_checkpoint(str(checkpoint))
    saved, _ = modeling.load_model_and_processor(checkpoint, profile)
    saved_weights = dict(saved.named_parameters())
    restored = {n: p.detach() for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert all(torch.equal(restored[n], saved_weights[n].detach()) for n in restored)
    assert any(not torch.equal(restored[n], start[n]) for n in restored)  # the checkpoint is not the base model


def _checkpoint_steps(folder):
    return sorted(int(p.name.split("-")[1]) for p in (folder / "checkpoints").glob("checkpoint-*"))


def test_a_diverging_run_stops_at_its_step_and_a_rerun_resumes_from_the_last_good_checkpoint(ci):
    """A learning rate far too large: the first step trains (finite loss), the second is NaN.
    The stage stops there, unfinished, with checkpoint 1 kept; the rerun resumes from it and
    stops at the same step (transformers alone trained on and saved a NaN model as finished)."""
    from vadr1_lib import notebook

    profile, _, _, _ = ci
    diverging = notebook.variant(profile, "diverging", {"sft.max_steps": 4, "sft.save_steps": 1,
                                                         "sft.learning_rate": 1e12})
    out = sft.stage_dir(diverging)
    with pytest.raises(TrainingDiverged) as first:
        stages.ensure_sft(diverging)
    step = int(re.search(r"ci/sft diverged at step (\d+) of 4: the loss", str(first.value)).group(1))
    assert step > 1 and "this run started at step 0" in str(first.value)  # diverged, not NaN from the start
    assert f"checkpoint-{step - 1}, is the last good step" in str(first.value)
    assert StageMarker(out).read() is None and _checkpoint_steps(out)[-1] == step - 1  # nothing of the NaN step
    kept, _ = modeling.load_model_and_processor(out / "checkpoints" / f"checkpoint-{step - 1}", diverging)
    assert all(torch.isfinite(p).all() for p in kept.parameters())
    with pytest.raises(TrainingDiverged, match=rf"diverged at step {step} of 4: .* resumed at step {step - 1}\)"):
        stages.ensure_sft(diverging)
    assert StageMarker(out).read() is None and _checkpoint_steps(out)[-1] == step - 1


class _StubAccelerator:
    def __init__(self, skipped, other_process_flags=(0.0, 0.0)):
        self.optimizer_step_was_skipped = skipped
        self.other_process_flags = torch.tensor(other_process_flags)

    def reduce(self, tensor, reduction):
        assert reduction == "sum"
        return tensor + self.other_process_flags  # as summed over this process and one other


class _StubTrainer:
    def _maybe_log_save_evaluate(self, tr_loss, grad_norm, *args, **kwargs):
        self.saved = True


class _DivergenceStub(common.StopsOnDivergence, _StubTrainer):
    def __init__(self, skipped):
        self.accelerator, self.saved = _StubAccelerator(skipped), False
        self.state = type("State", (), {"global_step": 7, "max_steps": 9})()
        self.args = type("Args", (), {"run_name": "p/sft", "output_dir": "/nonexistent"})()
        self._initial_global_step = 0


def test_an_fp16_overflow_the_loss_scaler_skipped_is_not_divergence_and_every_process_decides_alike():
    skipped = _DivergenceStub(skipped=True)
    skipped._maybe_log_save_evaluate(torch.tensor(2.0), float("inf"))
    assert skipped.saved  # the scaler skipped the step and lowers its scale: training goes on
    for loss, norm, what in ((torch.tensor(2.0), float("inf"), "the gradient norm \\(inf\\) is"),
                             (torch.tensor(float("nan")), 1.0, "the loss is"),
                             (torch.tensor(float("inf")), torch.tensor(float("nan")), "the loss and the gradient norm")):
        stepped = _DivergenceStub(skipped=False)
        with pytest.raises(TrainingDiverged, match=f"p/sft diverged at step 7 of 9: {what}"):
            stepped._maybe_log_save_evaluate(loss, norm)
        assert not stepped.saved  # nothing of the step logged or saved
    finite_here = _DivergenceStub(skipped=False)
    finite_here.accelerator = _StubAccelerator(False, other_process_flags=(1.0, 0.0))  # another process's loss is NaN
    with pytest.raises(TrainingDiverged, match="the loss is not finite"):
        finite_here._maybe_log_save_evaluate(torch.tensor(2.0), 1.0)  # so this one stops too, instead of waiting
    assert not finite_here.saved


@pytest.mark.slow
def test_every_process_of_a_diverging_deepspeed_run_stops_and_the_launch_ends(tmp_path):
    """Two processes under DeepSpeed ZeRO-2 (CPU, gloo): both stop at the diverging step, the
    launch ends with an error instead of one process waiting for the other."""
    import os
    import subprocess
    import sys

    from vadr1_lib import paths

    result = subprocess.run(
        [sys.executable, "-m", "vadr1_lib", "sft", "--profile", "ci", "--set", "sft.learning_rate=1e12",
         "--set", "sft.max_steps=4", "--set", "sft.save_steps=1", "--set", "launch.num_processes=2",
         "--set", "launch.accelerate_config_sft=zero2.yaml", "--set", "launch.device=cpu",
         "--set", "train.mixed_precision=bf16"],
        capture_output=True, text=True, cwd=paths.PROJECT_ROOT, timeout=600,
        env={**os.environ, "VADR1_RUNS": str(tmp_path)})
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    assert result.stderr.count("error: ci/sft diverged at step 2 of 4") == 2  # one line per process
    assert "error: sft under accelerate failed (exit status 1)" in result.stderr
    assert StageMarker(tmp_path / "ci" / "sft").read() is None
