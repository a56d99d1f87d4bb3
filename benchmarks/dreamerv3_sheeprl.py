"""Reference benchmark (not a test): one gradient step of sheeprl's DreamerV3 "XS" on Atari Pong.

Measures, for comparison with our Drama training (benchmarks/fit.py), the wall time and the FLOPs
of ONE replay-ratio-1 gradient step of the DreamerV3 of the `sheeprl` package: the target-critic
EMA update that sheeprl's loop does before every step, then `sheeprl.algos.dreamer_v3.dreamer_v3.
train` (world-model update on a batch of 16 sequences x 64 steps, imagination of 15 steps from
every one of the 16 x 64 posterior states, actor update, critic update), exactly as sheeprl's
training loop calls it. sheeprl's own CLI loop is not run: the script builds the same pieces.

* configuration: sheeprl's own Hydra configs, `exp=dreamer_v3 algo=dreamer_v3_XS env=atari`
  (PongNoFrameskip-v4 + gymnasium AtariPreprocessing, action repeat 4, 64x64 RGB, 6 actions,
  batch 16 x 64, replay ratio 1, horizon 15), one env, no video, in-memory replay buffer;
* agent: `sheeprl.algos.dreamer_v3.agent.build_agent` on a CPU `lightning.fabric.Fabric`
  (precision `32-true` by default, `--precision bf16-mixed` for CPU autocast), the optimizers
  from the config (Adam, fused) set up with Fabric, sheeprl's `Moments` and metric aggregator;
* data: real frames. The env made by `sheeprl.utils.env.make_env` is stepped with uniformly
  random actions (as sheeprl does before `learning_starts`) and the steps are stored in sheeprl's
  `EnvIndependentReplayBuffer` with sheeprl's layout (obs, one-hot action taken from it, reward
  and terminated/truncated that led to it, is_first); the batches are drawn with sheeprl's
  `sample_batches` (its float tensors of shape [64, 16, ...]) before the timing starts;
* timing: 1 warm-up step, then `--steps` timed steps (a fresh batch each); then one more step
  under `torch.utils.flop_counter.FlopCounterMode` (forward + backward matmuls/convolutions; the
  optimizers' element-wise work is not counted).

Prints progress on stderr and ONE json line on stdout: seconds_per_update (mean of the timed
steps), flops_per_update, flops_per_second, wm_frames_per_second (16*64 / seconds_per_update),
the parameter counts, the batch shape, and the torch / sheeprl versions and thread count.

Install (a separate venv: sheeprl pins packages our project does not use; the constraint keeps the
local CPU build of torch instead of letting pip fetch CUDA wheels):

    python3 -m venv /work/venv-sheeprl
    /work/venv-sheeprl/bin/pip install torch==2.13.0
    /work/venv-sheeprl/bin/pip install -c <(echo torch==2.13.0) "sheeprl[atari]==0.8.4"
    /work/venv-sheeprl/bin/python -c "import torch; assert torch.__version__ == '2.13.0+cpu'"

(`sheeprl[atari]` brings ale-py, which ships the Atari ROMs.) Run:

    /work/venv-sheeprl/bin/python benchmarks/dreamerv3_sheeprl.py --threads 1 --steps 3
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import sys
import time
from pathlib import Path

import gymnasium as gym
import hydra
import numpy as np
import sheeprl
import torch
from hydra import compose, initialize_config_dir
from lightning.fabric import Fabric
from omegaconf import OmegaConf
from sheeprl.algos.dreamer_v2.utils import sample_batches
from sheeprl.algos.dreamer_v3.agent import build_agent
from sheeprl.algos.dreamer_v3.dreamer_v3 import train
from sheeprl.algos.dreamer_v3.utils import AGGREGATOR_KEYS, Moments
from sheeprl.data.buffers import EnvIndependentReplayBuffer, SequentialReplayBuffer
from sheeprl.utils.env import make_env
from sheeprl.utils.metric import MetricAggregator
from sheeprl.utils.utils import dotdict
from torch.distributions import Distribution
from torch.utils.flop_counter import FlopCounterMode


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load_config(precision: str, seed: int) -> dotdict:
    """sheeprl's configuration of DreamerV3 XS on Pong, resolved as its CLI resolves it."""
    overrides = [
        "exp=dreamer_v3",
        "algo=dreamer_v3_XS",
        "env=atari",
        "env.id=PongNoFrameskip-v4",
        "env.num_envs=1",
        "env.capture_video=False",
        "buffer.memmap=False",
        "fabric.accelerator=cpu",
        f"fabric.precision={precision}",
        f"seed={seed}",
    ]
    config_dir = str(Path(sheeprl.__file__).parent / "configs")
    with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    cfg = dotdict(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True))
    cfg.env.frame_stack = -1  # DreamerV3 stacks no frames (set by sheeprl's dreamer_v3.main)
    return cfg


