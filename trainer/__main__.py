"""A debugging CLI: `python -m trainer {init-tiny,list,train}`.

python -m trainer init-tiny .tunewire/models
python -m trainer list .tunewire/models
python -m trainer train args.json    # TrainArgs as JSON; Ctrl-C pauses at a checkpoint
torchrun --nproc-per-node 2 -m trainer train args.json   # the same run, data-parallel
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

from trainer import models
from trainer.args import TrainArgs
from trainer.distributed import init_from_env
from trainer.recipe import Callbacks, Command, RunInfo, train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("init-tiny", help="build tiny-llama in a models dir").add_argument("dir")
    commands.add_parser("list", help="list the base models of a models dir").add_argument("dir")
    commands.add_parser("train", help="run the recipe from a JSON args file").add_argument("args")
    options = parser.parse_args(argv)

    if options.command == "init-tiny":
        print(models.init_tiny(options.dir))
    elif options.command == "list":
        for model in models.list_base_models(options.dir):
            print(
                f"{model.name}\t{model.architecture}\t{model.parameters:,} params"
                f"\tctx {model.context_length}\t{model.path}"
            )
    else:
        args = TrainArgs.from_dict(json.loads(Path(options.args).read_text(encoding="utf-8")))
        ranks = init_from_env(args.device)
        if not ranks.leader:  # rank 0's files are the run's; the others write their own
            args.output_dir = f"{args.output_dir}-rank-{ranks.rank}"
        result = train(args, _printing_callbacks() if ranks.leader else Callbacks())
        if ranks.leader:
            print(json.dumps(dataclasses.asdict(result), default=str, indent=2))
    return 0


def _printing_callbacks() -> Callbacks:
    pause_requested = False

    def request_pause(_signum: int, _frame: FrameType | None) -> None:
        nonlocal pause_requested
        pause_requested = True

    signal.signal(signal.SIGINT, request_pause)

    def on_start(info: RunInfo) -> None:
        print(f"start: {json.dumps(dataclasses.asdict(info))}", file=sys.stderr)

    def on_metrics(**values: Any) -> None:
        dpo = (
            f"reward acc {values['train_reward_accuracy']:.3f} "
            f"margin {values['train_reward_margin']:.4f} "
            if "train_reward_accuracy" in values
            else ""
        )
        print(
            f"step {values['step']}/{values['total_steps']} epoch {values['epoch']:.2f} "
            f"loss {values['train_loss']:.4f} acc {values['train_mean_token_accuracy']:.3f} "
            f"{dpo}lr {values['learning_rate']:.2e} {values['tokens_per_second']:.0f} tok/s",
            file=sys.stderr,
        )

    def on_event(level: str, message: str, data: dict[str, Any]) -> None:
        print(f"{level}: {message}", file=sys.stderr)

    def on_validation(**values: Any) -> None:
        dpo = (
            f" reward acc {values['valid_reward_accuracy']:.3f}"
            f" margin {values['valid_reward_margin']:.4f}"
            if "valid_reward_accuracy" in values
            else ""
        )
        print(
            f"valid loss {values['valid_loss']:.4f} acc {values['valid_mean_token_accuracy']:.3f}"
            + dpo,
            file=sys.stderr,
        )

    def on_checkpoint(**values: Any) -> None:
        print(f"checkpoint {values['path']}", file=sys.stderr)

    def control() -> Command:
        return "pause" if pause_requested else "continue"

    return Callbacks(
        on_start=on_start,
        on_metrics=on_metrics,
        on_event=on_event,
        on_validation=on_validation,
        on_checkpoint=on_checkpoint,
        control=control,
    )


if __name__ == "__main__":
    sys.exit(main())
