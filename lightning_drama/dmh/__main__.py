"""The DM-H command line: a LightningCLI over `DMHModule` and `DMHDataModule`.

    python -m lightning_drama.dmh.data --env darkroom --tasks 60 --episodes 1000 \\
        --out data/dmh/darkroom                                    # the learning histories
    python -m lightning_drama.dmh fit --config configs/dmh/darkroom.yaml
    python -m lightning_drama.dmh test --config configs/dmh/darkroom.yaml \\
        --ckpt_path runs/dmh/darkroom/version_0/checkpoints/last.ckpt

``fit`` trains for ``trainer.max_steps``; ``test`` plays the held-out tasks in context and writes
``<log_dir>/in_context.csv`` (see `lightning_drama.dmh.module`). ``data.c`` is also the model's
block size and ``data.episode_blocks`` the model's (linked).
`python -m lightning_drama.dmh fit --help` lists every option.
"""

from __future__ import annotations

import sys

from lightning.pytorch.cli import LightningCLI

from lightning_drama.checks import ConfigError
from lightning_drama.cli import share_run_directory
from lightning_drama.dmh.datamodule import DMHDataModule
from lightning_drama.dmh.module import DMHModule

SUBCOMMANDS = ("fit", "test")
# DMHModule arguments taken from the config, not the checkpoint, by `test --ckpt_path`.
EVAL_KEYS = ("eval_episodes", "target_return", "greedy", "eval_seed")


class DMHCLI(LightningCLI):
    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {k: v for k, v in LightningCLI.subcommands().items() if k in SUBCOMMANDS}

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.c", "model.c")
        parser.link_arguments("data.episode_blocks", "model.episode_blocks")

    def _parse_ckpt_path(self) -> None:
        """Lightning rebuilds the model from the checkpoint's hyperparameters; we keep the
        evaluation settings of the config and command line (`EVAL_KEYS`) over the checkpoint's."""
        subcommand = self.config.get("subcommand")
        keep = {}
        if subcommand:
            model = self.config[subcommand].get("model") or {}
            keep = {key: model.get(key) for key in EVAL_KEYS}
        super()._parse_ckpt_path()
        for key, value in keep.items():
            self.config[subcommand]["model"][key] = value

    def instantiate_trainer(self, **kwargs):
        trainer = super().instantiate_trainer(**kwargs)
        share_run_directory(trainer.loggers)  # TensorBoard and CSV in one version_N
        return trainer


def main(args: list[str] | None = None) -> DMHCLI:
    try:
        return DMHCLI(
            DMHModule,
            DMHDataModule,
            args=args,
            auto_configure_optimizers=False,  # DMHModule's AdamW (+ warm-up)
            save_config_kwargs={"overwrite": True},
            seed_everything_default=0,
            parser_kwargs={"allow_abbrev": False},
        )
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
