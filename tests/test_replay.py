import numpy as np
import pytest

from lightning_drama.data.replay import ReplayBuffer


def fill(replay: ReplayBuffer, steps: int, first_t: int = 0) -> None:
    """Row t of stream s gets action = 1000 * s + t and a frame filled with t % 256."""
    n = replay.num_streams
    for t in range(first_t, first_t + steps):
        replay.add(
            obs=np.full((n, 64, 64, 3), t % 256, np.uint8),
            action=1000 * np.arange(n) + t,
            reward=np.full(n, t, np.float32),
            terminated=np.zeros(n, bool),
            truncated=np.zeros(n, bool),
            is_first=np.full(n, t == 0),
        )


def test_windows_before_wrap_only_use_written_rows():
    replay = ReplayBuffer(10, seed=0)
    fill(replay, 4)
    assert replay.valid_starts(3).tolist() == [0, 1]
    for _ in range(20):
        batch = replay.sample(2, 3)
        assert batch["action"].shape == (2, 3) and batch["obs"].shape == (2, 3, 64, 64, 3)
        assert sorted(batch["action"][:, 0].tolist()) == [0, 1]  # without replacement
        np.testing.assert_array_equal(np.diff(batch["action"], axis=1), 1)
        np.testing.assert_array_equal(batch["obs"][..., 0, 0, 0], batch["action"])
        np.testing.assert_array_equal(batch["reward"], batch["action"].astype(np.float32))
    with pytest.raises(ValueError, match="holds only"):
        replay.sample(1, 5)
    with pytest.raises(ValueError, match="longer than the replay"):
        replay.sample(1, 11)


def test_wrap_around_never_crosses_the_write_head():
    replay = ReplayBuffer(5, seed=0)
    fill(replay, 7)  # rows hold t = 5, 6, 2, 3, 4; oldest t = 2 sits at the write position 2
    assert replay.pos.tolist() == [2] and len(replay) == 5
    assert replay.valid_starts(3).tolist() == [2, 3, 4]
    seen = set()
    for _ in range(50):
        batch = replay.sample(3, 3)
        seen.update(tuple(w) for w in batch["action"].tolist())
    # windows may wrap over the array end (4 -> 0), never over the head (t = 6 next to t = 2)
    assert seen == {(2, 3, 4), (3, 4, 5), (4, 5, 6)}
    starts = replay.sample_starts(100, 5)  # only one valid start: drawn with replacement
    np.testing.assert_array_equal(starts["action"], np.tile(np.arange(2, 7), (100, 1)))


def test_streams_never_mix_and_overwrite_resets_counts():
    replay = ReplayBuffer(9, num_streams=2, seed=0)  # 4 rows per stream, 1 row unused
    assert replay.stream_capacity == 4 and replay.data["obs"].shape[0] == 8
    fill(replay, 6)
    for _ in range(20):
        window = replay.sample(4, 3)["action"]
        stream = window // 1000
        assert (stream == stream[:, :1]).all()
        np.testing.assert_array_equal(np.diff(window % 1000, axis=1), 1)
        assert (window % 1000 >= 2).all()  # t = 0, 1 were overwritten
    assert replay.n_counts.sum() == 80
    replay.m_counts[:] = 7
    fill(replay, 1, first_t=6)  # overwrites row 2 of each stream
    assert replay.n_counts[[2, 6]].tolist() == [0, 0] and replay.m_counts[[2, 6]].tolist() == [0, 0]
    assert replay.m_counts.sum() == 7 * 6


def test_dfs_probabilities_follow_the_formulas():
    replay = ReplayBuffer(3, sampling="dfs", tau=10.0, imagine_tau=10.0, imagine_count_scale=1 / 64)
    fill(replay, 3)
    starts = replay.valid_starts(1)
    replay.n_counts[:] = [0, 10, 20]
    w = np.exp([0.0, -1.0, -2.0])
    np.testing.assert_allclose(replay.window_probs(starts), w / w.sum())
    # m' = m / 64; score = min(0, n - m') / 10
    replay.n_counts[:] = [0, 10, 0]
    replay.m_counts[:] = [0, 64 * 30, 64 * 16]
    w = np.exp([0.0, -2.0, -1.6])
    np.testing.assert_allclose(replay.start_probs(starts), w / w.sum())
    uniform = ReplayBuffer(3, sampling="uniform")
    fill(uniform, 3)
    np.testing.assert_allclose(uniform.window_probs(starts), [1 / 3] * 3)


