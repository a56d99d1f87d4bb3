"""`--model.compile`: the compiled world-model loss, imagination step and actor agree with eager.

Sampling is replaced by the mode (latents) and the most likely action, so that the two
computations compare value for value. "aot_eager" runs dynamo's capture and AOT autograd (graph
breaks, mutations, the backward) in seconds; Inductor's code generation (C++ here, Triton on a
GPU) takes minutes on a 2-core CPU, so that variant is a `device` test: the GPU check runs it.
"""

import os

import pytest
import torch

from lightning_drama.agent import ActorCritic
from lightning_drama.module import DramaModule
from tests.test_world_model import context_of, mode_sample, small_model, synthetic_batch


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def compare_compiled_with_eager(backend: str, device: torch.device, grad_rtol: float) -> None:
    model = small_model().to(device)
    mode_sample(model)
    agent = ActorCritic(3, state_dim=model.state_dim, actor_hidden=32, critic_hidden=32)
    agent.to(device)
    batch = {k: v.to(device) for k, v in synthetic_batch(batch=2, length=16).items()}

    def greedy(state):
        return agent.act(state, greedy=True)

    initial = {k: v.clone() for k, v in model.state_dict().items()}

    def run(loss, step, act):
        model.load_state_dict(initial)  # the loss updates BatchNorm's running statistics
        torch.manual_seed(1)
        model.zero_grad(set_to_none=True)
        value, parts = loss(batch)
        value.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        imagined = model.imagine(context_of(batch), act, 4, step=step)
        return value.detach(), grads, imagined

    eager = run(model.loss, None, greedy)
    compiled = run(
        torch.compile(model.loss, backend=backend, dynamic=False),
        torch.compile(model.imagine_step, backend=backend, dynamic=False),
        torch.compile(greedy, backend=backend, dynamic=False),
    )
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-5, atol=1e-6)
    assert len(compiled[1]) == len(eager[1])
    for c, e in zip(compiled[1], eager[1], strict=True):  # fused kernels sum in other orders
        assert (c - e).norm() <= grad_rtol * e.norm() + 1e-7, ((c - e).norm(), e.norm())
    for key in ("states", "actions", "rewards", "terminations"):
        torch.testing.assert_close(compiled[2][key], eager[2][key], rtol=1e-5, atol=1e-5)


def test_captured_loss_imagination_and_act_match_eager(fresh_dynamo):
    compare_compiled_with_eager("aot_eager", torch.device("cpu"), grad_rtol=1e-5)


@pytest.mark.device
@pytest.mark.slow
def test_inductor_loss_imagination_and_act_match_eager(fresh_dynamo, device):
    """Inductor's kernels. Its compile takes minutes on a 2-core CPU, so on a CPU this runs only
    with DRAMA_TEST_INDUCTOR=1; the GPU check runs it on CUDA (`--device cuda -m device`).
    Measured on the CPU: losses agree to 1e-5, but one convolution's weight gradient differs by
    2.5e-3 of its norm (the rest by ~1e-6): not explained yet, hence the looser bound."""
    if device.type == "cpu" and os.environ.get("DRAMA_TEST_INDUCTOR") != "1":
        pytest.skip("Inductor on a CPU compiles for minutes: set DRAMA_TEST_INDUCTOR=1")
    compare_compiled_with_eager("inductor", device, grad_rtol=1e-2)


def test_the_module_compiles_once_and_only_when_asked():
    eager = DramaModule(3, world_model={"d_model": 64, "n_layers": 1})
    fns = eager._training_functions()
    assert fns["wm_loss"] == eager.world_model.loss and fns["imagine_step"] is None
    compiled = DramaModule(3, world_model={"d_model": 64, "n_layers": 1}, compile=True)
    first = compiled._training_functions()
    assert first is compiled._training_functions()  # built once
    assert all(callable(first[k]) for k in ("wm_loss", "imagine_step", "act"))
    assert first["wm_loss"] != compiled.world_model.loss
    assert "compile" not in dict(compiled.named_modules())  # nothing added to the state dict
    assert compiled.state_dict().keys() == eager.state_dict().keys()
