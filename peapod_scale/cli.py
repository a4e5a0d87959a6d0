"""``peapod-scale``: prepare data, train, evaluate."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from peapod_scale.config.flags import deprecated_alias, deprecated_switch, parse_args
from peapod_scale.tools.run_dir import RUN_CONFIG, RunDir

TRAIN_LAUNCH_HELP = """\
`peapod-scale train` runs ONE process unless --nproc-per-node N > 1, in which case it starts N ranks on
this machine with torchrun (gloo on CPU, NCCL on GPUs). Under a launcher (deepspeed, torchrun, srun) it
always runs as the rank the launcher made. These are equivalent on this machine:
  peapod-scale train --nproc-per-node 2 --data D --output R --deepspeed ds_configs/z2.json
  deepspeed --num_gpus 2 peapod_scale/train.py --data D --output R --deepspeed ds_configs/z2.json
"""


def _train(argv: list[str]) -> int:
    # lazy: each command imports only what it runs (`peapod-scale --help` starts without torch)
    from peapod_scale.config.train import build_parser

    parser = build_parser()
    parser.epilog = TRAIN_LAUNCH_HELP
    parser.add_argument("--nproc-per-node", type=int, default=1,
                        help="ranks to start on this machine when not already under a launcher (default: 1)")
    args = parser.parse_args(argv)
    forwarded = [a for i, a in enumerate(argv) if a != "--nproc-per-node" and not a.startswith("--nproc-per-node=")
                 and (i == 0 or argv[i - 1] != "--nproc-per-node")]
    if args.nproc_per_node > 1 and "RANK" not in os.environ and "SLURM_PROCID" not in os.environ:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={args.nproc_per_node}", "-m", "peapod_scale.train", *forwarded]
        os.execv(sys.executable, command)
    # lazy: each command imports only what it runs (`peapod-scale --help` starts without torch)
    from peapod_scale.train import main as train_main

    return train_main(forwarded)


def _evaluate(argv: list[str]) -> int:
    # lazy: each command imports only what it runs (`peapod-scale --help` starts without torch)
    import torch

    parser = argparse.ArgumentParser(prog="peapod-scale evaluate",
                                     description="Evaluate a trained run (its model/ folder) by beam search on one split.")
    parser.add_argument("--run-dir", required=True, metavar="RUN",
                        help="run folder written by `train`, its model/ folder, or a folder written by `export`")
    parser.add_argument("--data", required=True, help="dataset folder written by `prepare`")
    parser.add_argument("--split", default="test", choices=["valid", "test"], help="split to evaluate (default: %(default)s)")
    parser.add_argument("--tasks", default="sequential,topn", help="comma-separated tasks: sequential, topn, explanation (default: %(default)s)")
    parser.add_argument("--eval-batch-size", type=int, default=32, help="users per generation batch (default: %(default)s)")
    parser.add_argument("--num-beams", type=int, default=None,
                        help="beams; 10 sequences are returned (default: the run's --num-beams, 20 without a config)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed that orders top-N candidates (default: the run's own --seed, from its config.json, "
                             "so the numbers equal its metrics_<split>.json; 42 for a folder without one)")
    parser.add_argument("--eval-limit", type=int, default=None,
                        help="evaluate N users spread evenly over the split (default: all)")
    parser.add_argument("--constrained-decoding", action=argparse.BooleanOptionalAction, default=None,
                        help="constrained decoding: generate only valid item ids (a prefix trie over their tokens); "
                             "default: as the run evaluated (its --constrained-decoding), on for a folder without its config")
    parser.add_argument("--output", default=None, help="metrics JSON (default: RUN/metrics_<split>.json)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                        help="dtype of every parameter: auto is the one the run trained in, as the trainer's own "
                             "evaluation used it (default: %(default)s)")
    deprecated_alias(parser, "--checkpoint", "--run-dir")
    deprecated_alias(parser, "--batch-size", "--eval-batch-size", type=int)
    deprecated_alias(parser, "--limit", "--eval-limit", type=int)
    deprecated_switch(parser, "--constrained", "--constrained-decoding")
    args = parse_args(parser, argv)

    # lazy: each command imports only what it runs (`peapod-scale --help` starts without torch)
    from peapod_scale.data.dataset import read_manifest
    from peapod_scale.data.tokenizer import TextCodec
    from peapod_scale.distributed.ranks import setup_inference
    from peapod_scale.eval.evaluate import evaluate, format_table
    from peapod_scale.inference.load import load_model
    from peapod_scale.tools.atomic_files import write_json_atomic

    info = setup_inference()  # under a launcher: users sharded over the ranks, results gathered

    run_dir = Path(args.run_dir)
    model, model_dir = load_model(run_dir, args.dtype, info.local_rank)
    run = run_settings(run_dir)  # the run's own protocol unless told otherwise: its numbers come out again
    seed = args.seed if args.seed is not None else run.get("seed", 42)
    num_beams = args.num_beams if args.num_beams is not None else run.get("num_beams", 20)
    constrained = args.constrained_decoding if args.constrained_decoding is not None \
        else run.get("constrained_decoding", True)
    codec = TextCodec.from_file(model_dir / "tokenizer.json")
    manifest = read_manifest(args.data)
    results = evaluate(model, codec, args.data, manifest, split=args.split, rank=info.rank, world_size=info.world_size,
                       tasks=[t for t in args.tasks.split(",") if t], batch_size=args.eval_batch_size,
                       num_beams=num_beams, seed=seed, limit=args.eval_limit, constrained=constrained,
                       topn_history=run.get("topn_history", 0))  # the top-N prompts it was trained on
    output = Path(args.output) if args.output else RunDir(run_dir).metrics(args.split)
    if info.is_main:
        write_json_atomic(output, results)
        print(format_table(results))
        print(f"wrote {output}")
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


def run_settings(run_dir) -> dict:
    """The training options a run was started with (its config.json, or the copy an export keeps as
    run_config.json), {} for a folder without either."""

    for config in (RunDir(run_dir).config, Path(run_dir) / RUN_CONFIG):
        if config.is_file():
            return json.loads(config.read_text()).get("train", {})
    return {}


def _prepare(argv: list[str]) -> int:
    # lazy: each command imports only what it runs (`peapod-scale --help` starts without torch)
    from peapod_scale.data.prepare.dataset import add_prepare_arguments, run_prepare

    parser = argparse.ArgumentParser(prog="peapod-scale prepare",
                                     description="Validate raw interactions, split leave-one-out, write Parquet shards.")
    add_prepare_arguments(parser)
    run_prepare(parser.parse_args(argv))
    return 0


def _estimate(argv: list[str]) -> int:
    # lazy: each command imports only what it runs (`peapod-scale --help` starts without torch)
    from peapod_scale.training.memory_estimate import add_arguments, report

    parser = argparse.ArgumentParser(prog="peapod-scale estimate",
                                     description="Per-GPU memory of a training job (ZeRO model states, activations) "
                                                 "and the DeepSpeed config to use; the model is counted on the meta device.")
    add_arguments(parser)
    print(report(parser.parse_args(argv)))
    return 0


def _export(argv: list[str]) -> int:
    # lazy: each command imports only what it runs (`peapod-scale --help` starts without torch)
    from peapod_scale.inference.export import export

    parser = argparse.ArgumentParser(prog="peapod-scale export",
                                     description="Consolidate a run's ZeRO checkpoint (any stage) into a Hugging Face-format "
                                                 "model folder that loads without DeepSpeed.")
    parser.add_argument("--run-dir", required=True, help="run folder written by `train` (holds checkpoints/ and model/)")
    parser.add_argument("--output", required=True, help="folder to write (replaced atomically)")
    parser.add_argument("--tag", default=None, help="checkpoint tag, e.g. step1000 (default: the latest)")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"],
                        help="weights' dtype in the folder: fp32 keeps the fp32 master weights of a bf16 run exactly, "
                             "bf16 halves its size (default: %(default)s)")
    deprecated_alias(parser, "--checkpoint", "--run-dir")
    args = parse_args(parser, argv)
    export(args.run_dir, args.output, args.tag, dtype=args.dtype)
    return 0


def _recommend(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="peapod-scale recommend",
                                     description="Top-k next items for one user (original ids in and out).")
    parser.add_argument("--run-dir", required=True,
                        help="run folder written by `train`, its model/ folder, or a folder written by `export`")
    parser.add_argument("--data", required=True, help="dataset folder written by `prepare` (holds the user's history)")
    parser.add_argument("--user", required=True, help="the user's original id, as in the raw data")
    parser.add_argument("-k", type=int, default=10, help="items to recommend (default: %(default)s)")
    parser.add_argument("--num-beams", type=int, default=None, help="beams (default: max(20, 2k))")
    parser.add_argument("--include-seen", action="store_true", help="allow items the user already interacted with")
    parser.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                        help="dtype of every parameter: auto is the one the run trained in, as the trainer's own "
                             "evaluation used it (default: %(default)s)")
    deprecated_alias(parser, "--model", "--run-dir")
    args = parse_args(parser, argv)

    # lazy: each command imports only what it runs (`peapod-scale --help` starts without torch)
    from peapod_scale.data.tokenizer import TextCodec
    from peapod_scale.inference.load import load_model
    from peapod_scale.inference.recommend import recommend

    model, model_dir = load_model(args.run_dir, args.dtype)
    items, filled = recommend(model, TextCodec.from_file(model_dir / "tokenizer.json"), args.data, args.user, args.k,
                              args.num_beams, args.include_seen)
    for position, item in enumerate(items, 1):
        print(f"{position}\t{item}")
    if filled:
        print(f"({filled} of {args.k} filled from the most popular items: the beams gave fewer valid unseen items)",
              file=sys.stderr)
    return 0


def _report(argv: list[str]) -> int:
    # lazy: each command imports only what it runs (`peapod-scale --help` starts without torch)
    from peapod_scale.tools.run_report import add_arguments, report

    parser = argparse.ArgumentParser(prog="peapod-scale report",
                                     description="Training curves (per-task loss, lr, throughput, validation) and final "
                                                 "metrics of one or more run folders as PNGs and a Markdown page.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    output = args.output or (Path(args.runs[0]) / "report" if len(args.runs) == 1 else Path("report"))
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ValueError("report draws with matplotlib: pip install 'peapod-scale[bench]' (or matplotlib)") from None
    print(f"wrote {report(args.runs, output)}")
    return 0


COMMANDS = {
    "prepare": (_prepare, "raw data -> validated Parquet dataset folder"),
    "train": (_train, "train with DeepSpeed, then evaluate on the test split"),
    "evaluate": (_evaluate, "beam-search evaluation of a trained run"),
    "export": (_export, "ZeRO checkpoint -> consolidated Hugging Face-format model folder"),
    "recommend": (_recommend, "top-k items for one user of a dataset"),
    "estimate": (_estimate, "per-GPU memory of a ZeRO stage / offload setup, before running it"),
    "report": (_report, "a run's curves and metrics as PNGs and Markdown (several runs side by side)"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: peapod-scale {" + ",".join(COMMANDS) + "} [options]\n")
        for name, (_, summary) in COMMANDS.items():
            print(f"  {name:<10} {summary}")
        print("\n`peapod-scale COMMAND --help` lists a command's options.")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    command, _ = COMMANDS[argv[0]]
    # lazy: each command imports only what it runs (`peapod-scale --help` starts without torch)
    from peapod_scale.tools.log import setup_cli_logging

    setup_cli_logging()  # the `peapod_scale` logger writes through tqdm; library users configure their own
    try:
        return command(argv[1:])
    except (FileNotFoundError, ValueError) as error:  # user-facing input problems: no traceback
        print(f"peapod-scale {argv[0]}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
