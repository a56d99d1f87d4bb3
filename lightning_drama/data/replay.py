"""Replay buffer: preallocated ring storage and Dynamic Frequency-Based Sampling (DFS).

Row t of a stream stores ``obs`` o_t, ``action`` a_t (taken after seeing o_t), ``reward`` r_t and
``terminated`` / ``truncated`` caused by a_t, and ``is_first`` (o_t starts an episode). After an
episode ends at row t, row t+1 holds the reset observation with ``is_first=True``.

With several environments each env writes its own contiguous stream of ``capacity // num_streams``
rows, so a window never mixes envs. Windows may cross episode boundaries (the model resets on
``is_first``) but never the write head of a full stream (oldest data next to the newest).

DFS (Drama, section "Dynamic Frequency-Based Sampling" of DESIGN.md) keeps per row
``n_i`` = times used as a world-model window start and ``m_i`` = times used as an imagination start:

- windows: p_i ∝ exp(-n_i / tau);
- imagination starts: m'_i = m_i * batch_size / imagine_batch,
  p_i ∝ exp(min(0, n_i - m'_i) / tau_img).

Only start indices are counted; overwriting a row resets its counts. Draws are without replacement
(Gumbel-top-k), falling back to with replacement while fewer valid starts exist than requested.

A memory-mapped replay also keeps, in ``written.npy``, how many rows each stream has written. A run
resumed from a checkpoint reopens the files the interrupted run went on writing after that
checkpoint; the count tells how many rows it wrote, and the rows of the checkpoint's replay they
overwrote (the oldest ones, once a stream wraps) are dropped instead of being sampled as if they
were older than the checkpoint.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

OBS_SHAPE = (64, 64, 3)
SAMPLING_MODES = ("dfs", "uniform")
# field -> (dtype, shape of one row)
FIELDS: dict[str, tuple[type, tuple[int, ...]]] = {
    "obs": (np.uint8, OBS_SHAPE),
    "action": (np.int64, ()),
    "reward": (np.float32, ()),
    "terminated": (np.bool_, ()),
    "truncated": (np.bool_, ()),
    "is_first": (np.bool_, ()),
}


class ReplayBuffer:
    """Ring buffer of ``capacity`` rows split into ``num_streams`` per-env streams, with DFS.

    Args:
        capacity: total rows (all streams); memory is about ``capacity * 12,288`` bytes of frames.
        num_streams: number of environments writing in parallel (one stream each).
        sampling: ``"dfs"`` (Drama) or ``"uniform"`` (the paper's ablation).
        tau: DFS temperature of the world-model windows.
        imagine_tau: DFS temperature of the imagination starts.
        imagine_count_scale: m' = m * this; Drama uses batch_size / imagine_batch = 16 / 1024.
        seed: seed of the sampling RNG.
        directory: when set, the arrays are memory-mapped ``.npy`` files in this directory.
        reopen: with ``directory``, open the existing files there (resuming a run) instead of
            creating new ones; their shapes must match.
    """

    def __init__(
        self,
        capacity: int,
        num_streams: int = 1,
        sampling: str = "dfs",
        tau: float = 10.0,
        imagine_tau: float = 10.0,
        imagine_count_scale: float = 16 / 1024,
        seed: int = 0,
        directory: str | None = None,
        reopen: bool = False,
    ):
        if sampling not in SAMPLING_MODES:
            raise ValueError(f"unknown sampling {sampling!r}; choose one of {SAMPLING_MODES}")
        if num_streams < 1 or capacity < num_streams:
            raise ValueError(
                f"capacity ({capacity}) must be at least num_streams ({num_streams}) >= 1"
            )
        self.capacity = capacity
        self.num_streams = num_streams
        self.stream_capacity = capacity // num_streams
        self.sampling = sampling
        self.tau = tau
        self.imagine_tau = imagine_tau
        self.imagine_count_scale = imagine_count_scale
        self.directory = directory
        rows = self.stream_capacity * num_streams  # capacity % num_streams rows stay unused
        self.data: dict[str, np.ndarray] = {}
        if directory is not None:
            os.makedirs(directory, exist_ok=True)
        for key, (dtype, shape) in FIELDS.items():
            if directory is None:
                self.data[key] = np.zeros((rows, *shape), dtype)
            else:
                path = os.path.join(directory, f"{key}.npy")
                if reopen:
                    self.data[key] = _reopen(path, dtype, (rows, *shape))
                else:
                    self.data[key] = np.lib.format.open_memmap(path, "w+", dtype, (rows, *shape))
        self.pos = np.zeros(num_streams, np.int64)  # next write row inside each stream
        self.size = np.zeros(num_streams, np.int64)  # valid rows inside each stream, up to pos
        self.written = np.zeros(num_streams, np.int64)  # rows ever written by each stream
        # On disk next to the arrays, updated with every row: what the files hold (-1: unknown,
        # a replay directory from before this file existed).
        self._written_on_disk: np.ndarray | None = None
        if directory is not None:
            self._written_on_disk = _written_file(directory, reopen, num_streams)
        self.n_counts = np.zeros(rows, np.int64)  # times used as a window start
        self.m_counts = np.zeros(rows, np.int64)  # times used as an imagination start
        self.rng = np.random.default_rng(seed)

    @property
    def nbytes(self) -> int:
        """Bytes held by the stored arrays and the DFS counts."""
        arrays = [*self.data.values(), self.n_counts, self.m_counts]
        return int(sum(a.nbytes for a in arrays))

    def __len__(self) -> int:
        return int(self.size.sum())

    # ---- writing -------------------------------------------------------------------------------

    def add(
        self,
        obs: np.ndarray,
        action: np.ndarray,
        reward: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
        is_first: np.ndarray,
    ) -> None:
        """Append one row to every stream; each argument has a leading dim of ``num_streams``."""
        rows = np.arange(self.num_streams) * self.stream_capacity + self.pos
        if self._written_on_disk is not None:
            # Counted before the row is written: a crash in between may drop one row on resume,
            # never keep one that changed.
            self._written_on_disk[:] = self.written + 1
        values = (obs, action, reward, terminated, truncated, is_first)
        for key, value in zip(FIELDS, values, strict=True):
            self.data[key][rows] = value
        self.n_counts[rows] = 0
        self.m_counts[rows] = 0
        self.pos = (self.pos + 1) % self.stream_capacity
        self.size = np.minimum(self.size + 1, self.stream_capacity)
        self.written += 1

    # ---- sampling ------------------------------------------------------------------------------

    def valid_starts(self, length: int) -> np.ndarray:
        """Global row indices that start a fully written window of ``length`` rows. [S] int64"""
        if length > self.stream_capacity:
            raise ValueError(
                f"window length {length} is longer than the replay stream capacity "
                f"{self.stream_capacity} (capacity {self.capacity} / {self.num_streams} envs)"
            )
        starts = []
        for s in range(self.num_streams):
            count = int(self.size[s]) - length + 1
            if count <= 0:
                continue
            # the valid rows end at the write position (a full stream: they start there too)
            oldest = (self.pos[s] - self.size[s]) % self.stream_capacity
            local = (oldest + np.arange(count)) % self.stream_capacity
            starts.append(s * self.stream_capacity + local)
        if not starts:
            return np.zeros(0, np.int64)
        return np.concatenate(starts)

    def window_probs(self, starts: np.ndarray) -> np.ndarray:
        """Probability of each valid start to be drawn as a world-model window start. [S] float64"""
        if self.sampling == "uniform":
            return np.full(len(starts), 1.0 / len(starts))
        return _softmax(self._window_logits(starts))

    def start_probs(self, starts: np.ndarray) -> np.ndarray:
        """Probability of each valid start to be drawn as an imagination start. [S] float64"""
        if self.sampling == "uniform":
            return np.full(len(starts), 1.0 / len(starts))
        return _softmax(self._start_logits(starts))

    # float32 logits: sampling 100k starts per batch is memory-bound, and 24 bits are plenty
    def _window_logits(self, starts: np.ndarray) -> np.ndarray:
        return self.n_counts[starts].astype(np.float32) * np.float32(-1.0 / self.tau)

    def _start_logits(self, starts: np.ndarray) -> np.ndarray:
        m_scaled = self.m_counts[starts].astype(np.float32) * np.float32(self.imagine_count_scale)
        score = np.minimum(self.n_counts[starts].astype(np.float32) - m_scaled, 0.0)
        return score * np.float32(1.0 / self.imagine_tau)

    def sample(self, batch: int, length: int) -> dict[str, np.ndarray]:
        """World-model windows: each field ``[batch, length, ...]``; counts n of the starts += 1."""
        starts = self.valid_starts(length)
        logits = self._window_logits(starts) if self.sampling == "dfs" else None
        chosen = starts[self._draw(logits, len(starts), batch, length)]
        np.add.at(self.n_counts, chosen, 1)
        return self._gather(chosen, length)

    def valid_imagination_starts(self, context: int) -> np.ndarray:
        """`valid_starts` without the contexts whose last action ended the episode: imagination
        continues from the last context step, and a terminal step has no successor. [S] int64"""
        starts = self.valid_starts(context)
        stream_offset = starts - starts % self.stream_capacity
        last = stream_offset + (starts - stream_offset + context - 1) % self.stream_capacity
        return starts[~self.data["terminated"][last]]

    def sample_starts(self, n: int, context: int) -> dict[str, np.ndarray]:
        """Imagination starts: each field ``[n, context, ...]``; counts m of the starts += 1.
        A context never ends with a terminal step (see `valid_imagination_starts`)."""
        starts = self.valid_imagination_starts(context)
        logits = self._start_logits(starts) if self.sampling == "dfs" else None
        chosen = starts[self._draw(logits, len(starts), n, context)]
        np.add.at(self.m_counts, chosen, 1)
        return self._gather(chosen, context)

    def _draw(self, logits: np.ndarray | None, num_valid: int, k: int, length: int) -> np.ndarray:
        """k positions in [0, num_valid) drawn ∝ exp(logits) (uniform when None)."""
        if num_valid == 0:
            raise ValueError(
                f"cannot sample windows of {length} rows: the replay holds only "
                f"{self.size.tolist()} rows per stream; collect more steps first"
            )
        if k > num_valid:  # early in training: not enough distinct starts yet
            p = None if logits is None else _softmax(logits)
            return self.rng.choice(num_valid, size=k, replace=True, p=p)
        if logits is None:
            return self.rng.choice(num_valid, size=k, replace=False)
        # Gumbel-top-k: the k largest logits - log(Exp(1)) are a draw without replacement
        # proportional to exp(logits)
        keys = logits - np.log(self.rng.standard_exponential(num_valid, dtype=np.float32))
        if k == num_valid:
            return np.argsort(-keys)
        top = np.argpartition(-keys, k - 1)[:k]
        return top[np.argsort(-keys[top])]

    def _gather(self, starts: np.ndarray, length: int) -> dict[str, np.ndarray]:
        stream_offset = starts - starts % self.stream_capacity
        local = (starts - stream_offset)[:, None] + np.arange(length)  # [K, L]
        rows = stream_offset[:, None] + local % self.stream_capacity  # [K, L]
        out = {}
        for key, array in self.data.items():
            # fancy indexing over a 2-D view is a plain row memcpy (much faster than 4-D)
            flat = array.reshape(len(array), -1)[rows.ravel()]
            out[key] = flat.reshape(*rows.shape, *array.shape[1:])
        return out

    # ---- state ---------------------------------------------------------------------------------

    def state_dict(self, include_data: bool = True) -> dict[str, Any]:
        """Counters, DFS counts and RNG state; the stored arrays too when ``include_data``."""
        state: dict[str, Any] = {
            "capacity": self.capacity,
            "num_streams": self.num_streams,
            "pos": self.pos.copy(),
            "size": self.size.copy(),
            "written": self.written.copy(),
            "n_counts": self.n_counts.copy(),
            "m_counts": self.m_counts.copy(),
            "rng": self.rng.bit_generator.state,
        }
        if include_data:
            state["data"] = {key: np.array(array) for key, array in self.data.items()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; without ``"data"`` the arrays are left as they are."""
        if (state["capacity"], state["num_streams"]) != (self.capacity, self.num_streams):
            raise ValueError(
                f"replay state has capacity {state['capacity']} x {state['num_streams']} streams, "
                f"this buffer {self.capacity} x {self.num_streams}"
            )
        self.pos[:] = state["pos"]
        self.size[:] = state["size"]
        self.n_counts[:] = state["n_counts"]
        self.m_counts[:] = state["m_counts"]
        self.rng.bit_generator.state = state["rng"]
        for key, array in state.get("data", {}).items():
            self.data[key][:] = array
        if "written" in state:  # checkpoints from before the count have none
            self.written[:] = state["written"]
            if self._written_on_disk is not None:
                self._drop_rows_written_after_checkpoint()

    def _drop_rows_written_after_checkpoint(self) -> None:
        """Reopened files may hold rows the interrupted run wrote after the checkpoint being
        restored: first into the free rows of a stream, then over its oldest valid rows. Those
        oldest rows are no longer what the checkpoint saw, so they leave the valid range."""
        on_disk = np.asarray(self._written_on_disk)
        after = np.where(on_disk >= 0, on_disk - self.written, 0).clip(min=0)  # [streams]
        lost = np.clip(after - (self.stream_capacity - self.size), 0, self.size)
        if lost.any():
            log.warning(
                "replay: the interrupted run wrote %s rows per stream after this checkpoint, "
                "over the %s oldest rows of its replay; those are dropped",
                after.tolist(), lost.tolist(),
            )  # fmt: skip
        self.size -= lost
        self._written_on_disk[:] = self.written

    def save(self, path: str) -> None:
        """Write the stored arrays as ``<path>/<field>.npy`` (counters go in :meth:`state_dict`)."""
        os.makedirs(path, exist_ok=True)
        for key, array in self.data.items():
            if isinstance(array, np.memmap) and _same_file(array.filename, path, key):
                array.flush()
            else:
                np.save(os.path.join(path, f"{key}.npy"), array)
        if self._written_on_disk is not None:
            self._written_on_disk.flush()

    def load(self, path: str) -> None:
        """Read arrays written by :meth:`save` into this buffer (same capacity and streams)."""
        for key, array in self.data.items():
            file = os.path.join(path, f"{key}.npy")
            if isinstance(array, np.memmap) and _same_file(array.filename, path, key):
                continue
            saved = np.load(file, mmap_mode="r")
            if saved.shape != array.shape or saved.dtype != array.dtype:
                raise ValueError(
                    f"{file} holds {saved.dtype} {saved.shape}, this buffer {array.dtype} "
                    f"{array.shape}: load into a buffer with the same capacity and num_streams"
                )
            array[:] = saved


def _reopen(path: str, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"replay file {path} is missing: the replay of the run being resumed lives next to its "
            "checkpoint (the run's replay/ directory); restore that directory or start a new run"
        )
    array = np.load(path, mmap_mode="r+")
    if array.shape != shape or array.dtype != np.dtype(dtype):
        raise ValueError(
            f"{path} holds {array.dtype} {array.shape}, expected {np.dtype(dtype)} {shape}: "
            "resume with the same data.capacity and data.num_envs as the original run"
        )
    return array


def _written_file(directory: str, reopen: bool, num_streams: int) -> np.ndarray:
    """The memory-mapped per-stream row count ``<directory>/written.npy``: [streams] int64."""
    path = os.path.join(directory, "written.npy")
    if reopen and os.path.exists(path):
        counts = np.load(path, mmap_mode="r+")
        if counts.shape != (num_streams,) or counts.dtype != np.int64:
            raise ValueError(
                f"{path} holds {counts.dtype} {counts.shape}, expected int64 ({num_streams},): "
                "resume with the same data.num_envs as the original run"
            )
        return counts
    counts = np.lib.format.open_memmap(path, "w+", np.int64, (num_streams,))
    counts[:] = -1 if reopen else 0  # reopening a replay from before the count: unknown
    return counts


def _softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64)
    w = np.exp(logits - logits.max())
    return w / w.sum()


def _same_file(filename: str | None, path: str, key: str) -> bool:
    target = os.path.join(path, f"{key}.npy")
    return filename is not None and os.path.exists(target) and os.path.samefile(filename, target)
