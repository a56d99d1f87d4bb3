"""Fault-injection tests: a run killed at a bad moment, damaged files, runs that share files.

One section per fault. Each test makes the fault happen (a write that dies halfway, a file cut
short, two runs resumed from one checkpoint, ...) and checks that what survives is either
resumed correctly or refused with a message that names the file and says what to do.
"""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_cli import TINY, datamodule_state
from test_datamodule import small_datamodule
from test_replay import fill

from lightning_drama.cli import main
from lightning_drama.data import DramaDataModule
from lightning_drama.data.replay import FIELDS, ReplayBuffer

REPLAY_KEYS = tuple(FIELDS)


def fit(*args: str) -> None:
    main(["fit", "--config", "debug.yaml", *TINY, *args])


def replay_rows(replay_dir: Path | str, rows: int) -> dict[str, np.ndarray]:
    return {key: np.load(Path(replay_dir) / f"{key}.npy")[:rows] for key in REPLAY_KEYS}


def assert_same_rows(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    for key in REPLAY_KEYS:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A run of 40 env steps (memory-mapped replay): `runs/debug/version_0` under the path
    returned. Tests copy it (`copy_finished_run`) before changing anything in it."""
    root = tmp_path_factory.mktemp("finished")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        fit("--data.total_env_steps=40")
    return root


def copy_finished_run(finished_run: Path, tmp_path: Path, monkeypatch) -> Path:
    """The finished run as `runs/debug/version_0` in tmp_path, the working directory."""
    run_dir = tmp_path / "runs" / "debug" / "version_0"
    shutil.copytree(finished_run / "runs" / "debug" / "version_0", run_dir)
    monkeypatch.chdir(tmp_path)
    return run_dir


# ---- 1. A save of an in-RAM replay killed halfway ---------------------------------------------
# `--data.replay_dir memory` writes the whole replay at every checkpoint. A process killed in the
# middle of that used to leave obs.npy cut short, and neither checkpoint of the run could be
# resumed ("mmap length is greater than file size").


class Killed(Exception):
    """Stands for the process being killed (kill -9, out of memory, a node lost)."""


def die_while_writing(monkeypatch, field: str, call: int) -> list[np.ndarray]:
    """Make the `call`-th write of `<field>.npy` (1 = the first) stop halfway through the data,
    as a killed process would, and raise Killed. Returns the arrays of the writes before it."""
    real_write = np.lib.format.write_array
    written: list[np.ndarray] = []

    def write_array(fp, array, *args, **kwargs):
        if not Path(fp.name).name.startswith(f"{field}.npy"):
            return real_write(fp, array, *args, **kwargs)
        if len(written) + 1 < call:
            written.append(np.array(array))
            return real_write(fp, array, *args, **kwargs)
        whole = io.BytesIO()
        real_write(whole, array, *args, **kwargs)
        fp.write(whole.getvalue()[: len(whole.getvalue()) // 2])  # the header and half the rows
        fp.flush()
        raise Killed(f"killed while writing {fp.name}")

    monkeypatch.setattr(np.lib.format, "write_array", write_array)
    return written


# Checkpoints every 5 updates (2 optimiser steps each): at 37 env steps, then 42, ...
PERIODIC = """
trainer:
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {every_n_train_steps: 10, save_top_k: -1, save_last: true}
"""


def test_an_in_ram_replay_killed_while_saving_resumes_from_the_last_checkpoint(
    tmp_path, monkeypatch
):
    """The run dies while writing obs.npy for the checkpoint at 42 env steps; the last complete
    checkpoint (37) resumes, with the rows it saw, and continues the episode it was in."""
    (tmp_path / "periodic.yaml").write_text(PERIODIC)
    monkeypatch.chdir(tmp_path)
    # At 37 env steps the top-k checkpoint and last.ckpt each save the replay: writes 1 and 2.
    saved = die_while_writing(monkeypatch, "obs", call=3)
    with pytest.raises(Killed):
        fit("--config=periodic.yaml", "--data.total_env_steps=60", "--data.replay_dir=memory")
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "runs" / "debug" / "version_0"
    last = run_dir / "checkpoints" / "last.ckpt"
    checkpoint = datamodule_state(last)
    assert checkpoint["env_steps"] == 37 and len(saved) == 2

    fit("--data.total_env_steps=45", "--data.replay_dir=memory", f"--ckpt_path={last}")
    resumed = tmp_path / "runs" / "debug" / "version_1"
    state = datamodule_state(resumed / "checkpoints" / "last.ckpt")
    assert state["env_steps"] == 45 and int(state["replay"]["size"].sum()) == 45
    rows = replay_rows(state["replay_saved_to"], 45)
    np.testing.assert_array_equal(rows["obs"][:37], saved[-1][:37])  # what the checkpoint saw
    # The episode went on: the first row after the resume is the frame the checkpoint held.
    np.testing.assert_array_equal(rows["obs"][37], checkpoint["collector"]["running"]["obs"][0])
    assert not rows["is_first"][37]


@pytest.mark.parametrize(
    ("dies_in", "expected_t"),
    [
        ("written", list(range(8))),  # no file replaced yet: the previous save, whole
        ("obs", list(range(3, 8))),  # the counts of the new save are on disk: t = 10, 11, 12
        ("action", list(range(3, 8))),  # went over the rows of t = 0, 1, 2 and are dropped
        (None, list(range(3, 8))),  # the replay saved, killed before its checkpoint was written
    ],
)
def test_an_interrupted_replay_save_leaves_the_previous_checkpoint_resumable(
    tmp_path, monkeypatch, dies_in, expected_t
):
    """A checkpoint at t = 8 of a 10-row replay, then 5 more rows (2 into free rows, 3 over the
    oldest) and a save that dies: resuming the checkpoint gets every row it saw that is still
    the same in the files, never a row written after it."""
    directory = str(tmp_path / "replay")
    replay = ReplayBuffer(10, seed=0)  # in RAM, saved at checkpoints
    fill(replay, 8)
    replay.save(directory)
    checkpoint = replay.state_dict(include_data=False)
    fill(replay, 5, first_t=8)
    if dies_in is not None:
        die_while_writing(monkeypatch, dies_in, call=1)
        with pytest.raises(Killed):
            replay.save(directory)
        monkeypatch.undo()
    else:
        replay.save(directory)

    resumed = ReplayBuffer(10, seed=0)
    resumed.load_state_dict(checkpoint)
    resumed.load(directory)
    assert resumed.data["action"][resumed.valid_starts(1)].tolist() == expected_t
    fill(resumed, 1, first_t=100)  # the next row follows the checkpoint's
    assert resumed.data["action"][resumed.valid_starts(1)].tolist() == [*expected_t, 100]


# ---- 2. Damaged replay files ------------------------------------------------------------------
# numpy maps a .npy file whatever its size: a file cut short was extended with zeros on resume
# (mode r+), and 118 of 200 rows became black frames without a word.


def test_resuming_a_run_whose_replay_file_was_cut_short_is_refused(
    finished_run, tmp_path, monkeypatch, capsys
):
    run_dir = copy_finished_run(finished_run, tmp_path, monkeypatch)
    obs = run_dir / "replay" / "obs.npy"
    with open(obs, "r+b") as f:  # truncate -s 1000000
        f.truncate(1_000_000)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        fit("--data.total_env_steps=45", f"--ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}")
    assert exit_info.value.code == 2  # one `error:` line, no traceback
    err = capsys.readouterr().err
    assert re.search(
        "error: replay file " + re.escape(str(obs)) + r" has 1,000,000 bytes.*cut short", err
    )
    assert "Traceback" not in err
    assert obs.stat().st_size == 1_000_000  # left as it was found


def _truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 64 * 64 * 3)


def _append(path: Path) -> None:
    with open(path, "ab") as f:
        f.write(b"\0" * 8)


def _break_header(path: Path) -> None:
    with open(path, "r+b") as f:
        f.write(b"garbage!")


def _other_dtype(path: Path) -> None:
    np.save(path, np.load(path).astype(np.int8))


def _cut_in_header(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


DAMAGE = {
    "obs": (_truncate, "cut short"),
    "reward": (_append, "cut short or changed"),
    "action": (Path.unlink, "is missing"),
    "terminated": (_break_header, "not a readable .npy file"),
    "is_first": (_other_dtype, r"holds int8 \(20,\), expected bool \(20,\)"),
    "written": (_cut_in_header, "not a readable .npy file"),
}


@pytest.mark.parametrize("field", list(DAMAGE))
@pytest.mark.parametrize("how", ["reopened", "loaded"])
def test_a_damaged_replay_file_is_refused_by_name(tmp_path, field, how):
    directory = tmp_path / "replay"
    replay = ReplayBuffer(20, num_streams=2, seed=0, directory=str(directory))
    fill(replay, 6)
    checkpoint = replay.state_dict(include_data=False)
    del replay
    damage, message = DAMAGE[field]
    path = directory / f"{field}.npy"
    damage(path)
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*" + message):
        if how == "reopened":
            ReplayBuffer(20, num_streams=2, directory=str(directory), reopen=True)
        else:
            in_ram = ReplayBuffer(20, num_streams=2)
            in_ram.load_state_dict(checkpoint)
            in_ram.load(str(directory))


# ---- 3. Two runs resumed from one checkpoint --------------------------------------------------
# Both used to write on into the replay of the run they resumed: resuming one of them later read
# the other's frames.


def test_sibling_resumes_never_write_into_each_others_replay(
    finished_run, tmp_path, monkeypatch, caplog
):
    run_dir = copy_finished_run(finished_run, tmp_path, monkeypatch)
    runs = run_dir.parent
    original = replay_rows(run_dir / "replay", 5000)
    last = run_dir / "checkpoints" / "last.ckpt"

    with caplog.at_level("INFO"):
        fit("--data.total_env_steps=44", f"--ckpt_path={last}")  # version_1
    copied = r"Replay: copied \S*version_0/replay to \S*version_1/replay \(59 MiB in \d+\.\d s\)"
    assert re.search(copied, caplog.text)
    first = datamodule_state(runs / "version_1" / "checkpoints" / "last.ckpt")
    first_rows = replay_rows(first["replay_saved_to"], 44)

    # The second sibling's frames are marked (all 255), to tell them apart from the first's.
    add = ReplayBuffer.add
    with monkeypatch.context() as patch:
        patch.setattr(ReplayBuffer, "add", lambda self, obs, *rest: add(self, obs * 0 + 255, *rest))
        fit("--data.total_env_steps=44", f"--ckpt_path={last}")  # version_2

    # Resuming the first sibling goes on from its own frames.
    fit("--data.total_env_steps=46",
        f"--ckpt_path={runs / 'version_1' / 'checkpoints' / 'last.ckpt'}")  # fmt: skip
    third = datamodule_state(runs / "version_3" / "checkpoints" / "last.ckpt")
    assert third["env_steps"] == 46
    third_rows = replay_rows(third["replay_saved_to"], 44)
    assert_same_rows(third_rows, first_rows)
    assert not (third_rows["obs"][40:] == 255).all()
    # Every run wrote only into its own replay; the one they all came from is as it was.
    for version in (1, 2, 3):
        saved_to = datamodule_state(runs / f"version_{version}" / "checkpoints" / "last.ckpt")
        assert Path(saved_to["replay_saved_to"]) == runs / f"version_{version}" / "replay"
    assert_same_rows(replay_rows(run_dir / "replay", 5000), original)
    assert int(np.load(run_dir / "replay" / "written.npy").sum()) == 40


# ---- 4. A checkpoint of another number of processes -------------------------------------------
# Each DDP rank has its own replay and env-step counter; resuming a 3-rank checkpoint with one
# process used to reset the env-step count from 132 to 44 and drop two thirds of the replay.


def test_a_checkpoint_of_another_number_of_processes_is_refused(
    finished_run, tmp_path, monkeypatch, capsys
):
    # Evaluating such a checkpoint needs neither replay nor counters: `test` plays its episodes.
    run_dir = copy_finished_run(finished_run, tmp_path, monkeypatch)
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    checkpoint[DramaDataModule.__qualname__]["world_size"] = 3
    torch.save(checkpoint, run_dir / "checkpoints" / "ddp.ckpt")
    capsys.readouterr()
    main(["test", "--config", "debug.yaml", *TINY,
          f"--ckpt_path={run_dir / 'checkpoints' / 'ddp.ckpt'}"])  # fmt: skip
    assert "Evaluation after 40 env steps" in "".join(capsys.readouterr())

    dm = small_datamodule(seed=1)
    dm.setup("fit")
    state = dm.state_dict()
    assert state["world_size"] == 1

    three = dict(state, world_size=3)  # as rank 0 of a 3-process run writes it
    with pytest.raises(
        ValueError, match=r"written by a run of 3 processes, this run has 1.*--trainer.devices"
    ):
        small_datamodule(seed=1).load_state_dict(three)

    # A checkpoint from before the count: a DDP run's replay was in replay/rank_0.
    older = {key: value for key, value in state.items() if key != "world_size"}
    older["replay_saved_to"] = str(tmp_path / "replay" / "rank_0")
    with pytest.raises(ValueError, match="written by a run of several processes, this run has 1"):
        small_datamodule(seed=1).load_state_dict(older)

    # And the other way round, found in setup (before anything is collected or copied).
    torch.save({DramaDataModule.__qualname__: state}, tmp_path / "one.ckpt")
    monkeypatch.setattr(DramaDataModule, "world_size", property(lambda self: 2))
    two = small_datamodule(seed=1)
    two.resume_from = str(tmp_path / "one.ckpt")
    with pytest.raises(ValueError, match="written by a run of 1 process, this run has 2"):
        two.setup("fit")
    assert two.replay is None


# ---- 5. last.ckpt written atomically, wherever $TMPDIR is ----------------------------------------
# Lightning's fsspec save wrote into $TMPDIR and moved the file: across filesystems a copy, which
# a kill could leave truncated, with an orphan in $TMPDIR.


def test_a_checkpoint_save_killed_halfway_leaves_the_previous_last_ckpt(
    finished_run, tmp_path, monkeypatch
):
    from lightning_drama.callbacks import AtomicCheckpointIO

    run_dir = copy_finished_run(finished_run, tmp_path, monkeypatch)
    last = run_dir / "checkpoints" / "last.ckpt"
    before = last.read_bytes()

    def dies_halfway(obj, f):
        f.write(b"half a checkpoint")
        raise Killed

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(Killed):
        AtomicCheckpointIO().save_checkpoint({"state_dict": {}}, last)
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    assert last.read_bytes() == before  # the rename never happened
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]  # no temporary left


def test_checkpoints_do_not_go_through_tmpdir_and_orphans_are_removed(
    finished_run, tmp_path, monkeypatch, caplog
):
    run_dir = copy_finished_run(finished_run, tmp_path, monkeypatch)
    orphan = run_dir / "checkpoints" / "last.ckpt.tmp-99999"  # as a kill -9 mid-save leaves it
    orphan.write_bytes(b"partial")
    monkeypatch.setenv("TMPDIR", str(tmp_path / "no-such-tmp"))  # any use of it would fail
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    with caplog.at_level("INFO"):
        fit("--data.total_env_steps=44", f"--ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}")
    assert not orphan.exists()
    assert "Removed" in caplog.text and "last.ckpt.tmp-99999" in caplog.text
    resumed = tmp_path / "runs" / "debug" / "version_1" / "checkpoints" / "last.ckpt"
    assert datamodule_state(resumed)["env_steps"] == 44


# ---- 6. SIGTERM (preemption) and Ctrl-C --------------------------------------------------------
# SIGTERM used to exit with code 0 and no checkpoint; Ctrl-C exited without one.


@pytest.mark.parametrize(("signal_name", "code"), [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_finishes_the_update_writes_last_ckpt_and_exits_non_zero(
    signal_name, code, tmp_path
):
    import os
    import signal
    import subprocess
    import sys
    import time

    from test_cli import ROOT

    command = [sys.executable, str(ROOT / "main.py"), "fit", "--config", "debug.yaml", *TINY,
               "--data.total_env_steps=100000", "--trainer.val_check_interval=100000"]  # fmt: skip
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    process = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    output = []
    deadline = time.monotonic() + 240
    for line in process.stdout:  # wait until training runs
        output.append(line)
        if "Training until" in line or time.monotonic() > deadline:
            break
    time.sleep(3)  # a few updates
    process.send_signal(getattr(signal, signal_name))
    rest, _ = process.communicate(timeout=240)
    output.append(rest)
    text = "".join(output)
    assert process.returncode == code, text
    last = tmp_path / "runs" / "debug" / "version_0" / "checkpoints" / "last.ckpt"
    assert (
        f"{signal_name}: stopped after" in text
        and f"--ckpt_path {last.relative_to(tmp_path)}" in text
    )
    steps = datamodule_state(last)["env_steps"]
    assert steps > 32  # after the warm-up: the interrupted run's updates are in it
    # ... and it resumes.
    done = subprocess.run(
        [*command[:-2], f"--data.total_env_steps={steps + 2}", f"--ckpt_path={last}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    resumed = tmp_path / "runs" / "debug" / "version_1" / "checkpoints" / "last.ckpt"
    assert datamodule_state(resumed)["env_steps"] == steps + 2


def test_last_ckpt_is_also_written_on_a_time_interval(tmp_path, monkeypatch):
    from lightning_drama.callbacks import EnvironmentLoop

    monkeypatch.chdir(tmp_path)
    saved_at = []
    real_save = EnvironmentLoop._save_last

    def recording(self, trainer):
        saved_at.append(trainer.datamodule.env_steps)
        return real_save(self, trainer)

    monkeypatch.setattr(EnvironmentLoop, "_save_last", recording)
    config = tmp_path / "often.yaml"
    config.write_text(
        "trainer:\n  callbacks:\n"
        "    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
        "      init_args: {save_last: true, save_top_k: 0}\n"
        "    - class_path: lightning_drama.callbacks.EnvironmentLoop\n"
        "      init_args: {checkpoint_every_minutes: 1.0e-9}\n"
    )
    fit("--config", str(config), "--data.total_env_steps=36")
    # after every update (the interval is ~0), not only at the budget
    assert saved_at == [33, 34, 35, 36]


# ---- 7. Divergence -------------------------------------------------------------------------------
# --model.wm_lr 1e6 died with an unexplained Categorical error; NaN losses trained on silently.


def test_a_diverging_run_stops_with_a_message_and_keeps_its_checkpoint(
    finished_run, tmp_path, monkeypatch, capsys
):
    run_dir = copy_finished_run(finished_run, tmp_path, monkeypatch)
    last = run_dir / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        fit("--model.wm_lr=1e6", "--model.ac_lr=1e6", "--model.divergence_patience=5",
            "--data.total_env_steps=80")  # fmt: skip
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "error: training diverged: non-finite" in err and "in 5 updates in a row" in err
    assert "Traceback" not in err
    assert last.read_bytes() == before  # another run's checkpoint, untouched
    new_run = tmp_path / "runs" / "debug" / "version_1"
    assert not list(new_run.glob("checkpoints/*.ckpt"))  # nothing saved from the diverged run


# ---- 8. Resuming with other flags, or another game -----------------------------------------------
# Model flags were silently replaced by the checkpoint's; a Pong checkpoint with SpaceInvaders
# (same action count) crashed inside ALE.


def test_model_flags_on_resume_are_applied_or_refused(finished_run, tmp_path, monkeypatch, capsys):
    run_dir = copy_finished_run(finished_run, tmp_path, monkeypatch)
    last = str(run_dir / "checkpoints" / "last.ckpt")
    with pytest.raises(SystemExit) as exit_info:
        fit("--data.total_env_steps=44", f"--ckpt_path={last}",
            "--model.world_model.d_model=128", "--model.acting=posterior")  # fmt: skip
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--model.world_model.d_model 128 (the checkpoint's: 64)" in err
    assert "--model.acting 'posterior' (the checkpoint's: 'reference')" in err
    assert not (tmp_path / "runs" / "debug" / "version_1").exists()
    # A flag naming the whole dict asks for each of its keys.
    with pytest.raises(SystemExit) as exit_info:
        fit("--data.total_env_steps=44", f"--ckpt_path={last}",
            "--model.actor_critic={critic_hidden: 32}")  # fmt: skip
    assert exit_info.value.code == 2
    assert "--model.actor_critic.critic_hidden 32 (the checkpoint's: 64)" in (
        capsys.readouterr().err
    )

    # Learning rates may change: the resumed run trains with the new one.
    fit("--data.total_env_steps=44", f"--ckpt_path={last}", "--model.wm_lr=5e-4")
    resumed = torch.load(
        tmp_path / "runs" / "debug" / "version_1" / "checkpoints" / "last.ckpt",
        map_location="cpu", weights_only=True,
    )  # fmt: skip
    assert resumed["hyper_parameters"]["wm_lr"] == 5e-4
    wm_group = resumed["optimizer_states"][0]["param_groups"][0]
    ac_group = resumed["optimizer_states"][1]["param_groups"][0]
    assert wm_group["initial_lr"] == 5e-4 and resumed["lr_schedulers"][0]["base_lrs"] == [5e-4]
    assert ac_group["initial_lr"] == 1e-3  # unchanged
    # Both still follow the same warm-up schedule, now from their own base rates.
    assert wm_group["lr"] / 5e-4 == pytest.approx(ac_group["lr"] / 1e-3)


def test_a_checkpoint_of_another_game_is_refused(finished_run, tmp_path, monkeypatch, capsys):
    run_dir = copy_finished_run(finished_run, tmp_path, monkeypatch)
    last = run_dir / "checkpoints" / "last.ckpt"
    for subcommand in ("fit", "test"):
        with pytest.raises(SystemExit) as exit_info:
            main([subcommand, "--config", "debug.yaml", *TINY, f"--ckpt_path={last}",
                  "--data.env_id=ALE/SpaceInvaders-v5"])  # fmt: skip
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert "was trained on ALE/Pong-v5, not on ALE/SpaceInvaders-v5" in err
    assert sorted(p.name for p in (tmp_path / "runs" / "debug").iterdir()) == ["version_0"]


def test_the_paper_config_on_a_cpu_says_what_it_costs():
    from types import SimpleNamespace

    from lightning.pytorch.accelerators import CPUAccelerator

    from lightning_drama.callbacks import cpu_cost_note

    trainer = SimpleNamespace(accelerator=CPUAccelerator(), precision="32-true")
    paper = SimpleNamespace(world_model=SimpleNamespace(d_model=512))
    note = cpu_cost_note(trainer, paper, 98_968)
    assert "98,968 env steps take roughly 275-550 h" in note and "configs/debug.yaml" in note
    bf16 = cpu_cost_note(SimpleNamespace(accelerator=CPUAccelerator(), precision="bf16-mixed"),
                         paper, 98_968)  # fmt: skip
    assert "(bf16," in bf16
    tiny = SimpleNamespace(world_model=SimpleNamespace(d_model=64))
    assert cpu_cost_note(trainer, tiny, 98_968) == ""  # the debug model: no warning
    assert cpu_cost_note(trainer, paper, 500) == ""  # a short run
