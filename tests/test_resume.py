"""Resuming through the CLI: a resumed run is the run that was not interrupted, and a run
directory can be copied, moved or resumed from anywhere."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_cli import TINY, datamodule_state

from lightning_drama.cli import main

REPLAY_KEYS = ("obs", "action", "reward", "terminated", "truncated", "is_first")


def fit(*args: str) -> None:
    main(["fit", "--config", "debug.yaml", *TINY, *args])


def replay_rows(run_dir: Path, rows: int) -> dict[str, np.ndarray]:
    return {key: np.load(run_dir / "replay" / f"{key}.npy")[:rows] for key in REPLAY_KEYS}


def weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.parametrize("acting", ["reference", "posterior"])
def test_a_resumed_run_is_the_uninterrupted_run(tmp_path, monkeypatch, acting):
    """Fit to 40 env steps and resume to 70, against one run to 70: the same env steps, actions,
    replay rows, DFS counts and weights, bit for bit, in both acting modes (the reference's
    16-step window and our carried recurrent state are both part of the checkpoint)."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    fit("--data.total_env_steps=40", f"--model.acting={acting}")
    runs = tmp_path / "a" / "runs" / "debug"
    fit(
        "--data.total_env_steps=70",
        f"--model.acting={acting}",
        f"--ckpt_path={runs / 'version_0/checkpoints/last.ckpt'}",
    )
    monkeypatch.chdir(tmp_path / "b")
    fit("--data.total_env_steps=70", f"--model.acting={acting}")
    whole = tmp_path / "b" / "runs" / "debug" / "version_0"

    resumed_rows, whole_rows = replay_rows(runs / "version_0", 70), replay_rows(whole, 70)
    for key in REPLAY_KEYS:
        np.testing.assert_array_equal(resumed_rows[key], whole_rows[key], err_msg=key)
    resumed_ckpt = runs / "version_1" / "checkpoints" / "last.ckpt"
    whole_ckpt = whole / "checkpoints" / "last.ckpt"
    resumed_state, whole_state = datamodule_state(resumed_ckpt), datamodule_state(whole_ckpt)
    assert resumed_state["env_steps"] == whole_state["env_steps"] == 70
    torch.testing.assert_close(
        resumed_state["replay"]["n_counts"], whole_state["replay"]["n_counts"], rtol=0, atol=0
    )
    # One last.ckpt per run: written when the budget is reached, and since ModelCheckpoint saved
    # nothing else in these short runs, rewritten by it at the end of training (after the final
    # validation, which leaves the training RNG alone), not as a last-v1.ckpt beside it.
    for run_dir in (runs / "version_0", runs / "version_1", whole):
        assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["last.ckpt"]
    resumed_weights, whole_weights = weights(resumed_ckpt), weights(whole_ckpt)
    assert resumed_weights.keys() == whole_weights.keys()
    for name, value in whole_weights.items():
        torch.testing.assert_close(resumed_weights[name], value, rtol=0, atol=0, msg=name)


PERIODIC = """
trainer:
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {every_n_train_steps: 20, save_top_k: -1, save_last: true}
"""


def test_a_run_resumed_from_a_periodic_checkpoint_is_the_uninterrupted_run(
    tmp_path, monkeypatch, capsys
):
    """A checkpoint from the middle of the (endless) epoch: the same rows and weights as the run
    that went on, and the progress bar counts on from where the run was."""
    (tmp_path / "periodic.yaml").write_text(PERIODIC)
    monkeypatch.chdir(tmp_path)
    fit("--config=periodic.yaml", "--data.total_env_steps=70")
    whole = tmp_path / "runs" / "debug" / "version_0"
    copy = tmp_path / "copy" / "version_0"  # resumed in its own replay, compared with the whole
    shutil.copytree(whole, copy)
    checkpoint = copy / "checkpoints" / "epoch=0-step=40.ckpt"  # 20 updates: 52 env steps
    assert datamodule_state(checkpoint)["env_steps"] == 52
    shown = [arg for arg in TINY if "enable_progress_bar" not in arg]
    capsys.readouterr()
    main(["fit", "--config", "debug.yaml", *shown, "--config=periodic.yaml",
          "--data.total_env_steps=70", f"--ckpt_path={checkpoint}"])  # fmt: skip

    resumed_rows, whole_rows = replay_rows(copy, 70), replay_rows(whole, 70)
    for key in REPLAY_KEYS:
        np.testing.assert_array_equal(resumed_rows[key], whole_rows[key], err_msg=key)
    resumed_ckpt = tmp_path / "runs" / "debug" / "version_1" / "checkpoints" / "last.ckpt"
    whole_ckpt = whole / "checkpoints" / "last.ckpt"
    torch.testing.assert_close(
        datamodule_state(resumed_ckpt)["replay"]["n_counts"],
        datamodule_state(whole_ckpt)["replay"]["n_counts"],
        rtol=0,
        atol=0,
    )
    resumed_weights = weights(resumed_ckpt)
    for name, value in weights(whole_ckpt).items():
        torch.testing.assert_close(resumed_weights[name], value, rtol=0, atol=0, msg=name)
    # 20 updates before the checkpoint, 18 after it: the bar ends at 38 of 38.
    bars = "".join(capsys.readouterr()).replace("\r", "\n").splitlines()
    assert any("Epoch 0: 100%" in line and "38/38" in line for line in bars)


