"""Resuming through the CLI: a resumed run is the run that was not interrupted, it writes only
into its own copy of the replay, and a run directory can be copied, moved or resumed from
anywhere."""

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

    resumed_rows, whole_rows = replay_rows(runs / "version_1", 70), replay_rows(whole, 70)
    for key in REPLAY_KEYS:
        np.testing.assert_array_equal(resumed_rows[key], whole_rows[key], err_msg=key)
    # The resumed run went on in its own copy of the replay; the one it resumed is as it was.
    assert int(np.load(runs / "version_0" / "replay" / "written.npy").sum()) == 40
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
    # Resumed in a copy of the whole run's replay, which holds rows written after the checkpoint.
    checkpoint = whole / "checkpoints" / "epoch=0-step=40.ckpt"  # 20 updates: 52 env steps
    assert datamodule_state(checkpoint)["env_steps"] == 52
    shown = [arg for arg in TINY if "enable_progress_bar" not in arg]
    capsys.readouterr()
    main(["fit", "--config", "debug.yaml", *shown, "--config=periodic.yaml",
          "--data.total_env_steps=70", f"--ckpt_path={checkpoint}"])  # fmt: skip

    resumed = tmp_path / "runs" / "debug" / "version_1"
    resumed_rows, whole_rows = replay_rows(resumed, 70), replay_rows(whole, 70)
    for key in REPLAY_KEYS:
        np.testing.assert_array_equal(resumed_rows[key], whole_rows[key], err_msg=key)
    resumed_ckpt = resumed / "checkpoints" / "last.ckpt"
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


def test_an_in_ram_replay_resumed_without_its_frames_fails_clearly(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    fit("--data.total_env_steps=40", "--data.replay_dir=memory")
    run_dir = tmp_path / "runs" / "debug" / "version_0"
    shutil.rmtree(run_dir / "replay")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:  # a ReplayFileError, as one `error:` line
        fit("--data.total_env_steps=50", "--data.replay_dir=memory",
            f"--ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}")  # fmt: skip
    assert exit_info.value.code == 2
    assert "replay frames of this checkpoint are missing" in capsys.readouterr().err


@pytest.mark.parametrize("how", ["copied", "moved"])
def test_a_copied_or_moved_run_resumes_from_its_own_replay(tmp_path, monkeypatch, how):
    """The checkpoint names the replay of the run directory it lies in, wherever that is and
    whatever the working directory: a copy never reads the original's frames, and the resumed
    run writes into neither."""
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

    resumed = tmp_path / "b" / "runs" / "debug" / "version_0"
    after = np.load(resumed / "replay" / "obs.npy")
    np.testing.assert_array_equal(after[:40], before)  # went on from the copy's own frames
    assert int(np.load(resumed / "replay" / "written.npy").sum()) == 50
    state = datamodule_state(resumed / "checkpoints" / "last.ckpt")
    assert state["replay_saved_to"] == str(resumed / "replay")
    np.testing.assert_array_equal(np.load(copy / "replay" / "obs.npy")[:40], before)  # unchanged
    assert int(np.load(copy / "replay" / "written.npy").sum()) == 40
    if how == "copied":
        assert (np.load(original / "replay" / "obs.npy") == 7).all()
        assert int(np.load(original / "replay" / "written.npy").sum()) == 40


def test_resuming_a_finished_run_with_the_same_budget_trains_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    fit("--data.total_env_steps=40")
    run_dir = tmp_path / "runs" / "debug" / "version_0"
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        fit("--data.total_env_steps=40", f"--ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}")
    assert exit_info.value.code == 0  # nothing failed
    assert "has trained on 40 env steps, the budget is 40: nothing to train" in (
        capsys.readouterr().err
    )
    assert int(np.load(run_dir / "replay" / "written.npy").sum()) == 40  # no env step taken
    # Nothing was made: no run directory for a run that has nothing to do.
    assert sorted(p.name for p in (tmp_path / "runs" / "debug").iterdir()) == ["version_0"]


def test_a_resumed_run_copied_alone_resumes_from_its_own_replay(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    fit("--data.total_env_steps=40")
    runs = tmp_path / "runs" / "debug"
    last = runs / "version_0" / "checkpoints" / "last.ckpt"
    fit("--data.total_env_steps=45", f"--ckpt_path={last}")

    # A checkpoint that names its replay in a sibling run directory (as resumed runs did before
    # they had their own copy), copied without it: it reads the replay where it was saved.
    legacy = torch.load(last, map_location="cpu", weights_only=True)
    legacy["DramaDataModule"]["replay_in_run"] = "../version_0/replay"
    legacy_ckpt = tmp_path / "legacy" / "version_0" / "checkpoints" / "last.ckpt"
    legacy_ckpt.parent.mkdir(parents=True)
    torch.save(legacy, legacy_ckpt)
    with caplog.at_level(logging.WARNING):
        fit("--data.total_env_steps=42", f"--ckpt_path={legacy_ckpt}")
    message = (
        f"replay: no ../version_0/replay next to the checkpoint's run directory; reading "
        f"{runs / 'version_0' / 'replay'}"
    )
    assert caplog.text.count(message) == 1

    # A resumed run needs nothing of the run it was resumed from.
    alone = tmp_path / "elsewhere" / "version_1"
    shutil.copytree(runs / "version_1", alone)
    shutil.rmtree(runs / "version_0")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        fit("--data.total_env_steps=50", f"--ckpt_path={alone / 'checkpoints' / 'last.ckpt'}")
    assert "replay:" not in caplog.text
    state = datamodule_state(runs / "version_3" / "checkpoints" / "last.ckpt")
    assert state["env_steps"] == 50 and int(state["replay"]["size"].sum()) == 50
    assert int(np.load(alone / "replay" / "written.npy").sum()) == 45  # read, not written
