"""The product as a user meets it: main.py / LightningCLI, configs, checkpoints, resume, test."""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import subprocess
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_drama.cli import main, resolve_config_paths
from lightning_drama.module import DramaModule

ROOT = Path(__file__).resolve().parent.parent
# debug.yaml made smaller still: a run is a few seconds.
TINY = [
    "--data.warmup_steps=32",
    "--data.seq_len=16",
    "--data.imagine_batch=16",
    "--data.eval_episodes=2",
    "--data.eval_max_steps=20",
    "--trainer.val_check_interval=1000",
    "--trainer.log_every_n_steps=5",
    "--trainer.enable_progress_bar=false",
]


def run_cli(*args: str) -> None:
    main(list(args))


def datamodule_state(ckpt: Path) -> dict:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["DramaDataModule"]


@pytest.mark.parametrize("config", ["atari.yaml", "debug.yaml"])
def test_print_config(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli("fit", "--config", config, "--print_config")
    assert exit_info.value.code in (None, 0)
    printed = capsys.readouterr().out
    assert "env_id: ALE/Pong-v5" in printed and "world_model:" in printed


@pytest.mark.parametrize(
    ("overlay", "expected"),
    [("mamba1", "backbone: mamba\n"), ("transformer", "backbone: transformer\n"),
     ("gru", "backbone: gru\n"), ("uniform", "sampling: uniform\n")],
)  # fmt: skip
def test_ablation_overlays_change_one_key_of_the_paper_config(overlay, expected, capsys):
    def printed(*configs):
        with pytest.raises(SystemExit):
            run_cli("fit", "--config", "atari.yaml", *configs, "--print_config")
        return capsys.readouterr().out.splitlines(keepends=True)

    base = printed()
    changed = printed("--config", str(ROOT / "configs" / "ablations" / f"{overlay}.yaml"))
    diff = [line.strip() + "\n" for line in changed if line not in base]
    assert diff == [expected]


def test_bare_config_name_is_found_in_configs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = resolve_config_paths(["fit", "--config", "atari.yaml", "--config=debug"])
    assert args[2] == str(ROOT / "configs" / "atari.yaml")
    assert args[3] == "--config=" + str(ROOT / "configs" / "debug.yaml")
    (tmp_path / "mine.yaml").write_text("seed_everything: 1\n")
    assert resolve_config_paths(["--config", "mine.yaml"])[1] == "mine.yaml"


def test_fit_resume_and_test(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run_cli("fit", "--config", "debug.yaml", *TINY, "--data.total_env_steps=60")
    run_dir = tmp_path / "runs" / "debug" / "version_0"
    last = run_dir / "checkpoints" / "last.ckpt"
    assert last.is_file()
    assert (run_dir / "config.yaml").is_file()
    assert list(run_dir.glob("events.out.tfevents.*"))
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(int(r["step"]) <= 60 for r in rows)  # env steps are the x-axis
    assert any(r.get("train/wm/recon") for r in rows) and any(r.get("train/ac/actor") for r in rows)
    assert (run_dir / "replay" / "obs.npy").is_file()  # the replay lives in the run directory
    # The machine-readable records the benchmark runner reads: the evaluation at the end of the
    # budget (a fit stopped by it evaluates once more) and the progress.
    records = [
        json.loads(line) for line in (run_dir / "evaluations.jsonl").read_text().splitlines()
    ]
    assert records[-1]["env_steps"] == 60 and len(records[-1]["returns"]) == 2
    progress = json.loads((run_dir / "progress.json").read_text())
    assert progress["env_steps"] == progress["total_env_steps"] == 60
    assert progress["updates"] == 60 - 32  # one env step per update after the warm-up

    first = datamodule_state(last)
    assert first["env_steps"] == 60
    assert int(first["replay"]["size"].sum()) == 60
    n_first = first["replay"]["n_counts"].clone()

    # Resume to twice the budget: counters continue from the checkpoint, nothing restarts.
    run_cli(
        "fit", "--config", "debug.yaml", *TINY, "--data.total_env_steps=120", f"--ckpt_path={last}"
    )
    resumed_dir = tmp_path / "runs" / "debug" / "version_1"
    second = datamodule_state(resumed_dir / "checkpoints" / "last.ckpt")
    assert second["env_steps"] == 120
    assert int(second["replay"]["size"].sum()) == 120  # not 60 + a fresh warm-up
    # went on in its own copy of the replay; the replay of the run it resumed is left as it was
    assert second["replay_saved_to"] == str(resumed_dir / "replay")
    assert int(np.load(run_dir / "replay" / "written.npy").sum()) == 60
    # DFS counts kept growing from the checkpoint's: every old count is still there or larger.
    assert torch.all(second["replay"]["n_counts"] >= n_first)
    assert second["replay"]["n_counts"].sum() > n_first.sum()
    # The rows the replay files hold, counted next to them (see ReplayBuffer: a resume drops the
    # rows an interrupted run wrote after its checkpoint).
    assert int(second["replay"]["written"].sum()) == 120
    assert int(np.load(resumed_dir / "replay" / "written.npy").sum()) == 120
    # The running episode went on: the first row written after the resume is the frame the
    # checkpoint held, not the first frame of a new episode.
    running = first["collector"]["running"]
    obs, is_first = (np.load(resumed_dir / "replay" / f"{k}.npy") for k in ("obs", "is_first"))
    np.testing.assert_array_equal(obs[60], running["obs"][0].numpy())
    assert not is_first[60] and not running["is_first"][0]

    # A checkpoint of another game is refused with a clear message, before anything is made.
    # (Model sizes can't mismatch: the model's hyperparameters come from the checkpoint.)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_cli("test", "--config", "debug.yaml", *TINY, "--data.env_id=ALE/Breakout-v5",
                f"--ckpt_path={last}")  # fmt: skip
    assert exit_info.value.code == 2
    assert "was trained on ALE/Pong-v5, not on ALE/Breakout-v5" in capsys.readouterr().err
    # ... and so is one whose action space differs from its game's (a checkpoint from elsewhere).
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    hparams = {k: v for k, v in checkpoint["hyper_parameters"].items() if not k.startswith("_")}
    module = DramaModule(**{**hparams, "num_actions": 4})
    with pytest.raises(ValueError, match="model.num_actions is 6, the current config has 4"):
        module.on_load_checkpoint(checkpoint)

    capsys.readouterr()
    run_cli("test", "--config", "debug.yaml", *TINY, f"--ckpt_path={last}")
    out = capsys.readouterr()
    table = out.out + out.err
    assert "Evaluation after 60 env steps" in table
    assert "model: world model 0.13 M parameters (d_model 64" in table  # the checkpoint's model
    # 20-step Pong episodes are cut: their returns are partial, so no human-normalised score.
    assert "human-normalised score" not in table.replace("so no human-normalised score", "")
    assert "were cut there: their returns are of partial episodes" in table
    assert table.count("\n       0 ") + table.count("\n       1 ") >= 2  # one row per episode
    assert sorted(p.name for p in (tmp_path / "runs" / "debug").iterdir()) == [
        "version_0",
        "version_1",
    ]  # an evaluation makes no run directory


# A checkpoint every 8 updates (2 optimiser steps each): at 40 env steps, 48, ...
EVERY_8_UPDATES = """
trainer:
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {every_n_train_steps: 16, save_top_k: -1, save_last: true}
"""


def test_resume_from_an_older_checkpoint_drops_the_rows_written_after_it(
    tmp_path, monkeypatch, caplog
):
    (tmp_path / "periodic.yaml").write_text(EVERY_8_UPDATES)
    monkeypatch.chdir(tmp_path)
    small = [*TINY, "--data.capacity=50"]
    # The run goes on after its checkpoint at 40 env steps to 80: 40 new rows in a 50-row
    # replay, 30 over old ones.
    run_cli("fit", "--config", "debug.yaml", *small, "--config=periodic.yaml",
            "--data.total_env_steps=80")  # fmt: skip
    checkpoints = tmp_path / "runs" / "debug" / "version_0" / "checkpoints"
    older = checkpoints / "epoch=0-step=16.ckpt"
    assert datamodule_state(older)["env_steps"] == 40
    # Resuming from the older checkpoint must not take those rows for old data. The 10 rows
    # left are fewer than a window (seq_len 16): 6 random-action steps top them up.
    with caplog.at_level(logging.WARNING):
        run_cli("fit", "--config", "debug.yaml", *small, "--data.total_env_steps=50",
                f"--ckpt_path={older}")  # fmt: skip
    assert "wrote [40] rows per stream after this checkpoint, over the [30] oldest" in caplog.text
    assert "[10] rows per env left after the resume" in caplog.text
    assert "collecting 6 steps per env" in caplog.text
    second = datamodule_state(checkpoints.parent.parent / "version_1" / "checkpoints" / "last.ckpt")
    assert second["env_steps"] == 50
    assert int(second["replay"]["size"].sum()) == 40 - 30 + 10
    assert int(second["replay"]["written"].sum()) == 50
    # The rows were dropped in the resumed run's copy; the run's own replay is as it was.
    assert int(np.load(checkpoints.parent / "replay" / "written.npy").sum()) == 80


def test_the_progress_bar_counts_the_updates_to_the_budget(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    shown = [arg for arg in TINY if "enable_progress_bar" not in arg]
    run_cli("fit", "--config", "debug.yaml", *shown, "--data.total_env_steps=40",
            "--trainer.val_check_interval=4")  # fmt: skip
    # 32 warm-up steps, then one env step per update: 8 updates to 40.
    output = "".join(capsys.readouterr())
    bars = output.replace("\r", "\n").splitlines()
    assert any("Epoch 0: 100%" in line and "8/8" in line for line in bars)
    assert any("env_steps=40," in line or "env_steps=40]" in line for line in bars)  # an int
    # The evaluations during fit show their table (after 4 and 8 updates).
    assert "Evaluation after 36 env steps" in output and "Evaluation after 40 env steps" in output
    # No noise: Lightning's tips and messages that say nothing to a Drama user.
    for noise in ("litlogger", "litmodels", "LeafSpec", "dirpath has changed", "not supported by"):
        assert noise not in output, noise
    last = tmp_path / "runs" / "debug" / "version_0" / "checkpoints" / "last.ckpt"
    run_cli("fit", "--config", "debug.yaml", *shown, "--data.total_env_steps=44",
            f"--ckpt_path={last}")  # fmt: skip
    # The finished run's checkpoint ended its epoch: the resumed run counts its 4 updates anew.
    bars = "".join(capsys.readouterr()).replace("\r", "\n").splitlines()
    assert any("Epoch 1: 100%" in line and "4/4" in line for line in bars)


@pytest.mark.parametrize("backbone", ["mamba", "transformer", "gru"])
def test_each_backbone_fits_resumes_and_tests(backbone, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    switch = f"--model.world_model.backbone={backbone}"
    run_cli("fit", "--config", "debug.yaml", *TINY, switch, "--data.total_env_steps=40")
    last = tmp_path / "runs" / "debug" / "version_0" / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    assert checkpoint["hyper_parameters"]["world_model"]["backbone"] == backbone
    run_cli("fit", "--config", "debug.yaml", *TINY, switch, "--data.total_env_steps=44",
            f"--ckpt_path={last}")  # fmt: skip
    resumed = tmp_path / "runs" / "debug" / "version_1" / "checkpoints" / "last.ckpt"
    assert datamodule_state(resumed)["env_steps"] == 44
    capsys.readouterr()
    run_cli("test", "--config", "debug.yaml", *TINY, f"--ckpt_path={resumed}")
    out = "".join(capsys.readouterr())
    name = {"mamba": "Mamba-1", "transformer": "Transformer", "gru": "GRU"}[backbone]
    assert "Evaluation after 44 env steps" in out and f"1 {name} layers" in out


def test_fit_in_bf16_mixed_precision(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_cli("fit", "--config", "debug.yaml", *TINY, "--data.total_env_steps=50",
            "--trainer.precision=bf16-mixed")  # fmt: skip
    rows = list(csv.DictReader(open(tmp_path / "runs/debug/version_0/metrics.csv")))  # noqa: SIM115
    losses = [float(r["train/wm/loss"]) for r in rows if r.get("train/wm/loss")]
    assert losses and all(torch.isfinite(torch.tensor(losses)))


def test_main_py_runs_as_a_script(tmp_path):
    # The entry point users type, in a fresh interpreter (also checks the import path).
    result = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "fit", "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "--data.env_id" in result.stdout and "--model.world_model" in result.stdout


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "main.py"),
            "fit",
            "--config",
            "debug.yaml",
            *TINY,
            "--data.total_env_steps=80",
            "--trainer.strategy=ddp",
            "--trainer.devices=2",
            "--trainer.accelerator=cpu",
        ],  # fmt: skip
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "runs" / "debug" / "version_0"
    state = datamodule_state(run_dir / "checkpoints" / "last.ckpt")
    assert state["env_steps"] == 40  # each of the 2 ranks took half of the 80-step budget
    # Each rank had its own replay and wrote its own state next to it.
    assert (run_dir / "replay" / "rank_0" / "obs.npy").is_file()
    rank1 = torch.load(run_dir / "replay" / "rank_1" / "state-40.pt", weights_only=True)
    assert rank1["env_steps"] == 40 and rank1["replay_dir"].endswith("rank_1")

    # Resume under DDP: each rank continues from its own state and replay.
    result = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "fit", "--config", "debug.yaml", *TINY,
         "--data.total_env_steps=120", "--trainer.strategy=ddp", "--trainer.devices=2",
         "--trainer.accelerator=cpu", f"--ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = tmp_path / "runs" / "debug" / "version_1"  # each rank in its own copy
    rank1 = torch.load(resumed / "replay" / "rank_1" / "state-60.pt", weights_only=True)
    assert int(rank1["replay"]["size"].sum()) == 60  # 40 restored + 20, no fresh warm-up
    assert rank1["replay"]["n_counts"].sum() > 0
    assert int(np.load(run_dir / "replay" / "rank_1" / "written.npy").sum()) == 40


def _first_update_grad_norms(
    tmp_path: Path, plugins: list, during_fit=contextlib.nullcontext, prepare=None, **trainer
) -> tuple[dict, list[float]]:
    """Trains debug.yaml (smaller still) for a few updates, with evaluation episodes at the end,
    inside `during_fit()`; returns the first update's clipped gradient norms and the AMP scaler's
    scale at every update (empty without a scaler). `prepare(model)` runs before the fit."""
    import lightning.pytorch as pl
    import yaml

    from lightning_drama.data import DramaDataModule
    from lightning_drama.module import DramaModule

    config = yaml.safe_load(open(ROOT / "configs" / "debug.yaml"))  # noqa: SIM115
    data = dict(config["data"], warmup_steps=32, total_env_steps=36, seq_len=16, imagine_batch=16)
    data.update(eval_episodes=1, eval_max_steps=10)
    data["replay_dir"] = "memory"
    pl.seed_everything(0)
    datamodule = DramaDataModule(**data)
    model = DramaModule(datamodule.num_actions, **config["model"])
    norms, scales = [], []
    if prepare is not None:
        prepare(model)

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args) -> None:
            norms.append({k: float(v) for k, v in pl_module._grad_norms.items()})
            scaler = getattr(trainer.precision_plugin, "scaler", None)
            if scaler is not None:
                scales.append(float(scaler.get_scale()))

    trainer = pl.Trainer(
        accelerator="cpu",
        plugins=plugins,
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[Record()],
        default_root_dir=tmp_path,
        **trainer,
    )
    with during_fit():
        trainer.fit(model, datamodule=datamodule)
    return norms[0], scales


def test_16_mixed_clips_unscaled_gradients(tmp_path):
    # 16-mixed (CUDA's AMP) scales the loss by 2^16 and unscales the gradients inside the
    # optimiser step; Lightning calls on_before_optimizer_step after the unscaling, where the
    # module clips. The CPU has the same GradScaler, so the path runs here: the clipped norms of
    # the first update must be those of a 32-true run, not 2^4 times them.
    from lightning.pytorch.plugins import MixedPrecision

    fp32, _ = _first_update_grad_norms(tmp_path / "fp32", [])
    # The default initial scale 2^16 (2^8 too) overflows fp16 in the first world-model backward (a
    # skipped step, as AMP intends); 2^4 does not, so the first updates compare.
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4)
    fp16, scales = _first_update_grad_norms(
        tmp_path / "fp16", [MixedPrecision("16-mixed", "cpu", scaler=scaler)]
    )
    assert scales and scales[0] == 2.0**4  # the scaler was active and no step was skipped
    for part in ("wm", "ac"):
        assert fp32[part] > 0 and 0.5 < fp16[part] / fp32[part] < 2.0, (part, fp32, fp16)


