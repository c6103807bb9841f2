"""``python -m vadr1_lib <command>``: the same operations the notebooks call, for batch use.

Every command that depends on scale takes ``--profile NAME`` and repeated
``--set section.key=value`` overrides (see :mod:`vadr1_lib.config`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable
from pathlib import Path

from vadr1_lib import config


def _add_profile_args(parser: argparse.ArgumentParser, default: str = "cpu") -> None:
    parser.add_argument("--profile", default=default, help=f"profile name (default: {default}); see `doctor`")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one profile field, e.g. --set sft.max_steps=3 (repeatable)")
    parser.add_argument("--variant", default="", metavar="NAME",
                        help="keep this run's stages under runs/<profile>/variants/NAME (an exercise, an ablation)")


def _profile(args: argparse.Namespace) -> config.Profile:
    profile = config.load_profile(args.profile, args.overrides, args.variant)
    from vadr1_lib.cluster import launch
    from vadr1_lib.model import modeling

    modeling.configure_threads(profile)
    launch.prepare_launched_process(profile)
    return profile


def cmd_doctor(args: argparse.Namespace) -> int:
    from vadr1_lib import doctor

    report = doctor.environment_report()
    if args.json:
        _print_json(args, report)
    else:
        print(doctor.format_report(report))
    return 0


def cmd_tokenize(args: argparse.Namespace) -> int:
    from vadr1_lib.model.tokenizer import qwen_tokenizer

    ids = qwen_tokenizer()(args.text, add_special_tokens=False)["input_ids"]
    print(json.dumps(ids))
    return 0


def cmd_tiny_model(args: argparse.Namespace) -> int:
    from vadr1_lib.model import modeling

    profile = _profile(args)
    corpus: list[str] = []
    for path in args.corpus:
        corpus.extend(_corpus_texts(Path(path)))
    out = modeling.build_tiny_model(profile, Path(args.out), corpus)
    info = modeling.tiny_model_info(out)
    print(f"wrote {out}: {info['parameters']:,} parameters, vocabulary {info['vocab_size']} tokens "
          f"(Qwen2.5 BPE restricted to {info['corpus_texts']} texts)")
    return 0


def _corpus_texts(path: Path) -> list[str]:
    """Texts of a corpus file: release-format JSONL (think + answer) or plain text lines."""
    texts = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            row = json.loads(line)
            texts.extend(str(row[key]) for key in ("think", "answer") if key in row)
        else:
            texts.append(line)
    return texts


def cmd_generate(args: argparse.Namespace) -> int:
    from vadr1_lib.evaluation import inference

    profile = _profile(args)
    result = inference.generate_for_video(Path(args.model), Path(args.video), profile,
                                                 prompt=args.prompt, max_new_tokens=args.max_new_tokens)
    print(result.text)
    print(f"[{result.new_tokens} tokens in {result.seconds:.2f} s: {result.new_tokens / max(result.seconds, 1e-9):.0f} tokens/s; "
          f"{result.video_tokens} video tokens from {result.frames} frames]", file=sys.stderr)
    return 0


def cmd_data_build(args: argparse.Namespace) -> int:
    from vadr1_lib.data import mini

    profile = _profile(args)
    report = mini.build_dataset(profile, footage=Path(args.footage) if args.footage else None, progress=True)
    print(mini.format_build_report(report))
    return 0


def cmd_data_annotate(args: argparse.Namespace) -> int:
    from vadr1_lib import stages
    from vadr1_lib.data import annotate, clips, dashscope, mini

    profile = _profile(args)
    if args.backend == "dashscope":
        try:
            annotator = dashscope.DashScopeAnnotator(base_url=args.base_url or dashscope.DASHSCOPE_BASE_URL)
        except dashscope.MissingAPIKeyError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    else:
        annotator = annotate.OfflineAnnotator(profile.data.seed)
    if args.input:
        rows_file, root, boxes = Path(args.input), Path(args.video_root) if args.video_root else None, None
        scene = clips.USER_FOOTAGE_SCENE
    else:
        splits = stages.data_splits(profile)
        rows_file = splits.file(args.split)
        root, scene = None, clips.footage_scene(profile.data.footage)
        boxes = {video: entry["boxes"] for video, entry in mini.load_boxes(rows_file.parent).items()}
    try:
        report = annotate.annotate_file(annotator, rows_file, Path(args.out), video_root=root, boxes=boxes,
                                        scene=scene, frames=args.frames)
    except dashscope.DashScopeError as exc:
        print(f"error: {exc} (rerun the same command to resume)", file=sys.stderr)
        return 1
    print(f"{report.out}: annotated {report.written} clips ({report.already_done} already there) "
          f"in {report.seconds:.1f} s with {annotator!r}")
    return 0


def cmd_data_stats(args: argparse.Namespace) -> int:
    from vadr1_lib.data import dataset
    from vadr1_lib.model import tokenizer

    records = dataset.load_split(Path(args.file))
    stats = dataset.dataset_stats(records, count_tokens=tokenizer.count_tokens)
    if args.json:
        _print_json(args, stats)
    else:
        print(dataset.format_stats(stats))
    return 0


def cmd_data_validate(args: argparse.Namespace) -> int:
    from vadr1_lib import parsing

    result = parsing.validate_release_file(Path(args.file))
    if args.json:
        _print_json(args, result)
    else:
        print(parsing.format_validation_report(result))
    return 0


def cmd_infer(args: argparse.Namespace) -> int:
    from vadr1_lib.evaluation import inference

    profile = _profile(args)
    report = inference.predict_split(args.model, Path(args.data), Path(args.out), profile, prompt_kind=args.prompt,
                                     video_root=Path(args.video_root) if args.video_root else None, limit=args.limit)
    print(f"{report.out}: wrote {report.written} rows ({report.already_done} already there), "
          f"{report.new_tokens} tokens in {report.seconds:.1f} s ({report.tokens_per_s:.0f} tokens/s)")
    for video_id, reason in report.skipped:
        print(f"skipped {video_id}: {reason}", file=sys.stderr)
    return 0


def _train_stage(ensure: Callable[[], Path]) -> Path | None:
    """Run a training stage's ``ensure_*``; None (the reason printed as one line) when it
    diverged or its launched processes failed."""
    from vadr1_lib.cluster import launch
    from vadr1_lib.training.common import TrainingDiverged

    try:
        return ensure()
    except (TrainingDiverged, launch.LaunchFailed) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    finally:
        launch.finish_launched_process()


def cmd_sft(args: argparse.Namespace) -> int:
    from vadr1_lib import stages
    from vadr1_lib.stage_marker import StageMarker

    profile = _profile(args)
    out = _train_stage(lambda: stages.ensure_sft(profile, dry_run=args.dry_run))
    if out is None:
        return 1
    marker = StageMarker(out).read()
    if marker and not args.dry_run:
        print(f"SFT ({marker['mode']}) of {marker['base_model']}: {marker['global_step']} steps in "
              f"{marker['train_seconds']:.0f} s -> {out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from vadr1_lib.data import dataset
    from vadr1_lib.evaluation import scores

    truth = dataset.load_sft(Path(args.gt))
    results = {}
    for pred in args.pred:
        results[Path(pred).stem] = scores.evaluate_file(Path(pred), truth, text_metrics=not args.no_text,
                                                            bootstrap_resamples=args.bootstrap)
    if args.json:
        _print_json(args, results[Path(args.pred[0]).stem] if len(args.pred) == 1 else results)
    else:
        print(scores.format_table(results))
    return 0


def cmd_grpo(args: argparse.Namespace) -> int:
    from vadr1_lib import stages
    from vadr1_lib.stage_marker import StageMarker

    profile = _profile(args)
    use_ava = profile.grpo.use_ava and not args.no_ava
    out = _train_stage(lambda: stages.ensure_grpo(profile, use_ava=use_ava, dry_run=args.dry_run))
    if out is None:
        return 1
    marker = StageMarker(out).read()
    if marker and not args.dry_run:
        step = "" if marker["mean_step_seconds"] is None else f", {marker['mean_step_seconds']:.2f} s/step"
        flips = "" if marker["flip_rate"] is None else f", verifier flip rate {marker['flip_rate']:.2f}"
        print(f"{marker['stage']} from {marker['start_model']}: {marker['global_step']} steps in "
              f"{marker['train_seconds']:.0f} s{step}{flips} -> {out}")
    return 0


def cmd_preflight(args: argparse.Namespace) -> int:
    from vadr1_lib.cluster import preflight

    try:
        report = preflight.run(args.profile, args.overrides, scratch=Path(args.scratch) if args.scratch else None,
                               machines=args.machines)
    except preflight.PreflightError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.format())
    return 0 if report.ok else 1


def cmd_report(args: argparse.Namespace) -> int:
    from vadr1_lib.evaluation import report

    profile = config.load_profile(args.profile)
    if args.write_readme:
        print(f"updated {report.write_readme(profile)}")
    else:
        print(report.results_markdown(profile))
    return 0


def cmd_run_notebooks(args: argparse.Namespace) -> int:
    from vadr1_lib import runner

    only = [part for item in args.only for part in item.split(",") if part] or None
    try:
        runs = runner.run_notebooks(args.profile, only=only, overrides=args.overrides)
    except runner.NotebookFailed as exc:
        print(runner.summary(exc.runs))
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(runner.summary(runs))
    return 0


def cmd_plan_memory(args: argparse.Namespace) -> int:
    from vadr1_lib.cluster import memory

    # load_profile, not _profile: planning needs no torch, so the command answers at once.
    plan = memory.plan_memory(config.load_profile(args.profile, args.overrides), gpu_gb=args.gpu_gb)
    if args.json:
        _print_json(args, plan.to_dict())
    else:
        print(memory.format_plan(plan))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vadr1_lib", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("doctor", help="versions, device, profiles, and which data is available")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("tokenize", help="print the real Qwen2.5 token ids of TEXT as a JSON list")
    p.add_argument("text")
    p.set_defaults(func=cmd_tokenize)

    p = sub.add_parser("tiny-model", help="build the profile's tiny Qwen2.5-VL into a Hugging Face folder")
    _add_profile_args(p)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--corpus", action="append", default=[], metavar="FILE",
                   help="texts the vocabulary must cover: release-format .jsonl or plain text (repeatable)")
    p.set_defaults(func=cmd_tiny_model)

    p = sub.add_parser("generate", help="print a model's greedy completion for one video")
    _add_profile_args(p)
    p.add_argument("--model", required=True, help="model folder or hub id")
    p.add_argument("--video", required=True, help="video file")
    p.add_argument("--prompt", default=None, help="user prompt text (default: the P2C-CoT prompt)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: the profile's eval.max_new_tokens")
    p.set_defaults(func=cmd_generate)

    data = sub.add_parser("data", help="build, describe and validate datasets").add_subparsers(dest="data_command",
                                                                                              required=True, metavar="ACTION")
    p = data.add_parser("build", help="build Vad-Reasoning-Mini for a profile under data/vad-reasoning-mini/<profile>/")
    _add_profile_args(p)
    p.add_argument("--footage", default=None, help="folder of your own normal footage (default: OpenCV's vtest.avi)")
    p.set_defaults(func=cmd_data_build)
    p = data.add_parser("annotate", help="write P2C-CoT annotations (think, answer) for clips: the offline annotator, "
                                        "or the paper's pipeline on DashScope (key from DASHSCOPE_API_KEY)")
    _add_profile_args(p)
    p.add_argument("--backend", choices=["offline", "dashscope"], default="offline")
    p.add_argument("--split", choices=["sft_train", "val", "test"], default="sft_train",
                   help="which split of the profile's Vad-Reasoning-Mini (built when missing)")
    p.add_argument("--input", default=None, metavar="FILE",
                   help="your own clips instead: a release-schema JSONL (abnormal rows carry start, end and a box)")
    p.add_argument("--video-root", default=None, help="where --input's paths resolve (default: its folder)")
    p.add_argument("--out", required=True, help="annotated JSONL (appended to: clips already there are skipped)")
    p.add_argument("--frames", type=int, default=8, help="frames sampled per clip for the captions (default 8)")
    p.add_argument("--base-url", default=None, help="the OpenAI-compatible endpoint (default: DashScope's)")
    p.set_defaults(func=cmd_data_annotate)
    p = data.add_parser("stats", help="rows, labels, categories, spans and lengths of a release-format JSONL file")
    p.add_argument("file")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_data_stats)
    p = data.add_parser("validate", help="parse every annotation of a release-format JSONL file and check its spans")
    p.add_argument("file")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_data_validate)

    p = sub.add_parser("infer", help="generate for every video of a split into a predictions JSONL (resumable)")
    _add_profile_args(p)
    p.add_argument("--model", required=True, help="model folder (tiny, checkpoint, LoRA adapter) or hub id")
    p.add_argument("--data", required=True, help="release-format JSONL split")
    p.add_argument("--out", required=True, help="predictions JSONL (appended to; ids already there are skipped)")
    p.add_argument("--prompt", default="p2c", choices=["p2c", "direct"])
    p.add_argument("--video-root", default=None, help="where the split's video paths resolve (default: its folder)")
    p.add_argument("--limit", type=int, default=None, help="only the first N videos")
    p.set_defaults(func=cmd_infer)

    p = sub.add_parser("sft", help="supervised fine-tuning of the profile's base model into runs/<profile>/sft/")
    _add_profile_args(p)
    p.add_argument("--dry-run", action="store_true", help="print the accelerate command of a multi-process profile")
    p.set_defaults(func=cmd_sft)

    p = sub.add_parser("grpo", help="AVA-GRPO (or plain GRPO) from the profile's SFT result into runs/<profile>/ava-grpo/")
    _add_profile_args(p)
    p.add_argument("--no-ava", action="store_true", help="plain GRPO without anomaly verification, into runs/<profile>/grpo/")
    p.add_argument("--dry-run", action="store_true", help="print the accelerate command of a multi-process profile")
    p.set_defaults(func=cmd_grpo)

    p = sub.add_parser("evaluate", help="score predictions against ground truth (the release's figures + strict ones)")
    p.add_argument("--pred", action="append", required=True, metavar="FILE",
                   help="predictions from `infer`, a release prediction file ({video, output} rows) or release "
                        "annotation rows (think, answer); repeat to compare models in one table")
    p.add_argument("--gt", required=True, help="ground-truth release-format JSONL (think, answer, start, end)")
    p.add_argument("--json", action="store_true", help="one JSON object (an object per file when several)")
    p.add_argument("--no-text", action="store_true", help="skip BLEU/METEOR/ROUGE")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% intervals (0: none)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("preflight", help="run every stage of a GPU profile as configured, on a tiny Hub-shaped model, "
                                         "a few real release rows and 2 steps: the check before renting GPUs")
    _add_profile_args(p, default="qlora-24gb")
    p.add_argument("--scratch", default=None, help="folder for everything it writes (default: runs/preflight/<profile>)")
    p.add_argument("--machines", type=int, default=1, metavar="N",
                   help="run the multi-process stages across N machines, all on this host (127.0.0.1, CPU, one "
                        "process each), started as srun starts one task per node")
    p.set_defaults(func=cmd_preflight)

    p = sub.add_parser("report", help="the results table from runs/<profile>/metrics (optionally into README.md)")
    _add_profile_args(p)
    p.add_argument("--write-readme", action="store_true", help="replace the README's results block")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("run-notebooks", help="run the notebooks in order with papermill into runs/<profile>/notebooks/")
    _add_profile_args(p)
    p.add_argument("--only", action="append", default=[], metavar="NN[,NN]", help="only these notebook numbers, e.g. 03,04")
    p.set_defaults(func=cmd_run_notebooks)
    p = sub.add_parser("plan-memory", help="estimate per-GPU memory of the profile's SFT and GRPO stages, and whether they fit")
    _add_profile_args(p)
    p.add_argument("--gpu-gb", type=float, default=None,
                   help="memory per device in GiB (default: the profile's launch.gpu_memory_gib; none for CPU profiles)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plan_memory)
    return parser


def _print_json(args: argparse.Namespace, value: object) -> None:
    print(json.dumps(value, indent=2), file=getattr(args, "json_stream", None) or sys.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, "json", False):
            # With --json, stdout carries the JSON alone (a script parses it); whatever a
            # command prints on the way (progress, "loading WordNet ...") goes to stderr.
            args.json_stream = sys.stdout
            with contextlib.redirect_stdout(sys.stderr):
                return args.func(args)
        code = args.func(args)
        if args.func in (cmd_sft, cmd_grpo):  # the commands accelerate launches
            from vadr1_lib.cluster import launch

            if launch.inside_distributed_launch():
                launch.exit_launched_process(code)
        return code
    except config.ProfileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