def fill_buffer(cfg: dotdict, env: gym.Env, n_rows: int, seed: int) -> EnvIndependentReplayBuffer:
    """`n_rows` steps of uniformly random play, stored the way sheeprl's DreamerV3 loop stores them:
    each row holds an observation, the action taken from it (one-hot; zeros on the last
    observation of an episode), the reward and terminated/truncated flags that came with it, and
    is_first (1 on the observation of a reset)."""
    key = cfg.algo.cnn_keys.encoder[0]
    n_actions = int(env.action_space.n)
    rb = EnvIndependentReplayBuffer(
        n_rows,
        n_envs=1,
        obs_keys=[key],
        memmap=False,
        buffer_cls=SequentialReplayBuffer,
        seed=seed,
    )

    def row(obs: dict, reward: float, terminated: bool, truncated: bool, first: bool) -> dict:
        def flag(value: float) -> np.ndarray:
            return np.full((1, 1, 1), value, dtype=np.float32)

        return {
            key: obs[key][np.newaxis, np.newaxis],
            "rewards": flag(reward),
            "terminated": flag(terminated),
            "truncated": flag(truncated),
            "is_first": flag(first),
        }

    env.action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    step = row(obs, 0.0, False, False, True)
    added = episodes = 0
    while added < n_rows:
        action = int(env.action_space.sample())
        step["actions"] = np.eye(n_actions, dtype=np.float32)[action].reshape(1, 1, -1)
        rb.add(step)
        added += 1
        obs, reward, terminated, truncated, _ = env.step(action)
        step = row(obs, float(reward), terminated, truncated, False)
        if terminated or truncated:
            step["actions"] = np.zeros((1, 1, n_actions), dtype=np.float32)
            rb.add(step)
            added += 1
            episodes += 1
            obs, _ = env.reset()
            step = row(obs, 0.0, False, False, True)
    log(f"replay buffer: {added} rows of random play ({episodes} finished episodes)")
    return rb


