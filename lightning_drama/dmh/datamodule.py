"""DM-H training contexts from learning histories, and a `LightningDataModule` that streams them.

A context (`make_context`) is n episodes of one task's history, **sorted by ascending return**
(the paper's "n trajectories sorted by ascending return"; ties keep their history order), their
steps concatenated into one flat sequence of L steps with the keys `DecisionMambaHybrid.forward`
reads:

- ``states [L, d]``: the observation each action was taken in (s_t, never an episode's final
  observation); ``actions``, ``rewards [L]`` as in `History`;
- ``dones [L]``: 1 at each episode's last step; ``timesteps [L]``: the step's index within its
  episode (0 at each episode's first step);
- ``rtg [L]``: returns-to-go **relabelled** to the last (highest-return) trajectory's return
  R_last. Our reading: every step of every episode counts down from R_last,
  ``rtg_t = R_last - sum(rewards of the same episode before step t)``, so each episode starts at
  the target return. On the last trajectory this is its true return-to-go; as the episodes are
  sorted, R_last >= every episode's return, so rtg is never below the rewards still to come
  (and never negative when rewards are);
- ``loss_mask [L]``: 1 on the last trajectory's steps only;
- ``subgoals [L, d]``: `valuable_subgoals` of each episode separately, given its T + 1
  observations (so the final observation can be the last step's goal);
- ``pad [L]``: 1 on padding steps (see below).

**Padding.** The model needs L a multiple of ``c``. Fixed-length
episodes that are multiples of ``c`` (the 9 x 9 rooms: 20 steps, c = 5) need none. Otherwise we
add the fewest steps that make L a multiple of c (or reach a requested ``length``) at the
**front**, so that the last trajectory, the one the loss reads, stays where it is, at the end.
Padding steps are neutral: states, actions, rewards, subgoals and timesteps 0, ``dones`` 0,
``loss_mask`` 0, ``rtg`` = R_last (the value every episode starts from, so the Mamba's first rtg
token is the usual one) and ``pad`` 1. They never enter the loss. Whole blocks of padding in
front (`collate_contexts` pads a batch's shorter contexts to the longest) do not reach the
model's real blocks: DM-H's Mamba starts afresh at a context's first block with a real step
(`DecisionMambaHybrid.encode_blocks` reads ``pad``), as the evaluation's memory starts empty.
Padding shorter than c shares the first block with the first episode's first steps (that
block's Mamba state token is then a zero state), which affects only the context's first
sub-goal.

`DMHDataModule` loads every history once (``setup``) and its ``train_dataloader`` streams endless
batches of random contexts: a uniformly random task, then a uniformly random **window of n
consecutive episodes** of its history, as Algorithm Distillation samples across-episode windows
of the learning history: neighbouring episodes are from one stage of learning, the improvement
the source algorithm made there is what the context shows, and sorting them by return orders
them from worse to better, the order the model learns to continue. (Episodes drawn from the
whole history instead would mix random first episodes with near-optimal last ones.)

**Episode blocks** (``episode_blocks``, default False). DM-H reads its Mamba tokens once every
``c`` steps, and the state token is the block's first state. With blocks cut from the flat
context whatever the episode boundaries, an episode whose length is not a multiple of c starts
in the middle of a block, so its first state never reaches the Mamba: fatal in the T-maze, where
only the first observation shows the goal side (our first T-maze runs could not learn it:
README). ``episode_blocks=True`` pads every episode **at its end** with neutral steps (as the
left padding below, but ``rtg`` = what is left of R_last after the episode and ``timesteps``
counting on) to a multiple of c, so that every episode starts a block; the evaluation does the
same (an env whose episode ends inside a block waits for the next block). The 9 x 9 rooms' 20
steps are a multiple of c = 5 and need none. The padding only follows an episode's own steps in
its last block, so the GPT's causal attention keeps it from every real prediction, and it is
out of the loss. (Our switch: the paper's text does not say how blocks meet episode
boundaries; DM-H's configs turn it on.)

**Context size** (``min_episodes_per_context``, default: ``episodes_per_context``, a fixed n).
With a fixed n the loss only ever sees the n-th episode of a context, so the model never learns
to act with fewer than n - 1 episodes behind it, which is exactly what the first in-context test
episodes ask of it (the Mamba's memory starts empty). A smaller minimum draws n uniformly from
``[min_episodes_per_context, episodes_per_context]`` for each context (the contexts of a batch
are then left-padded to the longest). Our switch, measured in README (DM-H's paper gives n but
not how short contexts are handled).

**Order** (``order``, default "return"). "return" is the above, DM-H's. "history" keeps the
episodes in the history's order (ascending episode index, whatever order they are given in), as
Algorithm Distillation trains on the learning history as it was played (see
`lightning_drama.dmh.baselines`): the context then shows the learner's own progress,
improvements and relapses alike. Everything else follows the last episode **in that order**:
``loss_mask`` marks it, and ``rtg`` is relabelled to its return R_last (so rtg can fall below
the rewards still to come, and below 0, on an earlier episode that did better than the last
one). AD reads no rtg; the relabelling only keeps the keys the same.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from lightning_drama.checks import ConfigError, check_choice, check_int
from lightning_drama.dmh.data import History, load_histories
from lightning_drama.dmh.envs import split_tasks
from lightning_drama.dmh.model import BATCH_KEYS, valuable_subgoals

# The keys of a context: the model's `BATCH_KEYS` and the padding flag.
CONTEXT_KEYS = (*BATCH_KEYS, "pad")
# Batch dtypes: the integer keys are indices (embeddings, targets), the flags are bool.
INT_KEYS = ("actions", "timesteps")
BOOL_KEYS = ("pad",)
# How a context orders its episodes: by ascending return (DM-H) or as in the history (AD).
ORDERS = ("return", "history")


def pad_context(context: dict[str, np.ndarray], length: int) -> dict[str, np.ndarray]:
    """``context`` left-padded with neutral steps to ``length`` steps (see the module docstring);
    the same arrays when it already has ``length`` steps."""
    n = len(context["actions"])
    if length < n:
        raise ConfigError(f"pad_context: length {length} is below the context's {n} steps")
    extra = length - n
    if extra == 0:
        return context
    padded = {}
    for key, value in context.items():
        fill = np.zeros((extra, *value.shape[1:]), value.dtype)
        if key == "rtg":
            fill[:] = value[0]  # R_last: every episode's first rtg
        elif key == "pad":
            fill[:] = True
        padded[key] = np.concatenate([fill, value])
    return padded


def make_context(
    history: History,
    episode_indices: Sequence[int],
    c: int,
    length: int | None = None,
    *,
    order: str = "return",
    episode_blocks: bool = False,
) -> dict[str, np.ndarray]:
    """The DM-H training context of ``history``'s episodes ``episode_indices`` (any order; they
    are sorted by ascending return, ties in the given order), left-padded to a multiple of ``c``
    steps or to ``length`` (a multiple of c, at least the steps of the episodes).

    ``order="history"`` puts the episodes in the history's order (ascending index) instead; the
    loss mask and the rtg relabelling then follow the last of them (see the module docstring).
    ``episode_blocks=True`` pads each episode at its end to a multiple of c, so that every
    episode starts a block of the model (see the module docstring).

    Returns numpy arrays ``[L]`` or ``[L, d]``: ``states`` int64, ``actions`` int64,
    ``rewards`` float64, ``rtg`` float64, ``dones`` bool, ``timesteps`` int64, ``loss_mask``
    bool, ``subgoals`` float64, ``pad`` bool (see the module docstring for their meaning).
    """
    c = check_int("make_context", "c", c, minimum=1)
    check_choice("make_context", "order", order, ORDERS)
    indices = list(episode_indices)
    if not indices:
        raise ConfigError("make_context: episode_indices is empty; a context needs an episode")
    for i in indices:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise ConfigError(f"make_context: episode index {i!r} is not an integer")
        if not 0 <= i < history.num_episodes:
            raise ConfigError(
                f"make_context: episode index {i} is outside the history's "
                f"{history.num_episodes} episodes"
            )
    if order == "return":
        returns = np.array([history.rewards[i].sum() for i in indices], np.float64)
        episodes = [indices[k] for k in np.argsort(returns, kind="stable")]
    else:
        episodes = sorted(indices)
    target = float(history.rewards[episodes[-1]].sum())  # R_last
    parts: dict[str, list[np.ndarray]] = {key: [] for key in CONTEXT_KEYS}
    for position, e in enumerate(episodes):
        obs, rewards = history.observations[e], history.rewards[e].astype(np.float64)
        steps = len(rewards)
        dones = np.zeros(steps, bool)
        dones[-1:] = True
        parts["states"].append(obs[:steps].astype(np.int64))
        parts["actions"].append(history.actions[e].astype(np.int64))
        parts["rewards"].append(rewards)
        parts["rtg"].append(target - (np.cumsum(rewards) - rewards))
        parts["dones"].append(dones)
        parts["timesteps"].append(np.arange(steps, dtype=np.int64))
        parts["loss_mask"].append(np.full(steps, position == len(episodes) - 1))
        parts["subgoals"].append(valuable_subgoals(obs, rewards).numpy())
        parts["pad"].append(np.zeros(steps, bool))
        extra = -steps % c if episode_blocks else 0
        if extra:  # neutral steps after the episode, up to its block's end
            for key in CONTEXT_KEYS:
                last = parts[key][-1]
                fill = np.zeros((extra, *last.shape[1:]), last.dtype)
                if key == "rtg":
                    fill[:] = target - rewards.sum()  # what is left after the episode
                elif key == "timesteps":
                    fill[:] = np.arange(steps, steps + extra)
                elif key == "pad":
                    fill[:] = True
                parts[key].append(fill)
    context = {key: np.concatenate(value) for key, value in parts.items()}
    steps = len(context["actions"])
    if length is None:
        length = -(-steps // c) * c
    else:
        length = check_int("make_context", "length", length, minimum=1)
        if length % c or length < steps:
            raise ConfigError(
                f"make_context: length {length} must be a multiple of c = {c} and at least the "
                f"episodes' {steps} steps"
            )
    return pad_context(context, length)


def collate_contexts(contexts: Sequence[dict[str, np.ndarray]], c: int) -> dict[str, torch.Tensor]:
    """Contexts -> a batch ``[B, L, ...]``: each left-padded to the longest (a multiple of c),
    ``actions`` and ``timesteps`` int64, ``pad`` bool, the rest float32."""
    length = max(len(context["actions"]) for context in contexts)
    length = -(-length // c) * c
    contexts = [pad_context(context, length) for context in contexts]
    batch = {}
    for key in CONTEXT_KEYS:
        stacked = np.stack([context[key] for context in contexts])
        dtype = np.int64 if key in INT_KEYS else bool if key in BOOL_KEYS else np.float32
        batch[key] = torch.from_numpy(stacked.astype(dtype))
    return batch


class ContextStream(IterableDataset):
    """Endless batches of random contexts (see the module docstring), as whole batches.

    Seeded by ``(seed, worker id, pass)``: the same seed gives the same batches; each worker of
    a loader draws its own, and each new pass over the stream (a new iterator) continues with
    other draws instead of repeating the first ones. ``order``: `make_context`'s;
    ``min_episodes_per_context``: see the module docstring (None: ``episodes_per_context``);
    ``episode_blocks``: `make_context`'s.
    """

    def __init__(
        self, histories: Sequence[History], episodes_per_context: int, c: int, batch_size: int,
        seed: int, order: str = "return", min_episodes_per_context: int | None = None,
        episode_blocks: bool = False,
    ):  # fmt: skip
        self.histories = list(histories)
        self.episodes_per_context = episodes_per_context
        self.c = c
        self.batch_size = batch_size
        self.seed = seed
        self.order = check_choice("ContextStream", "order", order, ORDERS)
        self.min_episodes_per_context = check_int(
            "ContextStream", "min_episodes_per_context",
            episodes_per_context if min_episodes_per_context is None else min_episodes_per_context,
            minimum=1, maximum=episodes_per_context,
        )  # fmt: skip
        self.episode_blocks = bool(episode_blocks)
        self._passes = 0

    def sample_context(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        history = self.histories[int(rng.integers(len(self.histories)))]
        n = self.episodes_per_context
        if self.min_episodes_per_context < n:
            n = int(rng.integers(self.min_episodes_per_context, n + 1))
        start = int(rng.integers(history.num_episodes - n + 1))
        return make_context(
            history, range(start, start + n), self.c, order=self.order,
            episode_blocks=self.episode_blocks,
        )  # fmt: skip

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        worker = get_worker_info()
        rng = np.random.default_rng([self.seed, 0 if worker is None else worker.id, self._passes])
        self._passes += 1
        while True:
            contexts = [self.sample_context(rng) for _ in range(self.batch_size)]
            yield collate_contexts(contexts, self.c)


class DMHDataModule(pl.LightningDataModule):
    """Random DM-H contexts from the learning histories under ``data_dir``.

    Batch keys (B = batch_size, L = the steps of n episodes left-padded to a multiple of c; for
    the 9 x 9 rooms n x 20): ``states [B, L, d]``, ``rewards``, ``rtg``, ``dones``,
    ``loss_mask [B, L]`` and ``subgoals [B, L, d]`` float32, ``actions``, ``timesteps [B, L]``
    int64, ``pad [B, L]`` bool: all `DecisionMambaHybrid.forward` needs.

    Args:
        data_dir: the histories, as `python -m lightning_drama.dmh.data` wrote them.
        episodes_per_context: n, the consecutive episodes of one task in a context; every
            history needs at least n episodes.
        c: steps per block of the model (the context length is a multiple of it).
        batch_size: contexts per batch.
        seed: seeds the draws; the same seed gives the same batches.
        num_workers: loader processes; each draws its own stream (seeded by its id).
        n_test_tasks: held-out tasks for in-context evaluation (`test_dataloader`); None = all
            the tasks the histories' training split left out (``split_tasks`` with the
            ``n_train`` and split seed the histories record).
        test_batch_size: test tasks played together in one `test_step`.
        order: the episodes of a context by ascending "return" (DM-H's) or in "history" order
            (Algorithm Distillation's); see the module docstring.
        min_episodes_per_context: the fewest episodes of a context; each context draws its
            number uniformly between this and ``episodes_per_context``. None (default): always
            ``episodes_per_context``. See the module docstring.
        episode_blocks: pad every episode at its end to a multiple of ``c`` so that each
            episode starts a new block (DM-H's Mamba then reads every episode's first state);
            the CLI passes it on to `DMHModule`, whose evaluation then starts each episode at a
            block too. False: blocks run on across episode boundaries. See the module docstring.
    """

    def __init__(
        self,
        data_dir: str,
        episodes_per_context: int = 4,
        c: int = 5,
        batch_size: int = 16,
        seed: int = 0,
        num_workers: int = 0,
        n_test_tasks: int | None = None,
        test_batch_size: int = 1,
        order: str = "return",
        min_episodes_per_context: int | None = None,
        episode_blocks: bool = False,
    ):
        super().__init__()
        where = "DMHDataModule"
        if not isinstance(data_dir, (str, Path)) or not str(data_dir):
            raise ConfigError(f"{where}.data_dir must be a directory path, got {data_dir!r}")
        self.data_dir = str(data_dir)
        self.episodes_per_context = check_int(
            where, "episodes_per_context", episodes_per_context, minimum=1
        )
        self.c = check_int(where, "c", c, minimum=1)
        self.batch_size = check_int(where, "batch_size", batch_size, minimum=1)
        self.seed = check_int(where, "seed", seed, minimum=0)
        self.num_workers = check_int(where, "num_workers", num_workers, minimum=0)
        if n_test_tasks is not None:
            n_test_tasks = check_int(where, "n_test_tasks", n_test_tasks, minimum=1)
        self.n_test_tasks = n_test_tasks
        self.test_batch_size = check_int(where, "test_batch_size", test_batch_size, minimum=1)
        self.order = check_choice(where, "order", order, ORDERS)
        if min_episodes_per_context is not None:
            min_episodes_per_context = check_int(
                where, "min_episodes_per_context", min_episodes_per_context, minimum=1,
                maximum=self.episodes_per_context,
            )  # fmt: skip
        self.min_episodes_per_context = min_episodes_per_context
        self.episode_blocks = bool(episode_blocks)
        self.histories: list[History] | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.histories is not None:
            return  # loaded once
        histories = load_histories(self.data_dir)  # ConfigError when there are none
        n = self.episodes_per_context
        short = [h.task for h in histories if h.num_episodes < n]
        if short:
            fewest = min(h.num_episodes for h in histories)
            raise ConfigError(
                f"DMHDataModule.episodes_per_context {n} exceeds the {fewest} episodes of some "
                f"histories under {self.data_dir!r} (tasks {short})"
            )
        self.histories = histories

    @property
    def state_dim(self) -> int:
        """Observation size of the histories (after ``setup``)."""
        if self.histories is None:
            raise RuntimeError("DMHDataModule: call setup() first")
        return int(self.histories[0].observations[0].shape[1])

    def train_dataloader(self) -> DataLoader:
        if self.histories is None:
            self.setup("fit")
        stream = ContextStream(
            self.histories, self.episodes_per_context, self.c, self.batch_size, self.seed,
            self.order, self.min_episodes_per_context, self.episode_blocks,
        )  # fmt: skip
        return DataLoader(
            stream,
            batch_size=None,  # the stream yields whole batches
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    @property
    def test_tasks(self) -> list:
        """The held-out tasks (after ``setup``): ``split_tasks(env, n_train, seed, n_test_tasks,
        **env_kwargs)`` with the env, options and split the histories record."""
        if self.histories is None:
            raise RuntimeError("DMHDataModule: call setup() first")
        first = self.histories[0]
        split = first.generation.get("split")
        if not split:
            raise ConfigError(
                f"DMHDataModule: the histories under {self.data_dir!r} record no training split; "
                "cannot tell the held-out test tasks"
            )
        _, test = split_tasks(
            first.env, split["n_train"], split["seed"], self.n_test_tasks, **first.env_kwargs
        )
        return test

    def test_dataloader(self) -> DataLoader:
        """Indices into `test_tasks`, ``test_batch_size`` per batch (``[b]`` int64)."""
        if self.histories is None:
            self.setup("test")
        indices = torch.arange(len(self.test_tasks))
        return DataLoader(indices, batch_size=self.test_batch_size, shuffle=False)
