"""What the command line accepts and refuses, checked when parsing (no environment, no training)."""

from __future__ import annotations

import pytest
import yaml

from lightning_drama.cli import main, relative_interpolations
from lightning_drama.module import DramaModule


def print_config(capsys, *args: str) -> dict:
    """The config `main.py <args> --print_config` prints, as a dict."""
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--print_config"])
    assert exit_info.value.code in (None, 0)
    return yaml.safe_load(capsys.readouterr().out)


def parse_error(capsys, *args: str) -> str:
    """The message of a command line the parser refuses."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_interpolation_in_a_config_file(tmp_path, capsys):
    config = tmp_path / "mine.yaml"
    config.write_text("data:\n  batch_size: 5\n  imagine_batch: ${data.batch_size}\n")
    printed = print_config(capsys, "fit", "--config", "debug.yaml", "--config", str(config))
    assert printed["data"]["imagine_batch"] == 5
    # Resolved after the command line is merged: it follows an override of what it refers to.
    printed = print_config(
        capsys, "fit", "--config", "debug.yaml", "--config", str(config), "--data.batch_size=7"
    )
    assert printed["data"]["imagine_batch"] == 7


@pytest.mark.parametrize("subcommand", ["fit", "test"])
def test_interpolation_in_a_command_line_value(subcommand, capsys):
    printed = print_config(
        capsys, subcommand, "--config", "debug.yaml", "--data.batch_size=9",
        "--data.imagine_batch", "${data.batch_size}", "--data.eval_episodes=${data.batch_size}",
    )  # fmt: skip
    assert printed["data"]["imagine_batch"] == 9 and printed["data"]["eval_episodes"] == 9


def test_relative_interpolations():
    args = ["fit", "--data.imagine_batch", "${data.batch_size}", "--model.wm_lr=${model.ac_lr}"]
    assert relative_interpolations(args) == [
        "fit", "--data.imagine_batch", "${..data.batch_size}", "--model.wm_lr=${..model.ac_lr}",
    ]  # fmt: skip
    # Config paths, inline YAML, resolvers and relative paths are left as they are.
    kept = ["--config", "${a.b}", "--model.world_model", "{d_model: ${x}}", "--a=${oc.env:HOME}"]
    kept += ["--data.seq_len=${.batch_size}"]
    assert relative_interpolations(kept) == kept


def test_predict_is_not_a_subcommand(capsys):
    # Drama has no predict step; Trainer.predict would fail for the missing `forward`.
    err = parse_error(capsys, "predict", "--config", "debug.yaml")
    assert "invalid choice: 'predict' (choose from 'fit', 'validate', 'test')" in err


@pytest.mark.parametrize("option", ["--optimizer=Adam", "--lr_scheduler=StepLR"])
def test_optimizer_options_are_not_offered(option, capsys):
    # DramaModule configures its own two LaProp optimisers.
    err = parse_error(capsys, "fit", "--config", "debug.yaml", option)
    assert f"unrecognized arguments: {option}" in err


def test_unknown_world_model_key_names_the_close_match_and_the_valid_keys():
    with pytest.raises(ValueError) as error:
        DramaModule(4, world_model={"d_model": 32, "d_modl": 32})
    message = str(error.value)
    assert message.startswith("model.world_model has no key 'd_modl' (did you mean 'd_model'?).")
    assert "Valid keys: encoder_channels, image_size, stoch, classes, " in message
    assert "num_actions" not in message  # set by the environment, not the config


def test_unknown_actor_critic_key():
    with pytest.raises(ValueError, match=r"model.actor_critic has no key 'gama' \(did you mean "):
        DramaModule(4, actor_critic={"gama": 0.99})
    with pytest.raises(ValueError) as error:
        DramaModule(4, actor_critic={"xyz": 1})
    assert str(error.value).startswith("model.actor_critic has no key 'xyz'. Valid keys: actor_")
    assert "state_dim" not in str(error.value)  # set from the world model


def test_unknown_model_key_fails_before_the_environment_probe(monkeypatch):
    def no_probe(*args, **kwargs):
        raise AssertionError("the environment was probed before the config was checked")

    monkeypatch.setattr("lightning_drama.data.datamodule.make_env", no_probe)
    with pytest.raises(ValueError, match="model.world_model has no key 'd_modl'"):
        main(["fit", "--config", "debug.yaml", "--model.world_model.d_modl", "32"])


@pytest.mark.parametrize("subcommand", ["fit", "test"])
def test_a_missing_checkpoint_fails_before_anything_is_made(subcommand, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def no_probe(*args, **kwargs):
        raise AssertionError("the environment was probed before the checkpoint was checked")

    monkeypatch.setattr("lightning_drama.data.datamodule.make_env", no_probe)
    with pytest.raises(FileNotFoundError, match="--ckpt_path nowhere/last.ckpt does not exist"):
        main([subcommand, "--config", "debug.yaml", "--ckpt_path", "nowhere/last.ckpt"])
    assert not (tmp_path / "runs").exists()  # no run directory left behind


def test_checkpoint_names_and_urls_are_left_to_lightning():
    from lightning_drama.cli import _is_local_file_path

    for name in (None, "last", "best", "hpc", "registry", "registry:drama:latest", "s3://b/x.ckpt"):
        assert not _is_local_file_path(name), name
    assert _is_local_file_path("runs/debug/version_0/checkpoints/last.ckpt")
