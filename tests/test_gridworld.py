"""The grid-world experiment: the world's rules, its tokens and categories, the accuracy split,
and the sweep's files, OOM handling, resume and argument checks (tiny settings throughout)."""

from __future__ import annotations

import csv
import json
import math
import os

import numpy as np
import pytest
import torch

from lightning_drama.checks import ConfigError
from lightning_drama.experiments import gridworld as gw

# Tiny widths so that every backbone builds and trains in well under a second.
TINY = ["--width", "mamba2=16", "--width", "mamba=16", "--width", "transformer=16"]
TINY += ["--width", "gru=16", "--updates", "3", "--eval-tokens", "208", "--progress-seconds", "0"]


def cell(row: int, col: int) -> int:
    return row * gw.SIDE + col


def decode(frame: np.ndarray) -> tuple[int, int]:
    """grid tokens [25] -> (agent cell, goal cell)."""
    return int(np.flatnonzero(frame == gw.AGENT)[0]), int(np.flatnonzero(frame == gw.GOAL)[0])


# --------------------------------------------------------------------------------- the world


def test_moves_and_walls():
    north, south, east, west = range(4)
    corner = np.array([cell(1, 1)] * 4)
    moved = gw.move(corner, np.array([north, south, east, west]))
    assert moved.tolist() == [cell(1, 1), cell(2, 1), cell(1, 2), cell(1, 1)]  # walls: stay
    centre = np.array([cell(2, 2)] * 4)
    moved = gw.move(centre, np.array([north, south, east, west]))
    assert moved.tolist() == [cell(1, 2), cell(3, 2), cell(2, 3), cell(2, 1)]
    far = np.array([cell(3, 3)] * 4)
    assert gw.move(far, np.array([north, south, east, west])).tolist() == [
        cell(2, 3), cell(3, 3), cell(3, 3), cell(3, 2),
    ]  # fmt: skip


def test_render_layout():
    grid = gw.render(np.array([cell(1, 1)]), np.array([cell(3, 2)]))[0]
    assert grid.shape == (25,)
    outer = [i for i in range(25) if i not in set(gw.CENTRAL.tolist())]
    assert len(outer) == 16 and (grid[outer] == gw.WALL).all()
    assert grid[cell(1, 1)] == gw.AGENT and grid[cell(3, 2)] == gw.GOAL
    assert (grid == gw.EMPTY).sum() == 7


def test_reaching_the_goal_places_both_anew():
    rng = np.random.default_rng(0)
    n = 2000
    agent = np.full(n, cell(2, 2))
    goal = np.full(n, cell(2, 3))
    east = np.full(n, 2)
    new_agent, new_goal, reached = gw.step(rng, agent, goal, east)
    assert reached.all()
    assert (new_agent != new_goal).all()
    central = set(gw.CENTRAL.tolist())
    assert set(new_agent.tolist()) == central and set(new_goal.tolist()) == central
    # A move that misses the goal keeps it and moves the agent.
    agent2, goal2, reached2 = gw.step(rng, agent[:1], goal[:1], np.array([0]))
    assert not reached2[0] and agent2[0] == cell(1, 2) and goal2[0] == cell(2, 3)


def test_sequences_follow_the_rules():
    tokens, category = gw.generate(np.random.default_rng(1), 8, 40)
    assert tokens.shape == category.shape == (8, 40 * 26)
    assert tokens.dtype == np.int64 and tokens.min() >= 0 and tokens.max() < gw.VOCAB
    frames = tokens.reshape(8, 40, 26)
    cats = category.reshape(8, 40, 26)
    assert ((frames[:, :, 25] >= 4) & (frames[:, :, 25] <= 7)).all()  # the action token
    assert (frames[:, :, :25] < 4).all()
    assert (cats[:, :, 25] == gw.ACTION).all()
    resets = 0
    for b in range(8):
        for t in range(40):
            grid = frames[b, t, :25]
            assert (grid == gw.AGENT).sum() == 1 and (grid == gw.GOAL).sum() == 1
            assert (grid[gw.CENTRAL] != gw.WALL).all()
            walls = np.setdiff1d(np.arange(25), gw.CENTRAL)
            assert (grid[walls] == gw.WALL).all() and (cats[b, t, walls] == gw.WALL_CELL).all()
            if t == 0:
                assert (cats[b, t, gw.CENTRAL] == gw.FRESH).all()
                continue
            agent, goal = decode(frames[b, t - 1, :25])
            action = frames[b, t - 1, 25] - gw.ACTION_TOKEN
            moved = int(gw.move(np.array([agent]), np.array([action]))[0])
            if moved == goal:  # reached: a new placement, unpredictable
                resets += 1
                assert (cats[b, t, gw.CENTRAL] == gw.FRESH).all()
            else:  # a normal move: this frame follows from the last one and the action
                assert decode(grid) == (moved, goal)
                assert (cats[b, t, gw.CENTRAL] == gw.HISTORY).all()
    assert resets > 0


