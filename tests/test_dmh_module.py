"""DM-H training and in-context evaluation through `python -m lightning_drama.dmh`: fit writes
a checkpoint with finite losses, test writes the in-context curve, and the evaluation keeps one
Mamba memory per task across its episodes."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_drama.dmh.__main__ import main
from lightning_drama.dmh.data import generate
from lightning_drama.dmh.envs import split_tasks
from lightning_drama.dmh.model import DecisionMambaHybrid
from lightning_drama.dmh.module import DMHModule, max_return, play_in_context

DEBUG = str(Path(__file__).resolve().parent.parent / "configs" / "dmh" / "debug.yaml")
TINY = {
    "mamba_d_model": 16, "mamba_layers": 1, "mamba_headdim": 8, "mamba_chunk_size": 8,
    "mamba_d_state": 4, "gpt_d_model": 16, "gpt_layers": 1, "gpt_heads": 2, "dropout": 0.0,
}  # fmt: skip


@pytest.fixture(scope="module")
def histories(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dmh_module") / "darkroom"
    generate("darkroom", 3, 20, out, seed=0, log=lambda line: None)
    return out


@pytest.fixture(scope="module")
def fitted(histories, tmp_path_factory):
    """A few debug-config training steps in a scratch directory: (run dir, checkpoint)."""
    cwd = tmp_path_factory.mktemp("dmh_run")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        main(["fit", "--config", DEBUG, "--data.data_dir", str(histories),
              "--trainer.max_steps", "6", "--trainer.log_every_n_steps", "1"])  # fmt: skip
    run = cwd / "runs" / "dmh" / "debug" / "version_0"
    return cwd, run, run / "checkpoints" / "last.ckpt"


def test_fit_writes_a_checkpoint_with_finite_losses(fitted):
    _, run, checkpoint = fitted
    assert checkpoint.is_file()
    state = torch.load(checkpoint, weights_only=False, map_location="cpu")
    assert state["global_step"] == 6 and state["hyper_parameters"]["c"] == 5
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) >= 5 and all(math.isfinite(v) for v in losses)


def test_test_writes_the_in_context_curve(fitted, histories, monkeypatch):
    cwd, _, checkpoint = fitted
    calls = []
    original = DecisionMambaHybrid.initial_state

    def counting(self, batch_size, device=None):
        calls.append(batch_size)
        return original(self, batch_size, device)

    monkeypatch.setattr(DecisionMambaHybrid, "initial_state", counting)
    monkeypatch.chdir(cwd)
    main(["test", "--config", DEBUG, "--data.data_dir", str(histories),
          "--data.n_test_tasks", "2", "--data.test_batch_size", "1",
          "--model.eval_episodes", "3", "--ckpt_path", str(checkpoint)])  # fmt: skip
    (path,) = (cwd / "runs" / "dmh" / "debug").glob("version_*/in_context.csv")
    rows = list(csv.DictReader(path.open()))
    assert [int(r["episode"]) for r in rows] == [0, 1, 2]
    assert all(int(r["n_tasks"]) == 2 for r in rows)
    assert all(0 <= float(r["mean_return"]) <= 20 and math.isfinite(float(r["std_return"]))
               for r in rows)  # fmt: skip
    for r in rows:  # the 95 % interval of the mean over the 2 tasks
        assert np.isclose(float(r["ci95"]), 1.96 * float(r["std_return"]) / math.sqrt(2))
    # One Mamba memory per task (2 batches of 1 task), not one per episode (6).
    assert calls == [1, 1]


def test_memory_is_carried_across_episodes(monkeypatch):
    """The Mamba memory is created once, and each block starts from the previous block's
    memory, across episode boundaries too."""
    torch.manual_seed(0)
    module = DMHModule(env="darkroom", c=5, model=TINY, eval_episodes=3)
    model = module.net.eval()
    created, fed, closed = [], [], []
    original = {name: getattr(DecisionMambaHybrid, name)
                for name in ("initial_state", "subgoal", "close_block")}  # fmt: skip

    def initial_state(self, batch_size, device=None):
        memory = original["initial_state"](self, batch_size, device)
        created.append(memory)
        return memory

    def subgoal(self, memory, rtg, state, sample=False):
        fed.append((memory, rtg.clone()))
        return original["subgoal"](self, memory, rtg, state, sample)

    def close_block(self, memory, reward_sum, done):
        out = original["close_block"](self, memory, reward_sum, done)
        closed.append((out, done.clone()))
        return out

    for name, fn in (("initial_state", initial_state), ("subgoal", subgoal),
                     ("close_block", close_block)):  # fmt: skip
        monkeypatch.setattr(DecisionMambaHybrid, name, fn)
    tasks = split_tasks("darkroom", 3, seed=0, n_test=2)[1]
    returns, seconds = play_in_context(model, "darkroom", tasks, 3, 20.0)
    assert returns.shape == seconds.shape == (2, 3) and (seconds > 0).all()
    assert len(created) == 1 and len(fed) == len(closed) == 12  # 3 episodes x 4 blocks
    assert fed[0][0] is created[0]
    for k in range(1, 12):
        assert fed[k][0] is closed[k - 1][0]  # the next block continues the memory
    assert [bool(d.all()) for _, d in closed] == [False, False, False, True] * 3
    # rtg restarts from the target at each episode's first block.
    assert all(bool((fed[k][1] == 20.0).all()) for k in (0, 4, 8))
    assert max_return("darkroom") == 20.0 and max_return("darkroom_hard") == 1.0


def test_module_optimiser_and_refusals():
    module = DMHModule(env="tmaze", env_kwargs={"length": 3}, c=2, model=TINY, warmup_steps=5)
    assert module.net.config.state_dim == 3 and module.net.config.num_actions == 4
    assert module.target_return == 1.0
    config = module.configure_optimizers()
    optimizer = config["optimizer"]
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.param_groups[0]["weight_decay"] == 1e-4
    assert np.isclose(optimizer.param_groups[0]["lr"], 1e-4 / 5)  # warm-up's first step
    from lightning_drama.checks import ConfigError

    with pytest.raises(ConfigError, match="env must be one of"):
        DMHModule(env="dark")
    with pytest.raises(ConfigError, match="model.c is set"):
        DMHModule(model={"c": 3})
    with pytest.raises(ConfigError, match=r"model \(DM-H\): .*no_such_field"):
        DMHModule(model={"no_such_field": 1})


TINY_AD = {"d_model": 16, "layers": 1, "heads": 2, "dropout": 0.0, "max_length": 64}
TINY_DT = {"d_model": 16, "layers": 1, "heads": 2, "dropout": 0.0, "context_steps": 20}


@pytest.mark.parametrize(
    ("algorithm", "fields", "net", "backbone"),
    [
        ("ad", TINY_AD, "AlgorithmDistillation", "transformer"),
        ("dm", {**TINY_AD, "mamba_headdim": 8, "mamba_chunk_size": 8}, "AlgorithmDistillation",
         "mamba2"),
        ("dt", TINY_DT, "DecisionTransformer", None),
    ],
)  # fmt: skip
def test_each_baseline_fits_and_plays_in_context_through_the_cli(
    algorithm, fields, net, backbone, histories, tmp_path, monkeypatch
):
    """`--model.algorithm` swaps the network and its evaluation; data and CLI stay the same."""
    monkeypatch.chdir(tmp_path)
    model = json.dumps(fields)
    one_episode = ["--data.episodes_per_context", "1"] if algorithm == "dt" else []
    main(["fit", "--config", DEBUG, "--data.data_dir", str(histories),
          "--model.algorithm", algorithm, "--model.model", model,
          "--data.episode_blocks", "false", *one_episode,  # the baselines read no blocks
          "--trainer.max_steps", "3", "--trainer.log_every_n_steps", "1"])  # fmt: skip
    run = tmp_path / "runs" / "dmh" / "debug" / "version_0"
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    assert state["hyper_parameters"]["algorithm"] == algorithm
    losses = [float(r["train/loss"]) for r in csv.DictReader((run / "metrics.csv").open())
              if r.get("train/loss")]  # fmt: skip
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    module = DMHModule.load_from_checkpoint(run / "checkpoints" / "last.ckpt")
    assert type(module.net).__name__ == net
    if backbone:
        assert module.net.config.backbone == backbone
    main(["test", "--config", DEBUG, "--data.data_dir", str(histories),
          "--data.n_test_tasks", "2", "--model.eval_episodes", "2",
          "--data.episode_blocks", "false",
          "--ckpt_path", str(run / "checkpoints" / "last.ckpt")])  # fmt: skip
    (path,) = (tmp_path / "runs" / "dmh" / "debug").glob("version_1/in_context.csv")
    rows = list(csv.DictReader(path.open()))
    assert [int(r["episode"]) for r in rows] == [0, 1]
    assert all(0 <= float(r["mean_return"]) <= 20 for r in rows)


def test_algorithm_refusals():
    from lightning_drama.checks import ConfigError

    with pytest.raises(ConfigError, match="algorithm"):
        DMHModule(algorithm="transformer")
    with pytest.raises(ConfigError, match="'dm' is AD with backbone 'mamba2'"):
        DMHModule(algorithm="dm", model={"backbone": "transformer"})
    with pytest.raises(ConfigError, match="Decision Transformer"):
        DMHModule(algorithm="dt", model={"gpt_layers": 2})  # a DM-H field
    with pytest.raises(ConfigError, match="set data.episode_blocks false"):
        DMHModule(algorithm="ad", episode_blocks=True)


@pytest.mark.parametrize("episode_blocks", [False, True])
def test_episode_blocks_show_every_episode_start_to_the_mamba(episode_blocks, monkeypatch):
    """A passive T-maze of 6-step episodes, c = 5: only with ``episode_blocks`` does every
    episode's first observation (the only one with the side signal) open a block, and the env
    then waits out its block with the training's padding (zero states, timesteps counting on)."""
    torch.manual_seed(0)
    maze = {"length": 5}
    module = DMHModule(env="passive_tmaze", env_kwargs=maze, c=5, model=TINY)
    model = module.net.eval()
    seen, blocks = [], []
    original_subgoal, original_act = DecisionMambaHybrid.subgoal, DecisionMambaHybrid.act_logits

    def subgoal(self, memory, rtg, state, sample=False):
        seen.append(state.clone())
        return original_subgoal(self, memory, rtg, state, sample)

    def act_logits(self, z, states, actions, rewards, timesteps):
        if states.shape[1] == 5:  # a block's last step: the whole block's inputs
            blocks.append((states.clone(), actions.clone(), timesteps.clone()))
        return original_act(self, z, states, actions, rewards, timesteps)

    monkeypatch.setattr(DecisionMambaHybrid, "subgoal", subgoal)
    monkeypatch.setattr(DecisionMambaHybrid, "act_logits", act_logits)
    returns, _ = play_in_context(model, "passive_tmaze", [None], 4, 1.0, env_kwargs=maze,
                                 episode_blocks=episode_blocks)  # fmt: skip
    assert returns.shape == (1, 4)
    starts = sum(int(state[0, 2] != 0) for state in seen)  # the signal is at t = 0 only
    if not episode_blocks:
        assert (len(seen), starts) == (5, 1)  # 24 steps in 5 blocks; episodes start at 0, 6, ...
        return
    assert (len(seen), starts) == (8, 4)  # 2 blocks per episode, each episode opens one
    for k in range(1, 8, 2):  # an episode's second block: its 6th step, then 4 padding steps
        states, actions, timesteps = blocks[k]
        assert timesteps[0].tolist() == [5, 6, 7, 8, 9]
        assert (states[0, 1:] == 0).all() and (actions[0, 1:] == 0).all()


