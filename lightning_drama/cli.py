"""The command line: a thin LightningCLI over DramaModule and DramaDataModule.

    python main.py fit --config configs/atari.yaml [--data.env_id ALE/Breakout-v5] [...]
    python main.py test --config configs/atari.yaml --ckpt_path runs/.../checkpoints/last.ckpt

A bare config name (`--config atari.yaml`) is looked up in `configs/`. Config files and
command-line values may use OmegaConf interpolation (`imagine_batch: ${data.batch_size}`); it is
resolved over the whole merged config, so it sees command-line overrides. The resolved config is
saved into every run directory.
"""

from __future__ import annotations

import json
import os
import re
import sys
import warnings
from pathlib import Path

import jsonargparse
import lightning.pytorch as pl
import yaml
from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar
from lightning.pytorch.cli import LightningCLI

from lightning_drama.allocator import keep_freed_memory
from lightning_drama.data import DramaDataModule
from lightning_drama.module import DramaModule, check_component_keys

# TensorBoard creates the shared run directory first; the CSV logger then warns it is not empty.
warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")

CONFIG_DIRS = (Path.cwd() / "configs", Path(__file__).resolve().parent.parent / "configs")
# Drama has no meaningful predict step (no `forward`): `predict` is not offered.
SUBCOMMANDS = ("fit", "validate", "test")
# --ckpt_path values Lightning resolves itself rather than as a file.
LIGHTNING_CKPT_NAMES = ("best", "last", "hpc")


