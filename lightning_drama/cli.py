"""The command line: a thin LightningCLI over DramaModule and DramaDataModule.

    python main.py fit --config configs/atari.yaml [--data.env_id ALE/Breakout-v5] [...]
    python main.py test --config configs/atari.yaml --ckpt_path runs/.../checkpoints/last.ckpt

A bare config name (`--config atari.yaml`) is looked up in `configs/`. Config files and
command-line values may use OmegaConf interpolation (`imagine_batch: ${data.batch_size}`); it is
resolved over the whole merged config, so it sees command-line overrides. The resolved config is
saved into every run directory.
"""

from __future__ import annotations

import glob
import json
import os
import re
import sys
from pathlib import Path

import jsonargparse
import lightning.pytorch as pl
import torch
import yaml
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from lightning_drama.allocator import tune_malloc
from lightning_drama.callbacks import DramaProgressBar
from lightning_drama.checks import ConfigError
from lightning_drama.data import DramaDataModule
from lightning_drama.module import (
    DramaModule,
    TrainingDiverged,
    check_component_keys,
    normalise_hparam,
)

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

    def _prepare_subcommand_parser(self, klass, subcommand: str, **kwargs):
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand in ("validate", "test"):
            # Our evaluation table is the result (module.format_evaluation); Lightning's metric
            # table would repeat it.
            parser.set_defaults(verbose=False)
        return parser

    def parse_arguments(self, parser, args) -> None:
        self._given_args = list(sys.argv[1:] if args is None else args)
        super().parse_arguments(parser, args)

    def _parse_ckpt_path(self) -> None:
        """Check the checkpoint before anything is built, then take its model hyperparameters.

        `--ckpt_path last` is the newest `last.ckpt` of this experiment (the loggers' save_dir /
        name). A file that is not a checkpoint of this program, or one of another game, is
        refused. The model's settings come from the checkpoint (its architecture is what the
        weights are); of the `--model.*` flags given on the command line, those that may change
        on resume (`CHANGEABLE_ON_RESUME`) are applied, any other that differs from the
        checkpoint is refused, never dropped silently.
        """
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        config = self.config[subcommand]
        ckpt_path = config.get("ckpt_path")
        if ckpt_path == "last":
            ckpt_path = _newest_last_checkpoint(config)
            config["ckpt_path"] = ckpt_path
        if not _is_local_file_path(ckpt_path):
            return super()._parse_ckpt_path()
        if not os.path.isfile(ckpt_path):
            raise ConfigError(f"--ckpt_path {ckpt_path} does not exist")
        checkpoint = load_checkpoint_file(ckpt_path)
        if subcommand == "fit":
            _exit_if_nothing_to_train(checkpoint, config["data"]["total_env_steps"], ckpt_path)
        saved_game = checkpoint.get("datamodule_hyper_parameters", {}).get("env_id")
        if saved_game is not None and saved_game != config["data"]["env_id"]:
            raise ConfigError(
                f"--ckpt_path {ckpt_path} was trained on {saved_game}, not on "
                f"{config['data']['env_id']}: pass --data.env_id {saved_game} (a model plays the "
                "game it was trained on)"
            )
        given = _flatten(config["model"].as_dict())
        # A flag naming a whole dict (`--model.world_model '{d_model: 128}'`) asks for its keys.
        asked = {
            key: value
            for flag in _given_model_flags(self._given_args)
            for key, value in given.items()
            if key == flag or key.startswith(f"{flag}.")
        }
        super()._parse_ckpt_path()
        config = self.config[subcommand]
        saved = _flatten(config["model"].as_dict())
        refused = []
        for key, value in asked.items():
            if key in CHANGEABLE_ON_RESUME:
                config[f"model.{key}"] = value
            elif normalise_hparam(value) != normalise_hparam(saved.get(key)):
                refused.append(f"--model.{key} {value!r} (the checkpoint's: {saved.get(key)!r})")
        if refused:
            raise ConfigError(
                f"these flags cannot change the model of --ckpt_path {ckpt_path}: "
                + "; ".join(refused)
                + ". Its architecture and training settings are the checkpoint's; only "
                + ", ".join(f"--model.{k}" for k in CHANGEABLE_ON_RESUME)
                + " may change on resume. Start a new run to change the others."
            )
        changed = sorted(
            key
            for key, value in saved.items()
            if key in given and key not in asked
            and normalise_hparam(given[key]) != normalise_hparam(value)
        )  # fmt: skip
        if changed:
            rank_zero_info(
                f"The model is the checkpoint's ({ckpt_path}); where the config differs, the "
                "checkpoint's values are used: " + ", ".join(f"{k}={saved[k]!r}" for k in changed)
            )

    def before_instantiate_classes(self) -> None:
        # A typo in a model dict fails here, before the DataModule probes the environment and
        # the loggers make a run directory.
        config = self.config[self.subcommand] if self.subcommand else self.config
        model = config["model"]
        check_component_keys(model.get("world_model"), model.get("actor_critic"))

    def _instantiate_trainer(self, config: dict, callbacks: list) -> pl.Trainer:
        # Lightning picks Rich's bar when `rich` happens to be installed; ours counts the updates
        # to the env-step budget in a tqdm bar, whatever else is installed.
        configured = [*(config.get("callbacks") or []), *callbacks]
        if config.get("enable_progress_bar") is not False and not any(
            isinstance(c, ProgressBar) for c in configured
        ):
            callbacks = [*callbacks, DramaProgressBar()]
        return super()._instantiate_trainer(config, callbacks)

    def instantiate_trainer(self, **kwargs):
        if self.subcommand in ("validate", "test"):
            # An evaluation prints its table and writes nothing: no run directory for it.
            kwargs["logger"] = False
            self.save_config_callback = None
        trainer = super().instantiate_trainer(**kwargs)
        share_run_directory(trainer.loggers)
        return trainer

    def before_fit(self) -> None:
        # Tell the DataModule which checkpoint is resumed, so its setup reopens that run's replay
        # instead of collecting a fresh warm-up (Lightning restores state only after setup).
        self.datamodule.resume_from = self.config_init[self.subcommand].get("ckpt_path")


