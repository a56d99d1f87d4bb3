"""Device-independent tests: the model, imagination, training and exact resume on `--device`.

Every test here takes the `device` fixture (tests/conftest.py) and is marked `device`:

    pytest -m device                      # on the CPU, as CI runs them with the whole suite
    pytest --device cuda -m device        # the same tests on a GPU (cuda:1, mps, ...)

A device that is not there skips them. Numerical references are computed on the CPU: the SSD scan
against the sequential recurrence in fp64; the world model against its fp32 CPU copy (it cannot
run in fp64: its encoder, sampler and losses cast to fp32 by design; see
`test_world_model_loss_on_the_device_matches_the_cpu`).
Tolerances are stated where they are used; comparisons run with TF32 off (cuDNN enables it for
convolutions by default, which would be a 1e-3 relative error on its own).
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
import yaml
from lightning.pytorch.plugins import MixedPrecision
from test_cli import TINY, datamodule_state
from test_ssd import make_inputs
from test_world_model import context_of, synthetic_batch

from lightning_drama.agent import ActorCritic
from lightning_drama.cli import main
from lightning_drama.data import DramaDataModule
from lightning_drama.module import DramaModule
from lightning_drama.policy import make_policy
from lightning_drama.ssm import Mamba2Backbone, kernels, ssd, ssd_reference, ssd_scan
from lightning_drama.world_model import REWARD_TIMINGS, WorldModel

pytestmark = pytest.mark.device

ROOT = Path(__file__).resolve().parent.parent
DEBUG = yaml.safe_load((ROOT / "configs" / "debug.yaml").read_text())
WM_SIZES = DEBUG["model"]["world_model"]  # encoder 8..16 channels, 8x8 latents, d_model 64
AC_SIZES = DEBUG["model"]["actor_critic"]
ENV_ID = "catch_env:Catch"  # tests/catch_env.py: 64x64 frames, 3 actions, 3-step episodes
NUM_ACTIONS = 3


@pytest.fixture
def no_tf32():
    """Full fp32 matrix products and convolutions on CUDA for the comparisons (no-op elsewhere),
    the previous settings after the test."""
    flags = [(torch.backends.cuda.matmul, "allow_tf32"), (torch.backends.cudnn, "allow_tf32")]
    before = [getattr(owner, name) for owner, name in flags]
    for owner, name in flags:
        setattr(owner, name, False)
    try:
        yield
    finally:
        for (owner, name), value in zip(flags, before, strict=True):
            setattr(owner, name, value)


def rel_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """||got - want|| / ||want|| (Frobenius), computed in fp64 on the CPU."""
    got, want = got.detach().cpu().double(), want.detach().cpu().double()
    return float((got - want).norm() / want.norm().clamp(min=1e-300))


def lightning_device(device: torch.device) -> tuple[str, int | list[int]]:
    """Trainer(accelerator, devices) that trains on `device`."""
    accelerator = {"cuda": "gpu"}.get(device.type, device.type)  # cpu, mps, ...
    return accelerator, 1 if device.index is None or device.type == "cpu" else [device.index]


def assert_on(tensor: torch.Tensor, device: torch.device, what: str) -> None:
    # cuda without an index means the current device (cuda:0 unless changed)
    assert tensor.device.type == device.type, f"{what} is on {tensor.device}, not {device}"
    if device.index is not None:
        assert tensor.device.index == device.index, f"{what} is on {tensor.device}, not {device}"


# ------------------------------------------------------------------------------- a. SSD scan

# Relative (Frobenius) error of the fp32 scan against the fp64 sequential recurrence. Measured on
# the CPU: <= 8e-7 for y, the final state and all gradients but A's (<= 8e-6, a sum over every
# step); 1e-4 leaves a 10x margin for another device's summation order.
SSD_FP32_TOLERANCE = 1e-4
INPUT_NAMES = ("x", "dt", "A", "B", "C", "D", "h0")


@pytest.mark.parametrize("form", ["factored", "segsum"])
@pytest.mark.parametrize(("L", "chunk"), [(70, 16), (300, 64)])  # 300: two segments of 256
def test_ssd_scan_in_fp32_matches_the_fp64_sequential_reference(
    device, monkeypatch, no_tf32, form, L, chunk
):
    """The chunked scan in fp32 on the device, with an initial state, D, two groups and resets
    inside chunks, against `ssd_reference` in fp64 on the CPU: outputs, final state and the
    gradients of every input (through both outputs)."""
    # Both forms of the within-chunk part, and a check that the intended one ran.
    monkeypatch.setattr(ssd, "FACTORED_MAX_EXPONENT", 60.0 if form == "factored" else -1.0)
    ran = {"factored": 0, "segsum": 0}
    for name in ran:
        original = getattr(ssd, f"_ssd_chunked_{name}")

        def counted(*args, _original=original, _name=name, **kwargs):
            ran[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(ssd, f"_ssd_chunked_{name}", counted)

    x, dt, A, B, C = make_inputs(b=2, L=L, H=4, P=8, G=2, N=16, seed=3)
    g = torch.Generator().manual_seed(1)
    D = torch.randn(4, generator=g, dtype=torch.float64)
    h0 = torch.randn(2, 4, 8, 16, generator=g, dtype=torch.float64)
    reset = torch.rand(2, L, generator=g) < 0.05
    reset[1, L // 3] = True
    grad_y = torch.randn(2, L, 4, 8, generator=g, dtype=torch.float64)
    grad_final = torch.randn(2, 4, 8, 16, generator=g, dtype=torch.float64)

    ref_inputs = [t.clone().requires_grad_() for t in (x, dt, A, B, C, D, h0)]
    y_ref, final_ref = ssd_reference(
        *ref_inputs[:5], D=ref_inputs[5], initial_state=ref_inputs[6], reset=reset
    )
    ((y_ref * grad_y).sum() + (final_ref * grad_final).sum()).backward()

    inputs = [t.float().to(device).requires_grad_() for t in (x, dt, A, B, C, D, h0)]
    y, final = ssd_scan(
        *inputs[:5], chunk, D=inputs[5], initial_state=inputs[6], reset=reset.to(device)
    )
    assert ran[form] > 0 and sum(ran.values()) == ran[form], ran
    assert y.dtype == final.dtype == torch.float32
    assert_on(y, device, "y")
    assert_on(final, device, "final state")
    (
        (y * grad_y.float().to(device)).sum() + (final * grad_final.float().to(device)).sum()
    ).backward()
    assert rel_error(y, y_ref) < SSD_FP32_TOLERANCE
    assert rel_error(final, final_ref) < SSD_FP32_TOLERANCE
    for name, got, want in zip(INPUT_NAMES, inputs, ref_inputs, strict=True):
        assert_on(got.grad, device, f"grad of {name}")
        assert torch.isfinite(got.grad).all(), name
        assert rel_error(got.grad, want.grad) < SSD_FP32_TOLERANCE, name


def test_mamba2_backbone_on_the_device_matches_fp64_on_the_cpu(device, no_tf32):
    """A Mamba-2 backbone (2 layers, debug sizes) in fp32 on the device against the same weights
    in fp64 on the CPU: a window with resets continuing from a state, then the O(1) steps on the
    device against the device's own window. Under bf16 autocast the states stay fp32."""
    torch.manual_seed(0)
    sizes = dict(d_model=64, n_layers=2, d_state=8, headdim=32, chunk_size=16)
    reference = Mamba2Backbone(**sizes).double().eval()
    model = copy.deepcopy(reference).float().to(device)
    # mamba-ssm's fused kernels (used on CUDA when installed) compute with TF32 dot products
    # inside Triton: a looser bound for them. The pure-PyTorch path: 1e-4 (measured ~1e-6).
    fused = kernels.use_fused_scan(torch.empty(0, device=device), model.mixers[0].d_inner, False)
    tolerance = 1e-2 if fused else 1e-4

    g = torch.Generator().manual_seed(0)
    prefix = torch.randn(3, 9, 64, generator=g, dtype=torch.float64)
    x = torch.randn(3, 40, 64, generator=g, dtype=torch.float64)
    reset = torch.zeros(3, 40, dtype=torch.bool)
    reset[0, 0] = reset[1, 17] = reset[2, 5] = reset[2, 33] = True
    with torch.no_grad():
        _, warm_ref = reference(prefix)
        y_ref, state_ref = reference(x, warm_ref, reset)
        _, warm = model(prefix.float().to(device))
        y, state = model(x.float().to(device), warm, reset.to(device))
    assert y.dtype == torch.float32
    assert_on(y, device, "y")
    assert rel_error(y, y_ref) < tolerance
    for got, want in zip(state, state_ref, strict=True):
        assert_on(got, device, "state")
        assert rel_error(got, want) < tolerance

    # The recurrent steps (imagination, acting) against the parallel window, both on the device.
    steps, step_state = [], warm
    with torch.no_grad():
        for t in range(x.shape[1]):
            out, step_state = model.step(
                x[:, t].float().to(device), step_state, reset[:, t].to(device)
            )
            steps.append(out)
    assert rel_error(torch.stack(steps, 1), y) < tolerance
    for got, want in zip(step_state, state, strict=True):
        assert rel_error(got, want) < tolerance

    # bf16 autocast (bf16-mixed training): SSM states in fp32, outputs within bf16 accuracy.
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
        y16, state16 = model(x.float().to(device), warm, reset.to(device))
    assert all(s.dtype == torch.float32 for s in state16[1::2])  # (conv, ssm) per layer
    assert torch.isfinite(y16).all()
    assert rel_error(y16, y_ref) < 2e-2  # bf16 keeps 8 bits: 3e-3 measured on the CPU


