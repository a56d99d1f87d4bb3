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

Next to the arrays, ``written.npy`` counts the rows each stream has written: a memory-mapped
replay updates it with every row, :meth:`ReplayBuffer.save` writes it with the arrays. The files
of a checkpoint may hold rows written after it (the run went on, or died while saving its next
checkpoint); the count tells how many, and the rows of the checkpoint's replay they overwrote
(the oldest ones, once a stream wraps) are dropped instead of being sampled as if they were older
than the checkpoint.

The files are trusted only as far as they can be checked: before a file is opened, its header must
give the expected dtype and shape and its size must be what they imply (numpy maps a file cut
short anyway, reading zeros past its end, and in mode ``r+`` extends it with them). A save writes
each file whole or not at all (a temporary file, synced, renamed), and a resumed run writes into
a copy (:func:`copy_files`), never into the files of the checkpoint it resumes.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from typing import IO, Any

import numpy as np

from lightning_drama.checks import ConfigError

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
WRITTEN = "written"  # <directory>/written.npy: rows written per stream, [streams] int64
# What a damaged or missing replay file leaves a user to do.
REMEDY = (
    "restore the run's replay/ directory (from a backup, or the copy the run directory was made "
    "from), resume from another checkpoint whose replay is whole, or start a new run"
)


class ReplayFileError(ConfigError):
    """A replay file is missing, damaged, or not the one a checkpoint expects (the CLI reports
    it as one `error:` line)."""