def test_categories_of_a_hand_built_case():
    fresh = np.array([[True, False, True]])
    category = gw.categorize(fresh).reshape(3, 26)
    for t, expected in enumerate((gw.FRESH, gw.HISTORY, gw.FRESH)):
        assert (category[t, gw.CENTRAL] == expected).all()
        assert category[t, 25] == gw.ACTION
        assert (category[t, :25] == gw.WALL_CELL).sum() == 16


def test_seeding_and_held_out_set():
    a = gw.generate(gw.train_rng(0, 4), 3, 4)
    b = gw.generate(gw.train_rng(0, 4), 3, 4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0], gw.generate(gw.train_rng(1, 4), 3, 4)[0])
    held = gw.held_out(0, 4, 3)
    assert np.array_equal(held[0], gw.held_out(0, 4, 3)[0])
    assert not np.array_equal(held[0], a[0])
    # No held-out sequence is among the first training batches.
    train = {s.tobytes() for s in gw.generate(gw.train_rng(0, 4), 200, 4)[0]}
    assert not any(s.tobytes() in train for s in held[0])


# -------------------------------------------------------------------------------- accuracy


def test_accuracy_split_on_a_hand_made_prediction():
    H, F, A, W = gw.HISTORY, gw.FRESH, gw.ACTION, gw.WALL_CELL
    target = np.array([[1, 1, 2, 1, 5, 0, 0, 3]])
    category = np.array([[H, H, H, F, A, W, W, F]])
    predicted = np.array([[1, 1, 1, 1, 4, 0, 1, 1]])
    counts = gw.category_counts(predicted, target, category)
    assert counts.tolist() == [[2, 3], [1, 2], [0, 1], [1, 2]]
    acc = gw.accuracies(counts)
    assert acc["history"] == pytest.approx(2 / 3)
    assert acc["fresh"] == pytest.approx(1 / 2)
    assert acc["action"] == 0 and acc["wall"] == pytest.approx(1 / 2)
    assert acc["all"] == pytest.approx(3 / 6)  # walls left out
    assert math.isnan(gw.accuracies(np.zeros((4, 2), dtype=np.int64))["history"])


def test_copy_baseline():
    tokens, category = gw.generate(np.random.default_rng(2), 16, 30)
    baseline = gw.copy_baseline(tokens, category)
    assert 0.78 < baseline < 0.95  # between "always empty" and perfect


def test_out_of_memory_errors_are_recognised():
    assert gw.is_out_of_memory(MemoryError())
    assert gw.is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: ..."))
    assert gw.is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert not gw.is_out_of_memory(RuntimeError("shape mismatch"))
    assert not gw.is_out_of_memory(ValueError("out of memory"))


def test_model_is_a_lightning_module():
    model = gw.GridWorldModel("mamba2", 16, 1)
    tokens = torch.from_numpy(gw.generate(np.random.default_rng(0), 2, 3)[0])
    assert model(tokens).shape == (2, 78, gw.VOCAB)
    assert model.predict_tokens(tokens).shape == (2, 77)
    loss = model.training_step(tokens, 0)
    assert loss.ndim == 0 and math.isfinite(loss.item())
    assert isinstance(model.configure_optimizers(), torch.optim.AdamW)


# ------------------------------------------------------------------------------- the sweep


def _rows(out) -> list[dict[str, str]]:
    with open(os.path.join(out, "results.csv")) as file:
        return list(csv.DictReader(file))


def _read(out, name: str) -> str:
    with open(os.path.join(out, name)) as file:
        return file.read()