class DramaCLI(LightningCLI):
    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {
            name: skip for name, skip in LightningCLI.subcommands().items() if name in SUBCOMMANDS
        }

    def add_arguments_to_parser(self, parser) -> None:
        # The model's action space comes from the environment the DataModule probes.
        parser.link_arguments("data.num_actions", "model.num_actions", apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        # A typo in a model dict or a missing checkpoint fails here, before the DataModule probes
        # the environment and the loggers make a run directory.
        config = self.config[self.subcommand] if self.subcommand else self.config
        model = config["model"]
        check_component_keys(model.get("world_model"), model.get("actor_critic"))
        ckpt_path = config.get("ckpt_path")
        if _is_local_file_path(ckpt_path) and not os.path.isfile(ckpt_path):
            raise FileNotFoundError(f"--ckpt_path {ckpt_path} does not exist")

    def _instantiate_trainer(self, config: dict, callbacks: list) -> pl.Trainer:
        # Lightning picks Rich's bar when `rich` happens to be installed; ours counts the updates
        # to the env-step budget in a tqdm bar, whatever else is installed.
        configured = [*(config.get("callbacks") or []), *callbacks]
        if config.get("enable_progress_bar") is not False and not any(
            isinstance(c, ProgressBar) for c in configured
        ):
            callbacks = [*callbacks, TQDMProgressBar()]
        return super()._instantiate_trainer(config, callbacks)

    def instantiate_trainer(self, **kwargs):
        trainer = super().instantiate_trainer(**kwargs)
        share_run_directory(trainer.loggers)
        return trainer

    def before_fit(self) -> None:
        # Tell the DataModule which checkpoint is resumed, so its setup reopens that run's replay
        # instead of collecting a fresh warm-up (Lightning restores state only after setup).
        self.datamodule.resume_from = self.config_init[self.subcommand].get("ckpt_path")


def _is_local_file_path(ckpt_path: str | None) -> bool:
    """Not None, a name Lightning resolves ("last", "registry:..."), or a URL ("s3://...")."""
    return not (
        ckpt_path is None
        or ckpt_path in LIGHTNING_CKPT_NAMES
        or ckpt_path.startswith("registry")
        or "://" in ckpt_path
    )


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


# Dict-typed options: a later config file must change the keys it names and keep the others, but
# the parser replaces a dict as a whole (it merges only dotted command-line keys).
MERGED_DICTS = (("model", "world_model"), ("model", "actor_critic"), ("data", "env_options"))


def merge_config_dicts(args: list[str]) -> list[str]:
    """Make every `--config` after the first merge into the dict options instead of replacing them.

    Such a config's `model.world_model`, `model.actor_critic` and `data.env_options` sections are
    taken out and given as dotted options right after it (`--model.world_model.dropout 0.1`),
    which the parser merges key by key; the rest of the file follows as an inline config. So
    `--config atari.yaml --config atari_improved.yaml` keeps atari.yaml's world-model keys.
    """
    out: list[str] = []
    seen_config = False
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--config" and i + 1 < len(args):
            path, step = args[i + 1], 2
        elif arg.startswith("--config="):
            path, step = arg.split("=", 1)[1], 1
        else:
            out.append(arg)
            i += 1
            continue
        extra = _dotted_dict_options(path) if seen_config else None
        if extra is None:
            out += args[i : i + step]
        else:
            rest, dotted = extra
            if rest:
                out += ["--config", json.dumps(rest)]
            out += dotted
        seen_config = True
        i += step
    return out


def _dotted_dict_options(path: str) -> tuple[dict, list[str]] | None:
    """(the config without its MERGED_DICTS sections, those sections as dotted options), or None
    when `path` is not a YAML file holding any of them."""
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        config = yaml.safe_load(f)
    if not isinstance(config, dict):
        return None
    dotted: list[str] = []
    for section, key in MERGED_DICTS:
        values = config.get(section)
        if isinstance(values, dict) and isinstance(values.get(key), dict):
            for name, value in values.pop(key).items():
                text = value if isinstance(value, str) else json.dumps(value)  # parsed as YAML
                dotted += [f"--{section}.{key}.{name}", text]
            if not values:
                config.pop(section)
    return (config, dotted) if dotted else None


# An absolute interpolation `${data.batch_size}`: a key path from the root, no resolver (`oc.env:`).
_ABSOLUTE_INTERPOLATION = re.compile(r"\$\{([a-zA-Z][a-zA-Z0-9_.\[\]]*)\}")


def relative_interpolations(args: list[str]) -> list[str]:
    """`--data.imagine_batch ${data.batch_size}` -> `--data.imagine_batch ${..data.batch_size}`.

    The parser resolves interpolations over the whole config, where a subcommand's keys sit one
    level down (`fit.data.batch_size`). A path relative to the option's own key finds them whatever
    the subcommand; config files get the same rewrite from jsonargparse's
    `omegaconf_absolute_to_relative_paths`. Inline YAML dicts and lists are left alone.
    """
    resolved = list(args)
    for i, arg in enumerate(resolved):
        if not arg.startswith("--"):
            continue
        if "=" in arg:
            key, value = arg[2:].split("=", 1)
            resolved[i] = f"--{key}={_relative_interpolation(key, value)}"
        elif i + 1 < len(resolved) and not resolved[i + 1].startswith("-"):
            resolved[i + 1] = _relative_interpolation(arg[2:], resolved[i + 1])
    return resolved


def _relative_interpolation(key: str, value: str) -> str:
    if key == "config" or value.lstrip().startswith(("{", "[")):
        return value
    # One dot is the node holding `key`, each further dot one level up: from `data.imagine_batch`,
    # `..` is the subcommand's root.
    up = "." * (key.count(".") + 1)
    return _ABSOLUTE_INTERPOLATION.sub(lambda m: "${" + up + m.group(1) + "}", value)


def main(args: list[str] | None = None) -> DramaCLI:
    if os.environ.get("DRAMA_MALLOC_TUNING", "1") != "0":
        keep_freed_memory()  # ~1.6x faster CPU updates; DRAMA_MALLOC_TUNING=0 turns it off
    if args is None:  # from the command line: rewrite sys.argv so LightningCLI parses it as usual
        sys.argv[1:] = relative_interpolations(
            merge_config_dicts(resolve_config_paths(sys.argv[1:]))
        )
    else:
        args = relative_interpolations(merge_config_dicts(resolve_config_paths(args)))
    # "omegaconf+" resolves interpolations after config files and command line are merged. The
    # root parser's mode is the one used (subcommand parsers inherit it), and its keys start with
    # the subcommand: config files keep paths from their own root by the relative rewrite.
    jsonargparse.set_parsing_settings(omegaconf_absolute_to_relative_paths=True)
    return DramaCLI(
        DramaModule,
        DramaDataModule,
        args=args,
        parser_kwargs={"parser_mode": "omegaconf+"},
        # DramaModule configures its own two LaProp optimisers: no --optimizer / --lr_scheduler.
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
        seed_everything_default=0,
        trainer_defaults={"num_sanity_val_steps": 0},
    )