def test_no_float64_during_training_or_evaluation(tmp_path):
    # MPS has no float64: every tensor op of a fit (acting, updates, logging, the evaluation
    # episodes at its end) must run in 32 bits or less. Checked on CPU by watching every op.
    from torch.utils._python_dispatch import TorchDispatchMode

    fp64_ops: set[str] = set()

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor) and t.dtype == torch.float64:
                    fp64_ops.add(str(func))
            return out

    _first_update_grad_norms(tmp_path, [], during_fit=Watch)
    assert not fp64_ops


def test_the_training_step_reads_nothing_back_from_the_device_between_logging_steps(
    tmp_path, monkeypatch
):
    """On a GPU a host read (`.item()`, `if tensor:`, a boolean-mask index) stalls the launch
    queue. Watched on the CPU by the ops that make those reads, inside `training_step` only, with
    the divergence counters read on the logging steps as on an accelerator: none on the other
    updates, and the reads on a logging step are seen (the watch can fail)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    reads: dict[int, list[str]] = {}
    host_reads = {"aten._local_scalar_dense.default", "aten.nonzero.default",
                  "aten.masked_select.default", "aten.unique_dim.default"}  # fmt: skip

    class Watch(TorchDispatchMode):
        def __init__(self, batch_idx: int):
            super().__init__()
            self.batch_idx = batch_idx

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            # LaProp's masked step passes 0-d device tensors as the scalars of torch._foreach_*
            # ops: read on a CPU, taken on the device by CUDA's kernels (as torch's capturable
            # Adam relies on); the GPU check verifies that with torch.cuda.set_sync_debug_mode.
            if str(func) in host_reads and not any(
                frame.filename.endswith(os.path.join("lightning_drama", "optim.py"))
                for frame in traceback.extract_stack()
            ):
                reads.setdefault(self.batch_idx, []).append(str(func))
            return func(*args, **(kwargs or {}))

    def prepare(model):
        step = model.training_step

        def watched(batch, batch_idx):
            with Watch(batch_idx):
                return step(batch, batch_idx)

        model.training_step = watched

    from lightning_drama import sync

    monkeypatch.setattr(sync, "host_reads_are_free", lambda device: False)  # as on a GPU
    _first_update_grad_norms(tmp_path, [], prepare=prepare, log_every_n_steps=3)
    assert reads.get(2), "the logging step reads its metrics: the watch sees them"
    assert set(reads) == {2}, {k: v[:3] for k, v in reads.items()}
