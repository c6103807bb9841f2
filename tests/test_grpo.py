"""VideoGRPOTrainer on the ci profile: the video reaches every log-prob forward, a step
trains, AVA runs through the real model, and the stage is cached and loadable."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import pytest
import torch
import trl

from vadr1_lib import cli, prompts, stages
from vadr1_lib.config import load_profile
from vadr1_lib.data import dataset, video
from vadr1_lib.model import modeling
from vadr1_lib.training import grpo, rewards
from vadr1_lib.stage_marker import StageMarker

ABNORMAL_OK = prompts.format_think(["A street.", "Flames appear.", "A fire is dangerous.", "It may spread."]) + "\n" + \
    prompts.format_answer_abnormal("Fire", "a fire starts", (0.25, 0.75), "centre", "fire is dangerous", "damage")
NORMAL_OK = prompts.format_think(["A street with people.", "Everyone walks calmly."]) + "\n" + \
    prompts.format_answer_normal("Normal", "people walk", "nothing unusual happens")
VIDEO_FORWARD_KEYS = ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts", "mm_token_type_ids")


@pytest.fixture(scope="module")
def ci(private_runs):
    """The ci profile (no weight decay, so only gradients move weights) and its SFT result, in a private runs dir."""
    profile = load_profile("ci", {"grpo.weight_decay": 0.0})
    return profile, stages.ensure_sft(profile), stages.data_splits(profile)


def alternating_reward(completions, **kwargs) -> list[float]:
    """0, 1, 0, 1 …: every group of two gets a non-zero advantage, whatever the model writes."""
    return [float(i % 2) for i in range(len(completions))]


@pytest.fixture(scope="module")
def trained(ci, tmp_path_factory):
    """One GRPO step with forward hooks on the policy and the reference model."""
    profile, start, splits = ci
    model, processor = modeling.load_for_training(start, profile)
    records = dataset.load_rl(splits.rl, video_root=splits.video_root)
    args = grpo.training_arguments(profile, tmp_path_factory.mktemp("grpo"), processor)
    args.save_strategy = "no"
    args.reward_weights = None  # the profile weighs its four rewards; these two count 1 each
    trainer = grpo.VideoGRPOTrainer(model=model, reward_funcs=[alternating_reward, rewards.format_reward], args=args,
                                    train_dataset=grpo.rl_dataset(records, profile), processing_class=processor)
    calls: list[tuple[str, bool, dict]] = []

    def recorder(name):
        def hook(module, args, kwargs):
            # Log-prob forwards: TRL's fused head passes labels, the completion-only one use_cache=False;
            # generation steps do neither.
            if "labels" in kwargs or kwargs.get("use_cache") is False:
                calls.append((name, torch.is_grad_enabled(), kwargs))
        return hook

    handles = [model.register_forward_pre_hook(recorder("policy"), with_kwargs=True),
               trainer.ref_model.register_forward_pre_hook(recorder("reference"), with_kwargs=True)]
    before = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    trainer.train()
    for handle in handles:
        handle.remove()
    return trainer, processor, calls, before


def test_video_reaches_every_log_prob_forward(trained) -> None:
    trainer, processor, calls, _ = trained
    assert {(name, grad) for name, grad, _ in calls} == {("reference", False), ("policy", True)}
    for _, _, kwargs in calls:
        assert all(kwargs.get(key) is not None for key in VIDEO_FORWARD_KEYS)
        video_tokens = (kwargs["input_ids"] == processor.video_token_id)
        assert torch.equal(kwargs["mm_token_type_ids"] == 2, video_tokens)
        merge = processor.video_processor.merge_size ** 2
        assert int(video_tokens.sum()) == int(kwargs["video_grid_thw"].prod(-1).sum()) // merge
        assert kwargs["second_per_grid_ts"].tolist() == [1.0] * len(kwargs["input_ids"])  # 2 frames at 2 fps


def test_one_step_changes_the_weights(trained) -> None:
    trainer, _, _, before = trained
    assert trainer.state.global_step == 1
    changed = [name for name, p in trainer.model.named_parameters() if name in before and not torch.equal(p, before[name])]
    assert len(changed) > len(before) // 2
    assert any(name.startswith("model.visual.") for name in changed)  # the gradient flowed through the video


def _logps_inputs(processor, profile, path: str, completion: str):
    clip = video.training_clip(path, profile.video)
    text = processor.apply_chat_template(prompts.build_messages("p2c"), add_generation_prompt=True, tokenize=False)
    full = processor(text=[text + completion], return_tensors="pt", **modeling.video_inputs([clip]))
    per_sample = {"pixel_values_videos": [full["pixel_values_videos"]], "video_grid_thw": [full["video_grid_thw"]],
                  "second_per_grid_ts": [torch.tensor([float(t) for t in full["second_per_grid_ts"]])]}
    return full, per_sample


def test_log_probs_follow_the_video_and_match_a_plain_forward(trained, ci) -> None:
    trainer, processor, _, _ = trained
    profile, _, splits = ci
    model = trainer.model.eval()
    paths = [str(r.path) for r in dataset.load_rl(splits.rl, video_root=splits.video_root)]
    completion_len = len(processor.tokenizer(NORMAL_OK)["input_ids"])
    results = []
    for path in paths[:2]:
        full, per_sample = _logps_inputs(processor, profile, path, NORMAL_OK)
        trainer._batch_video = per_sample
        with torch.no_grad():
            logps, entropy, _ = trainer._get_per_token_logps_and_entropies(
                model, full["input_ids"], full["attention_mask"], completion_len, compute_entropy=True)
            trainer._batch_video = None
            # TRL's fused LM head, given the same video: the completion-only forward computes the same values
            fused_logps, fused_entropy, _ = trl.GRPOTrainer._get_per_token_logps_and_entropies(
                trainer, functools.partial(model, **{k: torch.cat(v) for k, v in per_sample.items()}),
                full["input_ids"], full["attention_mask"], completion_len, compute_entropy=True,
                mm_token_type_ids=full["mm_token_type_ids"])
            assert torch.allclose(logps, fused_logps, atol=1e-5) and torch.allclose(entropy, fused_entropy, atol=1e-4)
            logits = model(**full).logits[:, -completion_len - 1:-1]
            stock, _, _ = trl.GRPOTrainer._get_per_token_logps_and_entropies(
                trainer, model, full["input_ids"], full["attention_mask"], completion_len)
        plain = torch.log_softmax(logits / profile.grpo.temperature, -1).gather(
            -1, full["input_ids"][:, -completion_len:, None])[..., 0]
        assert torch.allclose(logps, plain, atol=1e-5)  # same positions and video as the processor's own forward
        assert (stock - plain).abs().max() > 1e-3  # stock TRL (no video) computes something else
        results.append(logps)
    assert (results[0] - results[1]).abs().max() > 1e-4  # another clip, other log-probs
    model.train()


def test_ava_batches_its_queries_through_the_trainer_model(trained, ci, monkeypatch) -> None:
    trainer, processor, _, _ = trained
    profile, _, splits = ci
    path = str(dataset.load_rl(splits.rl, video_root=splits.video_root)[0].path)
    model = trainer.model
    model.train()
    seen_modes: list[bool] = []
    batch_rows: list[int] = []
    real_generate = model.generate

    def counting_generate(*args, **kwargs):
        seen_modes.append(model.training)
        batch_rows.append(kwargs["input_ids"].shape[0])
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(model, "generate", counting_generate)
    ava = rewards.AnomalyVerificationReward(lambda: trainer, processor, profile, seed=0,
                                            reference_targets=grpo.verdict_reference(profile, splits.sft_train))
    values = ava([ABNORMAL_OK, NORMAL_OK, NORMAL_OK, "junk"], solution=["Abnormal", "Normal", "Normal", "Normal"],
                 video_path=[path] * 4)
    assert seen_modes == [False]  # one batched call, in eval mode
    assert model.training  # and back to training afterwards
    assert values[0] in (0.0, 0.5) and values[1] in (0.0, -0.2) and values[2] in (0.0, -0.2) and values[3] == 0.0
    assert ava.history[-1]["queries"] == 3
    assert batch_rows == [ava.history[-1]["generations"]]  # one row per distinct trimmed view


def test_ensure_grpo_trains_once_saves_a_loadable_model_and_the_cli_reuses_it(ci, capsys) -> None:
    profile, start, _ = ci
    out = stages.ensure_grpo(profile, use_ava=True)
    assert out == profile.run_dir / "ava-grpo"
    marker = StageMarker(out).read()
    assert marker["stage"] == "ava-grpo" and marker["global_step"] == 1 and marker["start_model"] == str(start)
    assert set(marker["reward_curves"]) == {"reward", "rewards/accuracy_reward/mean", "rewards/format_reward/mean",
                                            "rewards/length_reward/mean", "rewards/ava_reward/mean", "kl",
                                            "completions/mean_length", "frac_reward_zero_std"}
    assert len(marker["ava_history"]) == 1 and marker["mean_step_seconds"] > 0
    model, _ = modeling.load_model_and_processor(out, profile)
    assert isinstance(model, torch.nn.Module)
    modified = (out / "model.safetensors").stat().st_mtime_ns
    assert cli.main(["grpo", "--profile", "ci", "--set", "grpo.weight_decay=0.0"]) == 0
    assert (out / "model.safetensors").stat().st_mtime_ns == modified  # cached, not retrained
    assert "ava-grpo from" in capsys.readouterr().out
    assert cli.main(["grpo", "--profile", "ci", "--no-ava", "--dry-run", "--set", "grpo.weight_decay=0.0"]) == 0
    assert f"would train GRPO in this process into {Path(profile.run_dir) / 'grpo'}" in capsys.readouterr().out


def test_group_advantages_by_hand():
    from vadr1_lib.training.grpo import group_advantages

    rewards_ = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    adv = group_advantages(rewards_, group_size=4)
    # group 1: mean 0.5, sample std sqrt(1/3) = 0.57735 -> +-0.5 / 0.57745
    assert adv[:4].tolist() == pytest.approx([0.8659, -0.8659, -0.8659, 0.8659], abs=1e-4)
    assert adv[4:].tolist() == [0.0, 0.0, 0.0, 0.0]  # all equal: no signal


def test_k3_kl_and_the_ratio_that_is_one_but_has_a_gradient():
    from vadr1_lib.training.grpo import grpo_loss, k3_kl

    assert k3_kl(torch.tensor([-1.0]), torch.tensor([-1.0])).item() == 0.0
    # delta = ref - cur = -0.5: exp(-0.5) + 0.5 - 1 = 0.10653
    assert k3_kl(torch.tensor([-1.0]), torch.tensor([-1.5])).item() == pytest.approx(0.10653, abs=1e-5)
    logps = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    loss = grpo_loss(logps, logps.detach(), torch.tensor([2.0]), torch.ones(1, 2), beta=0.04)
    assert loss.item() == pytest.approx(-2.0)  # ratio 1, KL 0: loss = -A
    loss.backward()
    assert logps.grad.tolist() == [[-1.0, -1.0]]  # d(-A * ratio)/d logp = -A, averaged over 2 tokens


def test_the_profiles_sampling_and_clipping_reach_the_trainer(ci, tmp_path) -> None:
    profile = load_profile("ci", {"grpo.top_k": 50, "grpo.max_grad_norm": 5.0, "grpo.top_p": 0.9})
    _, processor = modeling.load_model_and_processor(ci[1], profile)
    args = grpo.training_arguments(profile, tmp_path, processor)
    assert (args.top_k, args.max_grad_norm, args.top_p) == (50, 5.0, 0.9)


def test_the_loss_computed_by_hand_is_the_loss_that_trained(ci, tmp_path, monkeypatch) -> None:
    """Notebook 04 redoes GRPO's arithmetic on the first real batch: group advantages from the
    rewards, then the per-token loss from the policy's and the reference's log-probs. Both
    must equal what the trainer computed, or the notebook teaches a different loss."""
    profile, start, splits = ci

    def varied_reward(completions: list, **kwargs: Any) -> list[float]:
        # The tiny model's first rollouts often score alike: advantages of 0 would match in
        # any order. Distinct rewards make the order of the rollouts matter (TRL shuffles them).
        return [float(len(completion[0]["content"]) % 7) for completion in completions]

    project_rewards = grpo.reward_functions
    monkeypatch.setattr(grpo, "reward_functions", lambda *a, **k: [varied_reward, *project_rewards(*a, **k)[1:]])
    # Two groups of four: TRL's shuffle of 8 rollouts is all but never the identity.
    profile = load_profile(profile.name, [*profile.overrides, "grpo.per_device_train_batch_size=8",
                                          "grpo.num_generations=4"])
    seen = grpo.inspect_first_batch(profile, start, splits.rl, tmp_path, use_ava=True, video_root=splits.video_root,
                                    sft_file=splits.sft_train)
    assert seen["reward_names"] == ["varied_reward", "format_reward", "length_reward", "ava_reward"]
    total = (seen["rewards_per_func"] * seen["reward_weights"]).nansum(dim=1)
    by_hand = grpo.group_advantages(total, seen["num_generations"])[seen["positions"]]
    assert seen["advantages"].abs().max() > 0.1
    assert torch.allclose(by_hand, seen["advantages"], atol=1e-6)
    loss = grpo.grpo_loss(seen["policy_logps"], seen["ref_logps"], seen["advantages"], seen["completion_mask"],
                          seen["beta"])
    assert float(loss) == pytest.approx(seen["loss"], abs=1e-6)


def test_thirds_of_a_curve() -> None:
    assert grpo.thirds([0, 0, 1, 1, 2, 2, 3]) == pytest.approx((0.0, 4 / 3, 2.5))  # 2 + 3 + 2 steps
    with pytest.raises(ValueError, match="at least 3"):
        grpo.thirds([1.0, 2.0])


def test_balanced_rl_batches_alternate_the_verdicts_and_keep_every_video(ci) -> None:
    profile, _, splits = ci
    records = dataset.load_rl(splits.rl, video_root=splits.video_root)
    extra = [dataclasses.replace(records[0], video=f"extra{i}") for i in range(3)]  # one verdict more plentiful
    ordered = grpo.alternate_verdicts(records + extra, seed=1)
    assert sorted(r.video for r in ordered) == sorted(r.video for r in records + extra)
    shorter = min(sum(r.is_abnormal for r in ordered), sum(not r.is_abnormal for r in ordered))
    verdicts = [r.is_abnormal for r in ordered[: 2 * shorter]]
    assert all(a != b for a, b in zip(verdicts, verdicts[1:]))  # every pair of consecutive videos: both verdicts
    assert grpo.alternate_verdicts(records + extra, seed=1) == ordered != grpo.alternate_verdicts(records + extra, seed=2)
    balanced = load_profile("ci", {"grpo.balanced_batches": True})
    _, processor = modeling.load_model_and_processor(ci[1], balanced)
    assert grpo.training_arguments(balanced, splits.rl.parent, processor).shuffle_dataset is False  # TRL keeps the order


def test_reward_weights_name_every_reward_and_drop_avas_without_ava() -> None:
    profile = load_profile("ci", {"grpo.reward_weights": [2.0, 0.5, 0.5, 1.0]})
    assert grpo.reward_weights(profile, use_ava=True) == [2.0, 0.5, 0.5, 1.0]
    assert grpo.reward_weights(profile, use_ava=False) == [2.0, 0.5, 0.5]
    assert grpo.reward_weights(load_profile("ci", {"grpo.reward_weights": None}), use_ava=True) is None  # 1 each


def test_a_moved_run_folder_with_lora_stages_loads_and_is_reused(monkeypatch, tmp_path) -> None:
    """A LoRA variant's SFT and GRPO adapters name their base by identity, not by the
    absolute path PEFT writes: the run folder moved elsewhere (the old one gone) loads the
    same weights and retrains nothing."""
    import shutil

    from vadr1_lib import notebook, paths
    from vadr1_lib.training import sft

    monkeypatch.setenv("VADR1_RUNS", str(tmp_path / "runs"))
    profile = load_profile("ci", {"grpo.weight_decay": 0.0})
    stages.ensure_base_model(profile)  # the chapter's base, which the variant reuses from the profile's folder
    lora = notebook.variant(profile, "lora", {"train.mode": "lora"})
    trained = {"sft": stages.ensure_sft(lora), "grpo": stages.ensure_grpo(lora, use_ava=False)}
    weights = {stage: {n: p.detach().clone() for n, p in modeling.load_model_and_processor(out, lora)[0].named_parameters()}
               for stage, out in trained.items()}
    shutil.move(tmp_path / "runs", tmp_path / "moved")
    monkeypatch.setenv("VADR1_RUNS", str(tmp_path / "moved"))

    def no_training(*args, **kwargs):
        raise AssertionError("a moved, finished stage was trained again")

    monkeypatch.setattr(sft, "train", no_training)
    monkeypatch.setattr(grpo, "train", no_training)
    moved = {"sft": stages.ensure_sft(lora), "grpo": stages.ensure_grpo(lora, use_ava=False)}
    assert moved == {stage: paths.runs_dir() / out.relative_to(tmp_path / "runs") for stage, out in trained.items()}
    for stage, out in moved.items():
        model, _ = modeling.load_model_and_processor(out, lora)
        assert modeling.adapter_base(out) == str(out / "../../../base-model")  # the moved profile's base model
        loaded = dict(model.named_parameters())
        assert loaded.keys() == weights[stage].keys()
        assert all(torch.equal(loaded[n], weights[stage][n]) for n in loaded)
    shutil.rmtree(paths.runs_dir() / "ci" / "base-model")
    with pytest.raises(FileNotFoundError, match=r"base model of adapter .* \((tiny|pretrain):"):
        modeling.load_model_and_processor(moved["sft"], lora)


def test_a_diverging_grpo_run_stops_at_its_step_and_a_rerun_resumes_from_the_last_good_checkpoint(ci) -> None:
    """A learning rate far too large blows the policy up within a few steps: sampling from its
    NaN scores would crash generate with torch's "probability tensor contains inf, nan"; the
    step runs on to its NaN loss instead, which stops the stage there, unfinished."""
    import re

    from vadr1_lib import notebook
    from vadr1_lib.training.common import TrainingDiverged

    profile, _, _ = ci
    # whatever the gradient (0 while the rollouts earn no reward), AdamW's weight decay times
    # this learning rate blows the weights up
    diverging = notebook.variant(profile, "diverging", {"grpo.max_steps": 5, "grpo.save_steps": 1,
                                                         "grpo.learning_rate": 1e12, "grpo.weight_decay": 0.01})
    out = grpo.stage_dir(diverging, use_ava=True)
    with pytest.raises(TrainingDiverged) as first:
        stages.ensure_grpo(diverging, use_ava=True)
    step = int(re.search(r"ci/ava-grpo diverged at step (\d+) of 5: the loss", str(first.value)).group(1))
    assert step > 1 and "this run started at step 0" in str(first.value)
    newest = max(int(p.name.split("-")[1]) for p in (out / "checkpoints").glob("checkpoint-*"))
    assert newest == step - 1 and StageMarker(out).read() is None
    with pytest.raises(TrainingDiverged, match=rf"diverged at step {step} of 5: .* resumed at step {step - 1}\)"):
        stages.ensure_grpo(diverging, use_ava=True)
    assert StageMarker(out).read() is None


def test_an_ava_setting_changes_the_ava_grpo_fingerprint_only(ci) -> None:
    """An exercise that tries the other AVA rule retrains AVA-GRPO, not plain GRPO too."""
    profile, start, splits = ci
    other = load_profile(profile.name, [*profile.overrides, "grpo.ava_rule=label", "grpo.reward_weights=[2.0, 2.0, 1.0, 3.0]"])
    assert grpo.fingerprint(other, start, splits.rl, use_ava=False) == grpo.fingerprint(profile, start, splits.rl, use_ava=False)
    assert grpo.fingerprint(other, start, splits.rl, use_ava=True) != grpo.fingerprint(profile, start, splits.rl, use_ava=True)
    tuned = load_profile(profile.name, [*profile.overrides, "grpo.learning_rate=3e-4"])
    assert grpo.fingerprint(tuned, start, splits.rl, use_ava=False) != grpo.fingerprint(profile, start, splits.rl, use_ava=False)


def test_rl_runs_side_by_side_train_in_their_own_processes_to_the_weights_of_runs_in_turn(tmp_path, monkeypatch, capsys):
    """``launch.concurrent_runs`` 2 (the cpu profile's) starts both runs as CLI processes with
    the profile's overrides; the weights are those of the same runs trained one after the other
    in this process. A child that lost an override would train other weights, or leave its
    run to be retrained here (a progress line of this process's own, without a run's name)."""
    weights = {}
    for concurrent in (2, 1):
        monkeypatch.setenv("VADR1_RUNS", str(tmp_path / f"runs-{concurrent}"))
        profile = load_profile("ci", {"grpo.learning_rate": 5e-3, "launch.concurrent_runs": concurrent})
        runs = stages.ensure_rl_runs(profile)
        weights[concurrent] = {name: modeling.load_model_and_processor(path, profile)[0].state_dict()
                               for name, path in runs.items()}
        printed = capsys.readouterr().out.splitlines()
        if concurrent == 2:
            assert any(line.startswith("[GRPO] grpo from") for line in printed)
            assert any(line.startswith("[AVA-GRPO] ava-grpo from") for line in printed)
            assert not [line for line in printed if line.startswith(("grpo:", "ava-grpo:"))]  # none trained here
    sft = modeling.load_model_and_processor(stages.ensure_sft(profile), profile)[0].state_dict()
    for name in stages.RL_RUNS:
        side, in_turn = weights[2][name], weights[1][name]
        assert all(torch.equal(side[key], in_turn[key]) for key in in_turn)
        assert any(not torch.equal(in_turn[key], sft[key]) for key in sft)  # and RL did move them