def keep_freed_memory() -> bool:
    """The glibc setting of Drama's training CLI (lightning_drama/allocator.py), for a like-for-
    like comparison: serve blocks below 1 GiB from the heap and never trim it."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, 1 << 30) and libc.mallopt(-1, -1))
    except (OSError, AttributeError):
        return False


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--steps", type=int, default=3, help="timed gradient steps (after 1 warm-up)"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    parser.add_argument("--env-steps", type=int, default=1024, help="rows of random play to sample")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument(
        "--malloc-tuning",
        action="store_true",
        help="keep freed memory in the process (glibc mallopt), as Drama's training CLI does",
    )
    args = parser.parse_args()
    if args.malloc_tuning:
        keep_freed_memory()

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.precision, args.seed)
    # What sheeprl's CLI sets before running an algorithm
    torch.set_float32_matmul_precision(cfg.float32_matmul_precision)
    Distribution.set_default_validate_args(cfg.distribution.validate_args)

    fabric = Fabric(accelerator="cpu", devices=1, precision=args.precision)
    fabric.launch()
    fabric.seed_everything(cfg.seed)

    # The env through sheeprl's factory: the observation space is {"rgb": Box(0, 255, (3, 64, 64))}
    env = make_env(cfg, cfg.seed, 0, None, "train")()
    action_space, obs_space = env.action_space, env.observation_space
    assert isinstance(action_space, gym.spaces.Discrete), action_space
    actions_dim = (int(action_space.n),)
    log(f"env {cfg.env.id}: actions {actions_dim}, observations {obs_space}")

    world_model, actor, critic, target_critic, _player = build_agent(
        fabric, actions_dim, False, cfg, obs_space
    )
    optimizers = [
        hydra.utils.instantiate(part.optimizer, params=module.parameters(), _convert_="all")
        for part, module in (
            (cfg.algo.world_model, world_model),
            (cfg.algo.actor, actor),
            (cfg.algo.critic, critic),
        )
    ]
    world_optimizer, actor_optimizer, critic_optimizer = fabric.setup_optimizers(*optimizers)
    moments_cfg = cfg.algo.actor.moments
    moments = Moments(
        moments_cfg.decay,
        moments_cfg.max,
        moments_cfg.percentile.low,
        moments_cfg.percentile.high,
    )
    # The metrics sheeprl's `train` computes at every step with its default log_level=1 (not the
    # episode statistics, which come from the env loop)
    metrics = {
        k: v
        for k, v in cfg.metric.aggregator.metrics.items()
        if k in AGGREGATOR_KEYS and not k.startswith(("Rewards/", "Game/"))
    }
    cfg.metric.aggregator.metrics = metrics
    MetricAggregator.disabled = False
    aggregator = hydra.utils.instantiate(cfg.metric.aggregator, _convert_="all")

    params = {
        "world_model": count(world_model),
        "encoder": count(world_model.encoder),
        "rssm": count(world_model.rssm),
        "decoder": count(world_model.observation_model),
        "reward": count(world_model.reward_model),
        "continue": count(world_model.continue_model),
        "actor": count(actor),
        "critic": count(critic),
        "target_critic (EMA, not trained)": count(target_critic),
    }
    params["trained_total"] = params["world_model"] + params["actor"] + params["critic"]
    log(f"parameters: {params}")

    rb = fill_buffer(cfg, env, args.env_steps, cfg.seed)
    env.close()
    batches = list(sample_batches(fabric, cfg, rb, args.steps + 2))
    shapes = {k: tuple(v.shape) for k, v in batches[0].items()}
    log(f"batch (sequence, batch, ...): {shapes}")

    done_steps = 0

    def gradient_step(batch: dict) -> None:
        """What sheeprl's loop does for one gradient step: the EMA of the target critic (a copy on
        the first step), then `train` (world model, imagination, actor, critic)."""
        nonlocal done_steps
        if done_steps % cfg.algo.critic.per_rank_target_network_update_freq == 0:
            tau = 1.0 if done_steps == 0 else cfg.algo.critic.tau
            with torch.no_grad():
                for param, target in zip(
                    critic.module.parameters(), target_critic.parameters(), strict=True
                ):
                    target.lerp_(param, tau)
        train(
            fabric,
            world_model,
            actor,
            critic,
            target_critic,
            world_optimizer,
            actor_optimizer,
            critic_optimizer,
            batch,
            aggregator,
            cfg,
            False,
            actions_dim,
            moments,
        )
        done_steps += 1

    start = time.perf_counter()
    gradient_step(batches[0])
    log(f"warm-up step: {time.perf_counter() - start:.2f} s")
    times = []
    for i, batch in enumerate(batches[1 : 1 + args.steps]):
        start = time.perf_counter()
        gradient_step(batch)
        times.append(time.perf_counter() - start)
        log(f"step {i + 1}/{args.steps}: {times[-1]:.2f} s")
    seconds = statistics.mean(times)

    with FlopCounterMode(display=False) as counter:
        gradient_step(batches[-1])
    flops = counter.get_total_flops()
    losses = {k: round(float(v), 4) for k, v in aggregator.compute().items() if "Loss" in k}
    log(f"losses (mean over the steps): {losses}")

    batch_size, sequence_length = cfg.algo.per_rank_batch_size, cfg.algo.per_rank_sequence_length
    result = {
        "seconds_per_update": seconds,
        "step_seconds": times,
        "flops_per_update": flops,
        "flops_per_second": flops / seconds,
        "wm_frames_per_second": batch_size * sequence_length / seconds,
        "params": params,
        "batch": [batch_size, sequence_length],
        "imagination": [batch_size * sequence_length, cfg.algo.horizon],
        "precision": args.precision,
        "env": cfg.env.id,
        "torch": torch.__version__,
        "sheeprl": sheeprl.__version__,
        "threads": torch.get_num_threads(),
        "malloc_tuning": args.malloc_tuning,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
