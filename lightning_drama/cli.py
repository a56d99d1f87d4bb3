"""The command line: a thin LightningCLI over DramaModule and DramaDataModule.

    python main.py fit --config configs/atari.yaml [--data.env_id ALE/Breakout-v5] [...]
    python main.py test --config configs/atari.yaml --ckpt_path runs/.../checkpoints/last.ckpt

A bare config name (`--config atari.yaml`) is looked up in `configs/`. Configs may use OmegaConf
interpolation (`${data.batch_size}`). The resolved config is saved into every run directory.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

from lightning.pytorch.cli import LightningCLI

from lightning_drama.allocator import keep_freed_memory
from lightning_drama.data import DramaDataModule
from lightning_drama.module import DramaModule

# TensorBoard creates the shared run directory first; the CSV logger then warns it is not empty.
warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")

CONFIG_DIRS = (Path.cwd() / "configs", Path(__file__).resolve().parent.parent / "configs")
SUBCOMMANDS = ("fit", "validate", "test", "predict")


class DramaCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        # The model's action space comes from the environment the DataModule probes.
        parser.link_arguments("data.num_actions", "model.num_actions", apply_on="instantiate")

    def instantiate_trainer(self, **kwargs):
        trainer = super().instantiate_trainer(**kwargs)
        share_run_directory(trainer.loggers)
        return trainer

    def before_fit(self) -> None:
        # Tell the DataModule which checkpoint is resumed, so its setup reopens that run's replay
        # instead of collecting a fresh warm-up (Lightning restores state only after setup).
        ckpt_path = self.config_init[self.subcommand].get("ckpt_path")
        if ckpt_path is not None and not os.path.isfile(ckpt_path):
            raise FileNotFoundError(f"--ckpt_path {ckpt_path} does not exist")
        self.datamodule.resume_from = ckpt_path


def share_run_directory(loggers: list) -> None:
    """TensorBoard and CSV loggers with the same save_dir/name write into one version directory.

    Each would otherwise pick its own next free `version_N` (the second one seeing the first's
    new directory), splitting one run over two directories.
    """
    first: dict[str, object] = {}
    for logger in loggers:
        if not hasattr(logger, "_version") or getattr(logger, "root_dir", None) is None:
            continue
        root = os.path.abspath(logger.root_dir)
        if root in first:
            logger._version = first[root]
        else:
            first[root] = logger.version


def resolve_config_paths(args: list[str]) -> list[str]:
    """`--config atari.yaml` -> `--config configs/atari.yaml` when only the latter exists."""
    resolved = list(args)
    for i, arg in enumerate(resolved):
        if arg == "--config" and i + 1 < len(resolved):
            resolved[i + 1] = _find_config(resolved[i + 1])
        elif arg.startswith("--config="):
            resolved[i] = "--config=" + _find_config(arg.split("=", 1)[1])
    return resolved


def _find_config(name: str) -> str:
    if os.path.exists(name) or name.lstrip().startswith(("{", "[")):
        return name
    for directory in CONFIG_DIRS:
        for candidate in (directory / name, directory / f"{name}.yaml"):
            if candidate.is_file():
                return str(candidate)
    return name  # let the parser report the missing file


def main(args: list[str] | None = None) -> DramaCLI:
    if os.environ.get("DRAMA_MALLOC_TUNING", "1") != "0":
        keep_freed_memory()  # ~1.6x faster CPU updates; DRAMA_MALLOC_TUNING=0 turns it off
    if args is None:  # from the command line: rewrite sys.argv so LightningCLI parses it as usual
        sys.argv[1:] = resolve_config_paths(sys.argv[1:])
    else:
        args = resolve_config_paths(args)
    parser_kwargs = {name: {"parser_mode": "omegaconf"} for name in SUBCOMMANDS}
    return DramaCLI(
        DramaModule,
        DramaDataModule,
        args=args,
        parser_kwargs=parser_kwargs,
        save_config_kwargs={"overwrite": True},
        seed_everything_default=0,
        trainer_defaults={"num_sanity_val_steps": 0},
    )