@pytest.mark.parametrize("sampling", ["dfs", "uniform"])
@pytest.mark.parametrize("kind", ["window", "start"])
def test_sampling_frequencies_match_the_formulas(sampling, kind):
    """20,000 single draws from fixed counts; chi-square (11 dof) below 31.3 (p = 0.001)."""
    replay = ReplayBuffer(16, sampling=sampling, seed=123)
    fill(replay, 16)
    n_counts = np.arange(16) * 3
    m_counts = (np.arange(16)[::-1] * 160).astype(np.int64)  # m' = m * 16 / 1024 = 2.5 * (15 - i)
    length = 5
    starts = replay.valid_starts(length)  # 12 starts
    replay.n_counts[:], replay.m_counts[:] = n_counts, m_counts
    probs = replay.window_probs(starts) if kind == "window" else replay.start_probs(starts)
    draws = 20_000
    hits = np.zeros(16, np.int64)
    for _ in range(draws):
        replay.n_counts[:], replay.m_counts[:] = n_counts, m_counts  # one draw's distribution
        batch = replay.sample(1, length) if kind == "window" else replay.sample_starts(1, length)
        hits[batch["action"][0, 0]] += 1
    counts = replay.n_counts if kind == "window" else replay.m_counts
    assert counts.sum() == (n_counts if kind == "window" else m_counts).sum() + 1
    expected = draws * probs
    chi2 = ((hits[starts] - expected) ** 2 / expected).sum()
    assert hits[12:].sum() == 0  # starts 12..15 leave no room for 5 rows
    assert chi2 < 31.3
    np.testing.assert_allclose(hits[starts] / draws, probs, atol=0.01)
    if sampling == "dfs":
        assert probs.max() / probs.min() > 5  # the test can tell DFS from uniform


def test_dfs_batches_are_without_replacement_and_counted():
    replay = ReplayBuffer(64, seed=0)
    fill(replay, 64)
    replay.n_counts[:32] = 1000  # effectively never drawn again
    batch = replay.sample(16, 8)
    first = batch["action"][:, 0]
    assert len(set(first.tolist())) == 16 and (first >= 32).all()
    assert replay.n_counts[first].tolist() == [1] * 16
    starts = replay.sample_starts(57, 8)  # all 57 valid starts, each once
    assert sorted(starts["action"][:, 0].tolist()) == list(range(57))
    assert replay.m_counts[:57].tolist() == [1] * 57


def test_unknown_sampling_is_rejected():
    with pytest.raises(ValueError, match="unknown sampling 'random'"):
        ReplayBuffer(8, sampling="random")


def _next_samples(replay: ReplayBuffer) -> list[dict[str, np.ndarray]]:
    out = []
    for _ in range(3):
        out.append(replay.sample(4, 6))
        out.append(replay.sample_starts(8, 3))
    return out


def _assert_same(a: list[dict], b: list[dict]) -> None:
    for x, y in zip(a, b, strict=True):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


@pytest.mark.parametrize("memmap", [False, True])
def test_state_roundtrip_reproduces_next_samples(tmp_path, memmap):
    directory = str(tmp_path / "live") if memmap else None
    replay = ReplayBuffer(40, num_streams=2, seed=5, directory=directory)
    fill(replay, 30)  # both streams wrapped
    _next_samples(replay)
    state = replay.state_dict()
    light = replay.state_dict(include_data=False)
    assert "data" not in light
    replay.save(str(tmp_path / "saved"))
    expected = _next_samples(replay)

    restored = ReplayBuffer(40, num_streams=2, seed=999)
    restored.load_state_dict(state)
    _assert_same(_next_samples(restored), expected)

    from_files = ReplayBuffer(40, num_streams=2, seed=999)
    from_files.load_state_dict(light)
    from_files.load(str(tmp_path / "saved"))
    _assert_same(_next_samples(from_files), expected)

    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(20, num_streams=2).load_state_dict(light)
    with pytest.raises(ValueError, match="same data.num_envs and data.capacity"):
        ReplayBuffer(20, num_streams=2).load(str(tmp_path / "saved"))


