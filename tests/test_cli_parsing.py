"""What the command line accepts and refuses, checked when parsing (no environment, no training)."""

from __future__ import annotations

import warnings

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


def user_error(capsys, *args: str) -> str:
    """The one `error: ...` line of a command whose values are refused: exit code 2, no
    traceback."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


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


def no_probe(*args, **kwargs):
    raise AssertionError("the environment was probed before the config was checked")


def test_unknown_model_key_fails_before_the_environment_probe(monkeypatch, capsys):
    monkeypatch.setattr("lightning_drama.data.datamodule.make_env", no_probe)
    line = user_error(capsys, "fit", "--config", "debug.yaml", "--model.world_model.d_modl", "32")
    assert line.startswith("error: model.world_model has no key 'd_modl' (did you mean 'd_model'")


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("--model.world_model.d_model=sixty", "model.world_model.d_model must be an integer"),
        ("--model.actor_critic.gamma=true", "model.actor_critic.gamma must be a number"),
    ],
)
def test_a_wrong_type_in_a_component_fails_before_the_environment_probe(
    option, message, monkeypatch, capsys
):
    monkeypatch.setattr("lightning_drama.data.datamodule.make_env", no_probe)
    assert message in user_error(capsys, "fit", "--config", "debug.yaml", option)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("--data.batch_size=-2", "data.batch_size must be >= 1, got -2"),
        ("--data.batch_size=0", "data.batch_size must be >= 1, got 0"),
        ("--data.imagine_batch=0", "data.imagine_batch must be >= 1, got 0"),
        ("--data.seq_len=0", "data.seq_len must be >= 2, got 0"),
        ("--data.capacity=20", "data.warmup_steps (64) must fit in the replay (data.capacity 20)"),
        ("--data.dfs_tau=0", "data.dfs_tau must be > 0.0"),
        ("--data.eval_envs=0", "data.eval_envs must be >= 1"),
        ("--model.wm_lr=-1", "model.wm_lr must be > 0.0"),
        ("--model.betas=[0.9,1.5]", "model.betas must be < 1.0"),
        ("--model.acting=prior", "model.acting must be one of 'reference', 'posterior'"),
        ("--model.world_model.d_model=0", "model.world_model.d_model must be >= 1"),
        ("--model.world_model.dropout=1.5", "model.world_model.dropout must be < 1.0"),
        ("--model.world_model.headdim=48", "is not divisible by headdim 48"),
        ("--model.actor_critic.gamma=1.5", "model.actor_critic.gamma must be <= 1.0"),
        ("--model.actor_critic.reward_timing=late", "model.actor_critic.reward_timing must be"),
        ("--data.env_id=ALE/Breakot-v5", "unknown Atari env 'ALE/Breakot-v5'"),
    ],
)
def test_bad_values_end_in_one_error_line_and_no_run_directory(
    option, message, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    assert message in user_error(capsys, "fit", "--config", "debug.yaml", option)
    assert not (tmp_path / "runs").exists()


def test_abbreviated_options_are_refused(capsys):
    err = parse_error(capsys, "fit", "--config", "debug.yaml", "--trainer.max_epoch", "3")
    assert "unrecognized arguments: --trainer.max_epoch 3" in err


def test_a_second_config_merges_into_the_component_dicts(capsys):
    printed = print_config(
        capsys, "fit", "--config", "debug.yaml", "--config", "atari_improved.yaml"
    )
    world_model, actor_critic = printed["model"]["world_model"], printed["model"]["actor_critic"]
    assert world_model["d_model"] == 64 and world_model["dropout"] == 0.1  # debug's + overlay's
    assert world_model["norm_eps"] == 1e-6 and actor_critic["critic_hidden"] == 64
    assert actor_critic["reward_timing"] == "outcome" and actor_critic["return_bootstrap"] == "next"
    assert printed["model"]["acting"] == "posterior" and printed["model"]["wm_lr"] == 1e-3


def test_the_atari_config_is_the_reference_behaviour(capsys):
    printed = print_config(capsys, "fit", "--config", "atari.yaml")
    model, data = printed["model"], printed["data"]
    # dropout null: the reference's per backbone (none in Mamba-2 blocks; see test_world_model)
    assert model["world_model"]["dropout"] is None and model["world_model"]["norm_eps"] == 1e-5
    assert model["world_model"]["backbone"] == "mamba2"
    assert model["weight_decay"] == 0.0 and model["acting"] == "reference"
    assert model["acting_context"] == 16 and model["eval_greedy"] is True
    assert model["actor_critic"]["reward_timing"] == "reference"
    assert model["actor_critic"]["return_bootstrap"] == "reference"
    assert data["eval_episodes"] == 100 and data["warmup_steps"] == 1032


@pytest.mark.parametrize("subcommand", ["fit", "test"])
def test_a_missing_checkpoint_fails_before_anything_is_made(
    subcommand, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("lightning_drama.data.datamodule.make_env", no_probe)
    line = user_error(capsys, subcommand, "--config", "debug.yaml", "--ckpt_path", "nowhere/x.ckpt")
    assert line == "error: --ckpt_path nowhere/x.ckpt does not exist"
    assert not (tmp_path / "runs").exists()  # no run directory left behind


@pytest.mark.parametrize("content", [b"", b"\x80\x04garbage" * 100])
def test_a_file_that_is_not_a_checkpoint_is_refused(content, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("lightning_drama.data.datamodule.make_env", no_probe)
    (tmp_path / "bad.ckpt").write_bytes(content)
    line = user_error(capsys, "fit", "--config", "debug.yaml", "--ckpt_path", "bad.ckpt")
    assert line.startswith("error: --ckpt_path bad.ckpt is not a checkpoint of lightning_drama")
    assert not (tmp_path / "runs").exists()


def test_ckpt_path_last_without_a_run_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    line = user_error(capsys, "fit", "--config", "debug.yaml", "--ckpt_path", "last")
    assert "this experiment has no run with a last.ckpt yet" in line


def test_checkpoint_names_and_urls_are_left_to_lightning():
    from lightning_drama.cli import _is_local_file_path

    for name in (None, "last", "best", "hpc", "registry", "registry:drama:latest", "s3://b/x.ckpt"):
        assert not _is_local_file_path(name), name
    assert _is_local_file_path("runs/debug/version_0/checkpoints/last.ckpt")


def test_a_transformer_window_shorter_than_the_sequences_is_warned_about():
    from types import SimpleNamespace

    small = dict(encoder_channels=[4, 4], stoch=4, classes=4, d_model=16, n_layers=1,
                 head_hidden=8, num_heads=2, backbone="transformer")  # fmt: skip
    data = SimpleNamespace(seq_len=16, imagine_context=4)
    for max_length, warned in ((16, False), (15, True)):
        module = DramaModule(
            num_actions=3, imagine_horizon=8, world_model={**small, "max_length": max_length}
        )
        module._trainer = SimpleNamespace(datamodule=data)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            module._warn_if_beyond_the_attention_window()
        messages = [str(w.message) for w in caught]
        assert any("--model.world_model.max_length 16" in m for m in messages) == warned, messages