# ------------------------------------------------------------------------ b. world-model loss


def expected_latent(logits: torch.Tensor) -> torch.Tensor:
    """The latents' probabilities in place of their one-hot samples: the same value on every
    device (random samples are not), continuous (a mode could flip between near-equal classes
    with rounding), and the gradient of the product's straight-through sampler."""
    return torch.softmax(logits.float(), -1).flatten(-2)


def move(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {key: value.to(device) for key, value in batch.items()}


def replay_batch(batch: int = 2, length: int = 16) -> dict[str, torch.Tensor]:
    """A batch with the DataModule's keys and dtypes, and an episode start inside a window."""
    data = synthetic_batch(batch, length, NUM_ACTIONS, seed=1)
    data["is_first"][1, length // 2] = True
    data["terminated"][1, length // 2 - 1] = True
    data["truncated"] = torch.zeros(batch, length, dtype=torch.bool)
    return data


def world_model() -> WorldModel:
    torch.manual_seed(0)
    return WorldModel(NUM_ACTIONS, **WM_SIZES)


# Losses and gradients of the fp32 model on the device against the fp32 model on the CPU. The
# same fp32 arithmetic in another order: measured 0 on the CPU; 1e-4 relative for the losses (a
# sum of 12,288 squared pixel errors among them), 1e-3 relative (Frobenius, per parameter) for
# the gradients, where cancellation makes single entries meaningless.
LOSS_RTOL, LOSS_ATOL, GRAD_TOLERANCE = 1e-4, 1e-5, 1e-3
DISCRETE_PARTS = ("cont_accuracy",)  # a logit at 0 +- 1e-6 may flip: within one entry


def test_world_model_loss_on_the_device_matches_the_cpu(device, no_tf32):
    """`WorldModel.loss` of one set of weights in fp32 on the CPU and on the device (the latents'
    probabilities stand in for their samples, so both see the same z): the total and every part
    agree; the gradients are finite, on the device and agree; and so do the BatchNorm statistics
    the step updated.

    (No fp64 reference: the model is fp32 by design, its encoder takes frames as fp32 and its
    sampler and losses cast to fp32, so `WorldModel.double().loss` fails at the first conv.)"""
    reference = world_model()
    model = copy.deepcopy(reference).to(device)
    for m in (reference, model):
        m.sample = expected_latent
    batch = replay_batch()
    total_ref, parts_ref = reference.loss(batch)
    total, parts = model.loss(move(batch, device))
    assert_on(total, device, "loss")
    assert total.dtype == torch.float32
    torch.testing.assert_close(total.cpu(), total_ref.detach(), rtol=LOSS_RTOL, atol=LOSS_ATOL)
    assert parts.keys() == parts_ref.keys()
    for name, value in parts.items():
        assert_on(value, device, name)
        if name in DISCRETE_PARTS:
            assert abs(float(value) - float(parts_ref[name])) <= 1.01 / batch["reward"].numel()
        else:
            torch.testing.assert_close(
                value.cpu(), parts_ref[name], rtol=LOSS_RTOL, atol=LOSS_ATOL, msg=name
            )

    total_ref.backward()
    total.backward()
    reference_params = dict(reference.named_parameters())
    for name, param in model.named_parameters():
        want = reference_params[name].grad
        if want is None:  # a parameter the loss does not reach reaches it on neither device
            assert param.grad is None, name
            continue
        assert_on(param.grad, device, f"grad of {name}")
        assert torch.isfinite(param.grad).all(), name
        if want.abs().max() == 0:
            assert param.grad.abs().max() <= 1e-6, name
        else:
            assert rel_error(param.grad, want) < GRAD_TOLERANCE, name
    reference_buffers = dict(reference.named_buffers())
    for name, buffer in model.named_buffers():
        assert_on(buffer, device, name)
        torch.testing.assert_close(buffer.cpu(), reference_buffers[name], rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- c. imagination

AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def agent(device: torch.device) -> tuple[WorldModel, ActorCritic]:
    model = world_model().to(device)
    torch.manual_seed(1)
    actor_critic = ActorCritic(NUM_ACTIONS, state_dim=model.state_dim, **AC_SIZES).to(device)
    return model, actor_critic


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


@pytest.mark.parametrize("reward_timing", REWARD_TIMINGS)
@pytest.mark.parametrize("precision", list(AUTOCAST))
def test_imagination_on_the_device(device, reward_timing, precision):
    """`imagine` from real contexts on the device, in fp32 and under bf16 / fp16 autocast (as in
    mixed-precision training): shapes, dtypes, valid actions, finite values, everything on the
    device, the training mode restored; the same seed imagines the same rollout again; and the
    actor-critic loss on it has finite gradients on the device."""
    model, actor_critic = agent(device)
    n, horizon = 8, 6
    context = move(context_of(replay_batch(batch=n, length=6), length=4), device)
    dtype = AUTOCAST[precision]

    def rollout() -> dict[str, torch.Tensor]:
        with autocast(device, dtype):
            return model.imagine(context, actor_critic.act, horizon, reward_timing=reward_timing)

    torch.manual_seed(123)
    imagined = rollout()
    assert model.training  # imagination runs in eval mode and restores the mode
    expected = {
        "states": ((n, horizon + 1, model.state_dim), torch.float32),
        "actions": ((n, horizon), torch.int64),
        "rewards": ((n, horizon), torch.float32),
        "terminations": ((n, horizon), torch.float32),
        "cont": ((n, horizon), torch.float32),
    }
    assert imagined.keys() == expected.keys()
    for key, (shape, want_dtype) in expected.items():
        value = imagined[key]
        assert tuple(value.shape) == shape and value.dtype == want_dtype, (key, value.shape)
        assert_on(value, device, key)
        if value.is_floating_point():
            assert torch.isfinite(value).all(), key
    assert ((imagined["actions"] >= 0) & (imagined["actions"] < NUM_ACTIONS)).all()
    assert ((imagined["terminations"] == 0) | (imagined["terminations"] == 1)).all()
    torch.testing.assert_close(imagined["cont"], 1.0 - imagined["terminations"], rtol=0, atol=0)
    # The latents are one-hot per categorical (up to the rounding of the straight-through
    # estimator's `one_hot + probs - probs`, 1 ulp of 1.0).
    z = imagined["states"][..., : model.latent_dim].unflatten(-1, (model.stoch, model.classes))
    one_hot = F.one_hot(z.argmax(-1), model.classes).float()
    torch.testing.assert_close(z, one_hot, rtol=0, atol=1e-6)

    torch.manual_seed(123)  # the device's RNG is seeded too: the same rollout, bit for bit
    again = rollout()
    for key, value in imagined.items():
        torch.testing.assert_close(again[key], value, rtol=0, atol=0, msg=key)

    with autocast(device, dtype):
        loss, stats = actor_critic.loss(imagined)
    assert_on(loss, device, "actor-critic loss")
    assert torch.isfinite(loss) and all(torch.isfinite(v) for v in stats.values()), stats
    loss.backward()
    for name, param in actor_critic.named_parameters():
        if param.requires_grad:  # the slow critic is an EMA, not trained
            assert param.grad is not None and torch.isfinite(param.grad).all(), name
            assert_on(param.grad, device, f"grad of {name}")


def tensors_in(state) -> list[torch.Tensor]:
    """The tensors of a nested (tuple / list) policy state."""
    if isinstance(state, torch.Tensor):
        return [state]
    return (
        [t for part in state for t in tensors_in(part)] if isinstance(state, (tuple, list)) else []
    )


@pytest.mark.parametrize("acting", ["reference", "posterior"])
def test_acting_on_the_device(device, acting):
    """The policies the collector calls: CPU frames in, CPU actions out, the recurrent state on
    the model's device, over an episode start in the middle of the batch."""
    model, actor_critic = agent(device)
    policy = make_policy(acting, model, actor_critic, greedy=False, context=4)
    frames = synthetic_batch(3, 5, NUM_ACTIONS, seed=2)["obs"]  # [N, T, 64, 64, 3] uint8 on CPU
    state, is_first = None, torch.ones(3, dtype=torch.bool)
    for t in range(frames.shape[1]):
        action, state = policy(frames[:, t], is_first, state)
        assert action.device.type == "cpu" and action.dtype == torch.int64
        assert action.shape == (3,) and ((action >= 0) & (action < NUM_ACTIONS)).all()
        assert tensors_in(state), state
        for i, tensor in enumerate(tensors_in(state)):
            assert_on(tensor, device, f"policy state {i}")
            if tensor.is_floating_point():
                assert torch.isfinite(tensor).all()
        is_first = torch.tensor([False, t == 2, False])


# ------------------------------------------------------------------------------ d. short fits


def fit_catch(
    device: torch.device,
    root: Path,
    updates: int,
    precision: str,
    callbacks: list[pl.Callback],
    model_hooks: Callable[[DramaModule], None],
) -> tuple[pl.Trainer, DramaModule]:
    """`updates` updates of the debug-sized model on Catch, through Lightning on `device`.

    Small windows (1 x 4 frames): fp16 convolution backward passes have no fast CPU kernel
    (~0.3 s per 64x64 frame of this model on our CPUs), so a 16-mixed fit on the CPU stays short.
    """
    pl.seed_everything(0)
    warmup = 8
    datamodule = DramaDataModule(
        ENV_ID, capacity=64, warmup_steps=warmup, total_env_steps=warmup + updates,
        batch_size=1, seq_len=4, imagine_batch=8, imagine_context=4, replay_dir="memory",
        eval_episodes=1, eval_envs=1, eval_max_steps=5,
    )  # fmt: skip
    model = DramaModule(datamodule.num_actions, **{**DEBUG["model"], "warmup_updates": 0})
    model_hooks(model)
    accelerator, devices = lightning_device(device)
    if precision == "16-mixed":
        # Given as a plugin: Lightning turns `precision="16-mixed"` on a CPU into bf16-mixed
        # (with a warning), and this test is about fp16. The initial loss scale 2^16 of a default
        # GradScaler overflows the world model's first ~10 backward passes, skipped steps that
        # would leave nothing of the world model trained in a few updates; 2^4 does not.
        scaler = torch.amp.GradScaler(device.type, init_scale=2.0**4)
        precision_args = dict(plugins=[MixedPrecision("16-mixed", device.type, scaler=scaler)])
    else:
        precision_args = dict(precision=precision)
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=devices,
        **precision_args,
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=callbacks,
        default_root_dir=root,
    )
    trainer.fit(model, datamodule=datamodule)
    return trainer, model


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_a_short_mixed_precision_fit_on_the_device(device, tmp_path, precision):
    """Three updates of the debug-sized model on Catch, in bf16-mixed and 16-mixed (with AMP's
    loss scaler): every update runs under the autocast asked for, every loss is finite, both
    optimisers took their steps, and every parameter and buffer is finite and on the device."""
    autocast_dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}[precision]
    seen: dict[str, list] = {"autocast": [], "wm": [], "ac": [], "grad_norms": [], "scale": []}
    initial: dict[str, torch.Tensor] = {}

    def watch(model: DramaModule) -> None:
        wm_loss, ac_loss = model.world_model.loss, model.actor_critic.loss

        def world_model_loss(batch, *args, **kwargs):
            seen["autocast"].append(
                (torch.is_autocast_enabled(device.type), torch.get_autocast_dtype(device.type))
            )
            assert_on(batch["obs"], device, "the batch")
            out = wm_loss(batch, *args, **kwargs)
            seen["wm"].append(float(out[0]))
            return out

        def actor_critic_loss(imagined):
            out = ac_loss(imagined)
            seen["ac"].append(float(out[0]))
            return out

        model.world_model.loss = world_model_loss
        model.actor_critic.loss = actor_critic_loss
        initial.update({k: v.detach().clone() for k, v in model.state_dict().items()})

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args) -> None:
            seen["grad_norms"].append({k: float(v) for k, v in pl_module._grad_norms.items()})
            scaler = getattr(trainer.precision_plugin, "scaler", None)
            seen["scale"].append(None if scaler is None else float(scaler.get_scale()))

    updates = 3
    trainer, model = fit_catch(device, tmp_path, updates, precision, [Record()], watch)

    assert trainer.precision == precision  # not quietly another precision
    assert seen["autocast"] == [(True, autocast_dtype)] * updates
    assert len(seen["wm"]) == len(seen["ac"]) == updates
    assert all(math.isfinite(v) for v in seen["wm"] + seen["ac"]), seen
    # No step skipped for non-finite gradients (the module drops them), except where AMP's
    # scaler found an overflow in fp16 and backed off (none on the CPU; AMP's design).
    for norms, scale in zip(seen["grad_norms"], seen["scale"], strict=True):
        assert norms.keys() == {"wm", "ac"}, seen
        finite = all(map(math.isfinite, norms.values()))
        assert finite or (precision == "16-mixed" and scale < 2.0**4), seen
    if precision == "16-mixed":  # the scaler ran, with a usable scale
        assert all(scale is not None and 0 < scale <= 2.0**4 for scale in seen["scale"]), seen
    state = model.state_dict()
    for name, value in state.items():
        assert_on(value, device, name)
        if value.is_floating_point():
            assert torch.isfinite(value).all(), name
    for part in ("world_model.", "actor_critic.actor.", "actor_critic.critic."):
        changed = [
            name
            for name, value in state.items()
            if name.startswith(part) and not torch.equal(value.cpu(), initial[name].cpu())
        ]
        assert changed, f"no parameter of {part} changed in {updates} updates"


# --------------------------------------------------------------------------- e. exact resume


def cli_fit(device: torch.device, total_env_steps: int, *args: str) -> None:
    """debug.yaml (smaller still, see test_cli.TINY) through the CLI, on `device`.

    On its Pong (ALE/Pong-v5), not on Catch: a checkpoint holds the running episodes of Atari
    envs only (the emulator state, `envs.LifeLossInfo.get_state`); a resumed run of any other
    env starts new episodes, and so does not repeat the uninterrupted run (documented in
    `Collector.state_dict`)."""
    accelerator, devices = lightning_device(device)
    main(["fit", "--config", "debug.yaml", *TINY,
          "--data.warmup_steps=16", "--data.batch_size=2", "--data.seq_len=8",
          "--data.imagine_batch=8", "--data.imagine_context=4", "--data.eval_episodes=1",
          "--data.eval_max_steps=5", f"--data.total_env_steps={total_env_steps}",
          f"--trainer.accelerator={accelerator}", f"--trainer.devices={devices}",
          *args])  # fmt: skip


def checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_bit_identical(got, want, where: str) -> None:
    """Nested dicts / lists of tensors and numbers, equal bit for bit."""
    if isinstance(want, torch.Tensor):
        torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True, msg=where)
    elif isinstance(want, dict):
        assert got.keys() == want.keys(), where
        for key in want:
            assert_bit_identical(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), where
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            assert_bit_identical(a, b, f"{where}[{i}]")
    else:
        assert got == want, where