def test_an_in_ram_replay_resumed_without_its_frames_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fit("--data.total_env_steps=40", "--data.replay_dir=memory")
    run_dir = tmp_path / "runs" / "debug" / "version_0"
    shutil.rmtree(run_dir / "replay")
    with pytest.raises(FileNotFoundError, match="replay frames of this checkpoint are missing"):
        fit("--data.total_env_steps=50", "--data.replay_dir=memory",
            f"--ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}")  # fmt: skip


@pytest.mark.parametrize("how", ["copied", "moved"])
def test_a_copied_or_moved_run_resumes_from_its_own_replay(tmp_path, monkeypatch, how):
    """The checkpoint names the replay of the run directory it lies in, wherever that is and
    whatever the working directory: a copy never reads or writes the original's frames."""
    (tmp_path / "a").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    fit("--data.total_env_steps=40")
    original = tmp_path / "a" / "runs" / "debug" / "version_0"
    copy = tmp_path / "elsewhere" / "version_0"
    if how == "copied":
        shutil.copytree(original, copy)
        # Mark the original's frames: a resume of the copy must neither read nor change them.
        frames = np.load(original / "replay" / "obs.npy", mmap_mode="r+")
        frames[:] = 7
        frames.flush()
        del frames
    else:
        shutil.move(original, copy)
    before = np.load(copy / "replay" / "obs.npy")[:40].copy()
    assert (before != 7).any()

    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "b")  # another working directory; the checkpoint's path absolute
    fit("--data.total_env_steps=50", f"--ckpt_path={copy / 'checkpoints' / 'last.ckpt'}")

    after = np.load(copy / "replay" / "obs.npy")
    np.testing.assert_array_equal(after[:40], before)  # the copy's own frames, kept
    assert int(np.load(copy / "replay" / "written.npy").sum()) == 50  # and it went on in them
    resumed = tmp_path / "b" / "runs" / "debug" / "version_0" / "checkpoints" / "last.ckpt"
    assert datamodule_state(resumed)["replay_saved_to"] == str(copy / "replay")
    if how == "copied":
        assert (np.load(original / "replay" / "obs.npy") == 7).all()
        assert int(np.load(original / "replay" / "written.npy").sum()) == 40


def test_resuming_a_finished_run_with_the_same_budget_trains_nothing(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    fit("--data.total_env_steps=40")
    run_dir = tmp_path / "runs" / "debug" / "version_0"
    with caplog.at_level(logging.INFO):
        fit("--data.total_env_steps=40", f"--ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}")
    assert "The budget of 40 env steps is reached already (40): nothing to train" in caplog.text
    assert int(np.load(run_dir / "replay" / "written.npy").sum()) == 40  # no env step taken
    for ckpt in (tmp_path / "runs" / "debug" / "version_1").glob("checkpoints/*.ckpt"):
        assert datamodule_state(ckpt)["env_steps"] == 40


def test_a_resumed_run_copied_alone_says_which_replay_it_reopens(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    fit("--data.total_env_steps=40")
    runs = tmp_path / "runs" / "debug"
    fit("--data.total_env_steps=45", f"--ckpt_path={runs / 'version_0/checkpoints/last.ckpt'}")
    alone = tmp_path / "elsewhere" / "version_1"  # without the version_0 whose replay it uses
    shutil.copytree(runs / "version_1", alone)
    with caplog.at_level(logging.WARNING):
        fit("--data.total_env_steps=50", f"--ckpt_path={alone / 'checkpoints' / 'last.ckpt'}")
    message = (
        f"replay: no ../version_0/replay next to the checkpoint's run directory; reopening "
        f"{runs / 'version_0' / 'replay'}"
    )
    assert caplog.text.count(message) == 1
    assert int(np.load(runs / "version_0" / "replay" / "written.npy").sum()) == 50