def replay_files(capacity: int, num_streams: int) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    """Field (and ``written``) -> (dtype, shape) of the ``<field>.npy`` files of such a buffer."""
    rows = (capacity // num_streams) * num_streams  # capacity % num_streams rows stay unused
    files = {key: (np.dtype(dtype), (rows, *shape)) for key, (dtype, shape) in FIELDS.items()}
    files[WRITTEN] = (np.dtype(np.int64), (num_streams,))
    return files


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
            creating new ones; each must have the expected dtype, shape and size, or a
            :class:`ReplayFileError` names it.
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
                self._drop_rows_written_after_checkpoint(np.array(self._written_on_disk))
                self._written_on_disk[:] = self.written

    def _drop_rows_written_after_checkpoint(self, on_disk: np.ndarray) -> None:
        """Files with ``on_disk`` rows written per stream ([streams], -1: unknown) may hold rows
        written after the checkpoint being restored: first into the free rows of a stream, then
        over its oldest valid rows. Those oldest rows are no longer what the checkpoint saw, so
        they leave the valid range."""
        after = np.where(on_disk >= 0, on_disk - self.written, 0).clip(min=0)  # [streams]
        lost = np.clip(after - (self.stream_capacity - self.size), 0, self.size)
        if lost.any():
            log.warning(
                "replay: the interrupted run wrote %s rows per stream after this checkpoint, "
                "over the %s oldest rows of its replay; those are dropped",
                after.tolist(), lost.tolist(),
            )  # fmt: skip
        self.size -= lost

    def save(self, path: str) -> None:
        """Write the stored arrays as ``<path>/<field>.npy`` and the rows written per stream as
        ``<path>/written.npy`` (the other counters go in :meth:`state_dict`).

        A memory-mapped buffer saving into its own files only flushes them. Otherwise each file
        is written whole or not at all (see `_write_atomically`), so a save killed midway leaves
        whole files, some of this save and the others of the previous one. The counts go first:
        with them on disk, a run resumed from the previous checkpoint knows which rows the newer
        files may have changed, and drops them (see :meth:`load`); every other row is the same in
        both saves.
        """
        os.makedirs(path, exist_ok=True)
        written = self.written if self._written_on_disk is None else self._written_on_disk
        for key, array in {WRITTEN: written, **self.data}.items():  # the counts first
            if isinstance(array, np.memmap) and _same_file(array.filename, path, key):
                array.flush()
                continue

            def write(f: IO[bytes], array: np.ndarray = array) -> None:
                np.lib.format.write_array(f, array, allow_pickle=False)

            _write_atomically(os.path.join(path, f"{key}.npy"), write)
        _sync_directory(path)

    def load(self, path: str) -> None:
        """Read the files of a saved replay (:meth:`save`, or the directory of a memory-mapped
        buffer) into this buffer, after :meth:`load_state_dict` restored the checkpoint they go
        with; they must be of a buffer of the same capacity and streams.

        Every file is checked before any is read (a :class:`ReplayFileError` names a missing or
        damaged one). As on reopening, the rows the files hold beyond the checkpoint's count
        (written after it) are not used, and the oldest rows they went over are dropped.
        """
        files = replay_files(self.capacity, self.num_streams)
        to_read = {}
        for key in files:
            file = os.path.join(path, f"{key}.npy")
            mine = self._written_on_disk if key == WRITTEN else self.data[key]
            if isinstance(mine, np.memmap) and _same_file(mine.filename, path, key):
                continue  # this buffer's own file
            if key == WRITTEN and not os.path.exists(file):
                continue  # a replay saved before the count: all its rows are kept
            to_read[key] = file
        for key, file in to_read.items():
            _check_file(file, *files[key])
        for key, file in to_read.items():
            if key == WRITTEN:
                self._drop_rows_written_after_checkpoint(np.load(file))
            else:
                self.data[key][:] = np.load(file, mmap_mode="r")


def copy_files(source: str, destination: str, capacity: int, num_streams: int) -> int:
    """Copy the replay files of ``source`` into ``destination``; returns the bytes copied.

    Every file is checked before any is copied (:class:`ReplayFileError`), and each copy is
    written whole or not at all. ``written.npy`` goes last: a run still writing ``source`` counts
    a row before it writes it, so the count copied covers every row in the frames copied.
    """
    files = replay_files(capacity, num_streams)
    paths = {key: os.path.join(source, f"{key}.npy") for key in files}
    if not os.path.exists(paths[WRITTEN]):  # a replay from before the count: all rows kept
        del paths[WRITTEN]
    for key, path in paths.items():
        _check_file(path, *files[key])
    os.makedirs(destination, exist_ok=True)
    for key, path in paths.items():

        def copy(f: IO[bytes], path: str = path) -> None:
            with open(path, "rb") as src:
                shutil.copyfileobj(src, f, 16 * 2**20)

        _write_atomically(os.path.join(destination, f"{key}.npy"), copy)
    _sync_directory(destination)
    return sum(os.path.getsize(path) for path in paths.values())


def _check_file(path: str, dtype: np.dtype, shape: tuple[int, ...]) -> None:
    """Raise a :class:`ReplayFileError` naming ``path`` unless it is a ``.npy`` file of ``dtype``
    and ``shape`` with exactly the bytes they take (a file cut short, or appended to, is not what
    was saved)."""
    if not os.path.isfile(path):
        raise ReplayFileError(f"replay file {path} is missing; {REMEDY}")
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                found_shape, fortran, found_dtype = np.lib.format.read_array_header_1_0(f)
            else:
                found_shape, fortran, found_dtype = np.lib.format.read_array_header_2_0(f)
            data_start = f.tell()
    except ValueError as error:
        raise ReplayFileError(
            f"replay file {path} is not a readable .npy file ({error}); {REMEDY}"
        ) from None
    if found_dtype != dtype or found_shape != shape or fortran:
        order = " (Fortran order)" if fortran else ""
        raise ReplayFileError(
            f"replay file {path} holds {found_dtype} {found_shape}{order}, expected {dtype} "
            f"{shape}: resume with the same data.num_envs and data.capacity as the original run"
        )
    size, expected = os.path.getsize(path), data_start + int(np.prod(shape)) * dtype.itemsize
    if size != expected:
        raise ReplayFileError(
            f"replay file {path} has {size:,} bytes where its header ({dtype} {shape}) needs "
            f"{expected:,}: it was cut short or changed after it was written; {REMEDY}"
        )


def _write_atomically(path: str, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` through ``<path>.tmp`` beside it, synced to disk and renamed over ``path``:
    a process killed meanwhile leaves the old ``path`` whole (and a stray ``.tmp`` file)."""
    temporary = path + ".tmp"
    with open(temporary, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)


def _sync_directory(path: str) -> None:
    """Make the renames in directory ``path`` durable (they live in the directory's entries)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _reopen(path: str, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
    _check_file(path, np.dtype(dtype), shape)
    return np.load(path, mmap_mode="r+")


def _written_file(directory: str, reopen: bool, num_streams: int) -> np.ndarray:
    """The memory-mapped per-stream row count ``<directory>/written.npy``: [streams] int64."""
    path = os.path.join(directory, f"{WRITTEN}.npy")
    if reopen and os.path.exists(path):
        return _reopen(path, np.int64, (num_streams,))
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
