"""``peapod-scale``: prepare data, train, evaluate."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

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
    from peapod_scale.config.train import LaunchOptions, TrainConfig

    parser = TrainConfig.parser()
    parser.epilog = TRAIN_LAUNCH_HELP
    launch = next(g for g in parser._action_groups if g.title == LaunchOptions.SECTION)
    launch.add_argument("--nproc-per-node", type=int, default=1, metavar="N",
                        help="ranks to start on this machine when not already under a launcher (default: 1)")
    TrainConfig.from_args(argv, parser)  # every mistake reported here, before ranks start
    nproc = parser.parse_args(argv).nproc_per_node
    forwarded = [a for i, a in enumerate(argv) if a != "--nproc-per-node" and not a.startswith("--nproc-per-node=")
                 and (i == 0 or argv[i - 1] != "--nproc-per-node")]
    if nproc > 1 and "RANK" not in os.environ and "SLURM_PROCID" not in os.environ:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={nproc}", "-m", "peapod_scale.train", *forwarded]
        os.execv(sys.executable, command)
    # lazy: each command imports only what it runs (`peapod-scale --help` starts without torch)
    from peapod_scale.train import main as train_main

    return train_main(forwarded)


def _evaluate(argv: list[str]) -> int:
    # lazy: each command imports only what it runs (`peapod-scale --help` starts without torch)
    from peapod_scale.config.evaluation import EvaluateConfig
    from peapod_scale.config.tasks import task_names

    cfg = EvaluateConfig.from_args(argv)

    # lazy: each command imports only what it runs (`peapod-scale --help` starts without torch)
    import torch

    from peapod_scale.data.dataset import read_manifest
    from peapod_scale.data.tokenizer import TextCodec
    from peapod_scale.distributed.ranks import setup_inference
    from peapod_scale.eval.evaluate import evaluate, format_table
    from peapod_scale.inference.load import load_model
    from peapod_scale.tools.atomic_files import write_json_atomic

    info = setup_inference()  # under a launcher: users sharded over the ranks, results gathered

    run_dir = Path(cfg.run_dir)
    model, model_dir = load_model(run_dir, cfg.dtype, info.local_rank)
    run = run_settings(run_dir)  # the run's own protocol unless told otherwise: its numbers come out again
    seed = cfg.seed if cfg.seed is not None else run.get("seed", 42)
    num_beams = cfg.num_beams if cfg.num_beams is not None else run.get("num_beams", 20)
    constrained = cfg.constrained_decoding if cfg.constrained_decoding is not None \
        else run.get("constrained_decoding", True)
    codec = TextCodec.from_file(model_dir / "tokenizer.json")
    manifest = read_manifest(cfg.data)
    results = evaluate(model, codec, cfg.data, manifest, split=cfg.split, rank=info.rank, world_size=info.world_size,
                       tasks=task_names(cfg.tasks), batch_size=cfg.eval_batch_size, num_beams=num_beams, seed=seed,
                       limit=cfg.eval_limit, constrained=constrained,
                       topn_history=run.get("topn_history", 0))  # the top-N prompts it was trained on
    output = Path(cfg.output) if cfg.output else RunDir(run_dir).metrics(cfg.split)
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
    from peapod_scale.config.prepare import PrepareConfig
    from peapod_scale.data.prepare.dataset import run_prepare

    run_prepare(PrepareConfig.from_args(argv))
    return 0


def _estimate(argv: list[str]) -> int:
    # lazy: each command imports only what it runs (`peapod-scale --help` starts without torch)
    from peapod_scale.config.estimate import EstimateConfig
    from peapod_scale.training.memory_estimate import report

    print(report(EstimateConfig.from_args(argv)))
    return 0


def _export(argv: list[str]) -> int:
    # lazy: each command imports only what it runs (`peapod-scale --help` starts without torch)
    from peapod_scale.config.inference import ExportConfig
    from peapod_scale.inference.export import export

    cfg = ExportConfig.from_args(argv)
    export(cfg.run_dir, cfg.output, cfg.tag, dtype=cfg.dtype)
    return 0


def _recommend(argv: list[str]) -> int:
    # lazy: each command imports only what it runs (`peapod-scale --help` starts without torch)
    from peapod_scale.config.inference import RecommendConfig

    cfg = RecommendConfig.from_args(argv)

    # lazy: each command imports only what it runs (`peapod-scale --help` starts without torch)
    from peapod_scale.data.tokenizer import TextCodec
    from peapod_scale.inference.load import load_model
    from peapod_scale.inference.recommend import recommend

    model, model_dir = load_model(cfg.run_dir, cfg.dtype)
    items, filled = recommend(model, TextCodec.from_file(model_dir / "tokenizer.json"), cfg.data, cfg.user, cfg.k,
                              cfg.num_beams, cfg.include_seen)
    for position, item in enumerate(items, 1):
        print(f"{position}\t{item}")
    if filled:
        print(f"({filled} of {cfg.k} filled from the most popular items: the beams gave fewer valid unseen items)",
              file=sys.stderr)
    return 0


def _report(argv: list[str]) -> int:
    # lazy: each command imports only what it runs (`peapod-scale --help` starts without torch)
    from peapod_scale.config.report import ReportConfig

    cfg = ReportConfig.from_args(argv)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ValueError("report draws with matplotlib: pip install 'peapod-scale[bench]' (or matplotlib)") from None
    from peapod_scale.tools.run_report import report

    print(f"wrote {report(cfg.runs, cfg.output_folder())}")
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