# Model settings a resumed run (or an evaluation) may change: the checkpoint holds the others.
CHANGEABLE_ON_RESUME = (
    "wm_lr", "ac_lr", "eval_greedy", "divergence_patience", "compile", "compile_mode"
)  # fmt: skip


def load_checkpoint_file(path: str) -> dict:
    """The checkpoint at `path`, or a ConfigError saying it is not one of this program's."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # EOFError, UnpicklingError, RuntimeError, ...: all "not ours"
        raise ConfigError(
            f"--ckpt_path {path} is not a checkpoint of lightning_drama (torch.load fails: "
            f"{type(error).__name__}); checkpoints are the .ckpt files in <run dir>/checkpoints"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ConfigError(f"--ckpt_path {path} is not a checkpoint of lightning_drama")
    hparams = checkpoint.get("hyper_parameters", {})
    if "world_model" not in hparams or "DramaDataModule" not in checkpoint:
        raise ConfigError(
            f"--ckpt_path {path} is a Lightning checkpoint, but not of a Drama run "
            "(it has no DramaModule hyperparameters or DramaDataModule state)"
        )
    return checkpoint


def _exit_if_nothing_to_train(checkpoint: dict, total_env_steps: int, path: str) -> None:
    """A finished run resumed with the same budget: say so and stop before a run directory is
    made (exit code 0: nothing failed)."""
    state = checkpoint.get("DramaDataModule") or {}
    done = int(state.get("env_steps", 0)) * int(state.get("world_size", 1))
    if done >= total_env_steps:
        print(
            f"{path} has trained on {done:,} env steps, the budget is {total_env_steps:,}: "
            "nothing to train. Raise --data.total_env_steps to go on.",
            file=sys.stderr,
        )
        raise SystemExit(0)


def _newest_last_checkpoint(config) -> str:
    """`<save_dir>/<name>/version_*/checkpoints/last.ckpt` of the configured loggers, newest."""
    loggers = config["trainer"].get("logger") or []
    loggers = loggers if isinstance(loggers, list) else [loggers]
    candidates = []
    for logger in loggers:
        init = getattr(logger, "init_args", None)
        if init is None or init.get("save_dir") is None:
            continue
        pattern = os.path.join(init["save_dir"], init.get("name") or "", "version_*")
        candidates += glob.glob(os.path.join(pattern, "checkpoints", "last.ckpt"))
    if not candidates:
        raise ConfigError(
            "--ckpt_path last: this experiment has no run with a last.ckpt yet (looked for "
            "<save_dir>/<name>/version_*/checkpoints/last.ckpt of the configured loggers); "
            "start it without --ckpt_path, or give the checkpoint's path"
        )
    newest = max(candidates, key=os.path.getmtime)
    rank_zero_info(f"--ckpt_path last: {newest}")
    return newest


def _given_model_flags(args: list[str]) -> list[str]:
    """The keys of `--model.*` options on the command line (`--model.world_model.d_model 64` ->
    `world_model.d_model`), in order, without repeats."""
    keys = []
    for arg in args:
        if arg.startswith("--model."):
            key = arg[len("--model.") :].split("=", 1)[0]
            if key and key not in keys:
                keys.append(key)
    return keys


def _flatten(values: dict, prefix: str = "") -> dict:
    """{"world_model": {"d_model": 64}} -> {"world_model.d_model": 64}."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


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
    # No abbreviated options: argparse would take `--trainer.max_epoch` for `max_epochs`.
    no_abbrev = {"allow_abbrev": False}
    try:
        tune_malloc()  # faster CPU updates, bounded memory (DRAMA_MALLOC_TUNING chooses)
        return DramaCLI(
            DramaModule,
            DramaDataModule,
            args=args,
            parser_kwargs={
                "parser_mode": "omegaconf+",
                **no_abbrev,
                **{name: no_abbrev for name in SUBCOMMANDS},
            },
            # DramaModule configures its own two LaProp optimisers: no --optimizer /
            # --lr_scheduler.
            auto_configure_optimizers=False,
            save_config_kwargs={"overwrite": True},
            seed_everything_default=0,
            trainer_defaults={"num_sanity_val_steps": 0},
        )
    except ConfigError as error:
        # A value the user chose: one line, as the parser reports an unknown option.
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    except TrainingDiverged as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":  # python -m lightning_drama.cli fit ... (as main.py)
    main()