def test_test_refuses_a_block_setting_other_than_the_checkpoints(fitted, histories, capsys):
    """``c`` and ``episode_blocks`` come from the data config (linked), also for ``test
    --ckpt_path``: another value than the checkpoint's would evaluate it unlike its training."""
    cwd, _, checkpoint = fitted
    with pytest.MonkeyPatch.context() as patch, pytest.raises(SystemExit) as exit_info:
        patch.chdir(cwd)
        main(["test", "--config", DEBUG, "--data.data_dir", str(histories),
              "--data.episode_blocks", "false", "--ckpt_path", str(checkpoint)])  # fmt: skip
    assert exit_info.value.code == 2
    assert "trained with episode_blocks true" in capsys.readouterr().err


def test_dt_refuses_contexts_of_several_episodes(histories, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", DEBUG, "--data.data_dir", str(histories),
              "--model.algorithm", "dt", "--model.model", json.dumps(TINY_DT),
              "--data.episode_blocks", "false", "--trainer.max_steps", "1"])  # fmt: skip
    assert exit_info.value.code == 2
    assert "Decision Transformer reads each episode's own return-to-go" in capsys.readouterr().err


@pytest.mark.parametrize("config", sorted(p.name for p in (Path(DEBUG).parent).glob("*.yaml")))
def test_every_dmh_config_parses_and_builds_its_module(config, capsys):
    """Each configs/dmh file is a valid CLI config whose model can be built (envs, sizes)."""
    import yaml

    path = Path(DEBUG).parent / config
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(path), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    model, data = printed["model"], printed["data"]
    linked = {"c": data["c"], "episode_blocks": data["episode_blocks"]}  # from data, by the CLI
    module = DMHModule(**{**model, **linked})
    assert module.net.config.c == data["c"] and module.env == model["env"]