def test_tiny_sweep_of_every_backbone_writes_its_files(tmp_path, capsys):
    out = str(tmp_path / "run")
    args = [*TINY, "--backbones", *gw.BACKBONES, "--frames", "4", "2"]
    code = gw.main([*args, "--tokens-per-update", "208", "--isolation", "none", "--out", out])
    assert code == 0
    for name in ("results.csv", "results.md", "results.json", "gridworld.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0
    rows = _rows(out)
    assert [(r["backbone"], int(r["frames"])) for r in rows] == [
        (kind, frames) for kind in gw.BACKBONES for frames in (2, 4)
    ]
    for r in rows:
        assert r["status"] == "ok", r
        assert int(r["updates_done"]) == 3 and int(r["tokens"]) == 26 * int(r["frames"])
        assert int(r["batch"]) == 208 // int(r["tokens"])
        assert 0 <= float(r["acc_history"]) <= 1 and float(r["ms_per_update"]) > 0
        assert int(r["params"]) > 0 and int(r["timed_updates"]) == 2
    table = _read(out, "results.md")
    assert "| mamba2 | 2 | 52 |" in table and "acc_history" in table
    meta = json.loads(_read(out, "results.json"))
    assert meta["finished"] and len(meta["results"]) == len(rows)
    assert meta["hardware"]["cores"] >= 1 and meta["versions"]["torch"] == torch.__version__
    assert meta["settings"]["frames"] == [2, 4] and meta["argv"][-1] == out
    assert "mamba2 T=2 update 3/3" in capsys.readouterr().err


def test_default_widths_match_parameter_counts():
    settings = {"widths": gw.DEFAULT_WIDTHS, "layers": gw.DEFAULT_LAYERS, "heads": 8, "lr": 3e-3}
    counts = [gw.count_parameters(gw.build_model(settings, k, 16)) for k in gw.BACKBONES]
    assert max(counts) <= 1.15 * min(counts), counts


def test_out_of_memory_in_a_child_is_reported_and_longer_lengths_skipped(tmp_path):
    # 0.1 GiB: the Transformer's 4 x 8 x 832^2 attention scores at T=32 do not fit, T=2 does.
    out = str(tmp_path / "oom")
    code = gw.main(
        [*TINY, "--backbones", "transformer", "--frames", "2", "32", "64", "--out", out,
         "--tokens-per-update", "3328", "--memory-cap-gb", "0.1"]
    )  # fmt: skip
    assert code == 0
    rows = _rows(out)
    assert [r["status"] for r in rows] == ["ok", "OOM", "OOM"]
    assert float(rows[0]["peak_mib"]) > 0
    assert rows[1]["note"].startswith("training: could not allocate")
    assert rows[2]["note"] == "skipped after OOM at T=32"
    assert "OOM (skipped after OOM at T=32)" in _read(out, "results.md")


def test_resume_skips_done_configurations(tmp_path, monkeypatch):
    out = str(tmp_path / "resume")
    base = [*TINY, "--backbones", "gru", "--tokens-per-update", "208", "--isolation", "none"]
    assert gw.main([*base, "--frames", "2", "--out", out]) == 0
    ran = []
    real = gw.run_config
    monkeypatch.setattr(gw, "run_config", lambda s, k, f: ran.append((k, f)) or real(s, k, f))
    assert gw.main([*base, "--frames", "2", "4", "--out", out, "--resume"]) == 0
    assert ran == [("gru", 4)]
    assert [int(r["frames"]) for r in _rows(out)] == [2, 4]
    # Other settings than those of the results: refused.
    assert gw.main([*base, "--frames", "2", "--out", out, "--resume", "--lr", "1e-2"]) == 2
    # Without --resume the sweep starts over.
    ran.clear()
    assert gw.main([*base, "--frames", "2", "--out", out]) == 0
    assert ran == [("gru", 2)] and len(_rows(out)) == 1


def test_results_so_far_survive_an_interrupt(tmp_path, monkeypatch):
    out = str(tmp_path / "stop")
    real = gw.run_config

    def stop_at_four(settings, kind, frames):
        if frames == 4:
            raise KeyboardInterrupt
        return real(settings, kind, frames)

    monkeypatch.setattr(gw, "run_config", stop_at_four)
    args = [*TINY, "--backbones", "mamba2", "--frames", "2", "4", "--tokens-per-update", "208"]
    assert gw.main([*args, "--isolation", "none", "--out", out]) == 130
    assert [r["frames"] for r in _rows(out)] == ["2"]
    assert not json.loads(_read(out, "results.json"))["finished"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--backbones", "lstm"], "unknown backbone 'lstm'"),
        (["--frames", "0"], "--frames[0] must be >= 1"),
        (["--updates", "0"], "--updates must be >= 1"),
        (["--frames", "16", "--tokens-per-update", "100"], "--tokens-per-update must hold"),
        (["--width", "gru"], "--width must be KIND=N"),
        (["--width", "lstm=3"], "--width must be KIND=N"),
        (["--memory-cap-gb", "-1"], "--memory-cap-gb must be >= 0"),
        (["--max-seconds-per-config", "0"], "--max-seconds-per-config must be > 0"),
    ],
)
def test_bad_arguments_are_refused(tmp_path, capsys, args, message):
    assert gw.main([*args, "--out", str(tmp_path / "bad")]) == 2
    assert message in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "bad")


def test_bad_argument_types_exit_like_argparse():
    with pytest.raises(SystemExit) as exit_info:
        gw.main(["--frames", "many"])
    assert exit_info.value.code == 2


def test_settings_errors_are_config_errors():
    args = gw.build_parser().parse_args(["--frames", "4", "--tokens-per-update", "10"])
    with pytest.raises(ConfigError):
        gw.settings_of(args)