def test_imagination_contexts_never_end_with_a_terminal_step():
    # Episodes of 5 steps in a wrapped two-env replay: the rows where an action ended an episode
    # may sit anywhere in a context except its last step (imagination continues from there).
    replay = ReplayBuffer(2 * 12, num_streams=2, seed=0)
    for t in range(30):
        replay.add(
            obs=np.zeros((2, 64, 64, 3), np.uint8),
            action=1000 * np.arange(2) + t,
            reward=np.zeros(2, np.float32),
            terminated=np.array([t % 5 == 4, t % 7 == 6]),
            truncated=np.zeros(2, bool),
            is_first=np.array([t % 5 == 0, t % 7 == 0]),
        )
    starts = replay.valid_imagination_starts(3)
    assert 0 < len(starts) < len(replay.valid_starts(3))
    for _ in range(10):
        context = replay.sample_starts(8, 3)
        assert not context["terminated"][:, -1].any()
        assert context["terminated"][:, :-1].any()  # terminal steps earlier in a context are fine


@pytest.mark.parametrize(
    ("before", "after", "expected_t"),
    [
        (12, 0, list(range(2, 12))),  # resumed from the latest state: nothing lost
        (12, 3, list(range(5, 12))),  # a full stream: the rows of t = 2, 3, 4 were overwritten
        (4, 5, [0, 1, 2, 3]),  # the interrupted run only used free rows
        (4, 8, [2, 3]),  # 6 free rows, then over the rows of t = 0, 1
        (12, 25, []),  # over the whole stream
    ],
)
def test_resume_drops_the_rows_the_interrupted_run_overwrote(tmp_path, before, after, expected_t):
    directory = str(tmp_path / "replay")
    replay = ReplayBuffer(10, seed=0, directory=directory)
    fill(replay, before)
    checkpoint = replay.state_dict(include_data=False)
    fill(replay, after, first_t=before)  # the run goes on after its checkpoint, then dies
    del replay

    resumed = ReplayBuffer(10, seed=0, directory=directory, reopen=True)
    resumed.load_state_dict(checkpoint)
    assert resumed.data["action"][resumed.valid_starts(1)].tolist() == expected_t  # oldest first
    assert len(resumed) == len(expected_t)
    fill(resumed, 2, first_t=100)  # new rows extend the valid range at its head
    timeline = [*expected_t, 100, 101][-10:]  # (a full stream loses its 2 oldest rows)
    assert resumed.data["action"][resumed.valid_starts(1)].tolist() == timeline
    assert resumed.written.tolist() == [before + 2]
    for _ in range(10):  # windows run through consecutive rows of this timeline
        window = resumed.sample(1, 2)["action"][0].tolist()
        assert window in [timeline[i : i + 2] for i in range(len(timeline) - 1)]


def test_resume_with_several_streams_and_from_an_older_replay(tmp_path):
    directory = str(tmp_path / "replay")
    replay = ReplayBuffer(20, num_streams=2, seed=0, directory=directory)
    fill(replay, 13)  # 10 rows per stream: both full, oldest t = 3
    checkpoint = replay.state_dict(include_data=False)
    fill(replay, 4, first_t=13)
    del replay

    resumed = ReplayBuffer(20, num_streams=2, seed=0, directory=directory, reopen=True)
    resumed.load_state_dict(checkpoint)
    rows = resumed.data["action"][resumed.valid_starts(1)].tolist()
    assert rows == list(range(7, 13)) + [1000 + t for t in range(7, 13)]
    del resumed

    # A replay directory and checkpoint from before the row count: nothing to go by, all kept.
    (tmp_path / "replay" / "written.npy").unlink()
    old = ReplayBuffer(20, num_streams=2, seed=0, directory=directory, reopen=True)
    old.load_state_dict({k: v for k, v in checkpoint.items() if k != "written"})
    assert len(old) == 20
    old.load_state_dict(checkpoint)  # the file says "unknown" (-1): nothing dropped either
    assert len(old) == 20

    with pytest.raises(ValueError, match=r"written.npy holds int64 \(2,\), expected int64 \(4,\)"):
        ReplayBuffer(20, num_streams=4, seed=0, directory=directory, reopen=True)