@pytest.fixture
def deterministic(monkeypatch):
    """`torch.use_deterministic_algorithms(True)` for one test, the previous setting after it.

    On CUDA cuBLAS also needs CUBLAS_WORKSPACE_CONFIG=:4096:8 (or :16:8), which tests/conftest.py
    sets at the start of a `--device cuda` session, before CUDA is used; PyTorch checks it on
    every cuBLAS call, so setting it here covers a session where conftest did not."""
    monkeypatch.setenv(
        "CUBLAS_WORKSPACE_CONFIG", os.environ.get("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    )
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def test_a_resumed_fit_on_the_device_is_the_uninterrupted_fit(
    device, tmp_path, monkeypatch, deterministic
):
    """With deterministic algorithms: 6 updates in one fit, against 3 updates, last.ckpt, and a
    resume to the same budget (debug.yaml on Pong through the CLI, see `cli_fit`). Weights,
    buffers, optimiser and scheduler states, the replay's DFS counts and the RNG states at the
    end are bit-identical (the device's RNG state is part of the checkpoint).

    On CUDA with mamba-ssm installed, its fused kernels run the scan; a difference here then
    may come from them (Triton kernels are outside `use_deterministic_algorithms`)."""
    updates, warmup = 6, 16
    (tmp_path / "whole").mkdir()
    (tmp_path / "parts").mkdir()
    monkeypatch.chdir(tmp_path / "whole")
    cli_fit(device, warmup + updates)
    monkeypatch.chdir(tmp_path / "parts")
    cli_fit(device, warmup + updates // 2)
    runs = tmp_path / "parts" / "runs" / "debug"
    cli_fit(device, warmup + updates, f"--ckpt_path={runs / 'version_0/checkpoints/last.ckpt'}")
    assert torch.are_deterministic_algorithms_enabled()  # no fit turned it off

    whole = checkpoint(tmp_path / "whole/runs/debug/version_0/checkpoints/last.ckpt")
    resumed = checkpoint(runs / "version_1/checkpoints/last.ckpt")
    half = datamodule_state(runs / "version_0/checkpoints/last.ckpt")
    assert half["env_steps"] == warmup + updates // 2  # the first part stopped halfway
    assert resumed["DramaDataModule"]["env_steps"] == whole["DramaDataModule"]["env_steps"]
    assert whole["DramaDataModule"]["env_steps"] == warmup + updates
    assert resumed["global_step"] == whole["global_step"] == 2 * updates  # two optimisers
    assert whole["state_dict"].keys() == resumed["state_dict"].keys()
    assert_bit_identical(resumed["state_dict"], whole["state_dict"], "state_dict")
    assert_bit_identical(resumed["optimizer_states"], whole["optimizer_states"], "optimizers")
    assert_bit_identical(resumed["lr_schedulers"], whole["lr_schedulers"], "lr_schedulers")
    assert_bit_identical(
        resumed["DramaDataModule"]["replay"]["n_counts"],
        whole["DramaDataModule"]["replay"]["n_counts"],
        "replay.n_counts",
    )
    # The RNG states saved at the end (the CPU's, numpy's, Python's, and the CUDA devices' on
    # CUDA): both runs drew the same random numbers.
    assert_bit_identical(resumed["rng"], whole["rng"], "rng")
