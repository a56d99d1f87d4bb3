"""The DM-H network (`lightning_drama.dmh.model`): shapes and gradients, the valuable sub-goal
targets, the Mamba memory carried across calls, causality, the loss mask and a tiny overfit."""

from __future__ import annotations

import pytest
import torch

from lightning_drama.dmh.model import (
    DecisionMambaHybrid,
    DMHConfig,
    action_loss,
    valuable_subgoals,
)

C = 3  # steps per block
EPISODE = 6  # steps per episode: two blocks


def tiny_model(dropout: float = 0.0, **kwargs) -> DecisionMambaHybrid:
    settings = dict(
        state_dim=2, num_actions=5, c=C, mamba_d_model=16, mamba_layers=2, mamba_d_state=8,
        mamba_headdim=8, mamba_chunk_size=8, gpt_d_model=16, gpt_layers=2, gpt_heads=2,
        max_timestep=16, dropout=dropout, state_scale=0.25,
    )  # fmt: skip
    settings.update(kwargs)
    return DecisionMambaHybrid(DMHConfig(**settings))


def tiny_batch(
    batch_size: int = 2, episodes: int = 3, seed: int = 0, dtype=torch.float32
) -> dict[str, torch.Tensor]:
    """Contexts of ``episodes`` episodes of EPISODE steps on a 5 x 5 grid, the last one masked
    in, returns-to-go counted down from the last episode's return, subgoals from each episode's
    observations (with its final one)."""
    g = torch.Generator().manual_seed(seed)
    B, T = batch_size, EPISODE
    obs = torch.randint(0, 5, (B, episodes, T + 1, 2), generator=g)
    actions = torch.randint(0, 5, (B, episodes, T), generator=g)
    rewards = torch.randint(0, 2, (B, episodes, T), generator=g).to(dtype)
    target = rewards[:, -1].sum(-1)  # [B]: the last trajectory's return
    rtg = target[:, None, None] - _rewards_before(rewards)
    subgoals = torch.stack(
        [
            torch.stack([valuable_subgoals(obs[b, e], rewards[b, e]) for e in range(episodes)])
            for b in range(B)
        ]
    ).to(dtype)
    dones = torch.zeros(B, episodes, T)
    dones[..., -1] = 1
    mask = torch.zeros(B, episodes, T)
    mask[:, -1] = 1
    flat = {
        "states": obs[:, :, :T].to(dtype),
        "actions": actions,
        "rewards": rewards,
        "rtg": rtg,
        "dones": dones,
        "timesteps": torch.arange(T).expand(B, episodes, T),
        "loss_mask": mask,
        "subgoals": subgoals,
    }
    return {k: v.reshape(B, episodes * T, *v.shape[3:]).clone() for k, v in flat.items()}


def _rewards_before(rewards: torch.Tensor) -> torch.Tensor:
    """Rewards collected before each step of its episode."""
    return torch.cumsum(rewards, -1) - rewards


# ----------------------------------------------------------------------------- 1. shapes, grads


def test_shapes_gradients_and_frozen_goal_map():
    torch.manual_seed(0)
    model = tiny_model(dropout=0.1).train()
    batch = tiny_batch()
    B, L = batch["actions"].shape
    K = L // C
    out = model(batch)
    assert out["logits"].shape == (B, L, 5) and out["goal_logits"].shape == (B, L, 5)
    for key in ("z", "z_mean", "z_logvar", "goal_z"):
        assert out[key].shape == (B, K, 2), key
    total, parts = model.loss(batch)
    assert set(parts) == {"loss", "loss_action", "loss_goal"}
    assert torch.isfinite(total)
    model.zero_grad()
    total.backward()
    frozen = {"goal_map.weight", "goal_map.bias"}
    names = {n for n, _ in model.named_parameters()}
    assert frozen <= names  # in the state dict, not trained
    for name, p in model.named_parameters():
        if name in frozen:
            assert not p.requires_grad and p.grad is None, name
            continue
        assert p.requires_grad, name
        assert p.grad is not None, f"{name} has no gradient"
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} has an all-zero gradient"
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    torch.optim.Adam(model.parameters(), lr=1e-2).step()
    after = dict(model.named_parameters())
    for name in frozen:
        assert torch.equal(before[name], after[name]), name
    assert not torch.equal(before["z_head.weight"], after["z_head.weight"])
    assert not torch.equal(before["mamba_done.weight"], after["mamba_done.weight"])


# -------------------------------------------------------------------------- 2. valuable sub-goals


def _states(n: int) -> torch.Tensor:
    """Row t = (t, 10 t): a state names its index."""
    t = torch.arange(n, dtype=torch.float64)
    return torch.stack([t, 10 * t], 1)


@pytest.mark.parametrize(
    ("rewards", "expected"),
    [
        # i=0: means over j=1..5: 0, .5, 1/3, 1/4, 2/5 -> 2; i=2: 0, 0, 1/3 -> 5.
        ([0, 1, 0, 0, 1], [2, 2, 5, 5, 5]),
        # Exact ties go to the earliest j: i=2 has mean 1 at j=3 and j=4; i=0: 0, 0, 1/3, 1/2.
        ([0, 0, 1, 1], [4, 4, 3, 4]),
        # i=0: 1/3 at j=3 ties 2/6 at j=6 -> 3; i=3: 0, 0, 1/3 -> 6.
        ([0, 0, 1, 0, 0, 1], [3, 3, 3, 6, 6, 6]),
        # No reward at all: every step's goal is the next state (all means tie at 0).
        ([0, 0, 0], [1, 2, 3]),
        # Penalties (T-maze-like): the least negative mean wins. i=0: -.1, -.05, -1/30 -> 3.
        ([-0.1, 0.0, 0.0], [3, 2, 3]),
        # A tie broken by rounding alone: from i = 0, mean(.1, .3) = .2 but mean(.1, .3, .2)
        # computes as .20000000000000004; within the tolerance, so the earlier j = 2 wins.
        ([0.1, 0.3, 0.2], [2, 2, 3]),
    ],
)
def test_valuable_subgoals_with_final_observation(rewards, expected):
    T = len(rewards)
    states = _states(T + 1)
    goals = valuable_subgoals(states, torch.tensor(rewards, dtype=torch.float64))
    assert goals.shape == (T, 2)
    assert goals[:, 0].tolist() == expected
    assert torch.equal(goals, states[expected])
    assert goals[-1, 0] == T  # the last step's goal is the final observation


def test_valuable_subgoals_without_final_observation():
    # States s_0..s_4 only: candidates stop at s_4 and the last step keeps itself.
    rewards = torch.tensor([0.0, 1.0, 0.0, 0.0, 1.0])
    goals = valuable_subgoals(_states(5), rewards)
    # i=0: j=1..4: 0, .5, 1/3, 1/4 -> 2; i=2: j=3, 4: 0, 0 -> tie, 3; i=3: j=4 -> 4; i=4 -> 4.
    assert goals[:, 0].tolist() == [2, 2, 3, 4, 4]
    with pytest.raises(ValueError):
        valuable_subgoals(_states(7), rewards)
    # numpy inputs work too (the data pipeline's arrays)
    goals_np = valuable_subgoals(_states(6).numpy(), rewards.numpy())
    assert goals_np[:, 0].tolist() == [2, 2, 5, 5, 5]


# --------------------------------------------------------------------- 3. carried Mamba memory


@pytest.mark.parametrize("kind", ["mamba2", "mamba"])
def test_memory_carried_across_calls_equals_one_pass(kind):
    torch.manual_seed(1)
    model = tiny_model(mamba_kind=kind).double().eval()
    batch = tiny_batch(episodes=4, dtype=torch.float64)  # L = 24: K = 8 blocks, 32 Mamba tokens
    args = [batch[k] for k in ("states", "rtg", "rewards", "dones")]
    mean, logvar, memory = model.encode_blocks(*args)
    # Two halves (two episodes each), the second from the first's memory.
    half = 2 * EPISODE
    m1, v1, mem1 = model.encode_blocks(*[a[:, :half] for a in args])
    m2, v2, mem2 = model.encode_blocks(*[a[:, half:] for a in args], memory=mem1)
    torch.testing.assert_close(torch.cat([m1, m2], 1), mean, rtol=0, atol=1e-10)
    torch.testing.assert_close(torch.cat([v1, v2], 1), logvar, rtol=0, atol=1e-10)
    for a, b in zip(mem2, memory, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    # Block by block with `step` (the acting API), and the GPT's per-step logits.
    out = model(batch)
    torch.testing.assert_close(out["z"], mean, rtol=0, atol=0)  # eval: z is the mean
    B, L = batch["actions"].shape
    mem = model.initial_state(B)
    for k in range(L // C):
        t0 = k * C
        z, mem = model.subgoal(mem, batch["rtg"][:, t0], batch["states"][:, t0])
        torch.testing.assert_close(z, mean[:, k], rtol=0, atol=1e-10)
        for j in range(C):
            logits = model.act_logits(
                z,
                batch["states"][:, t0 : t0 + j + 1],
                batch["actions"][:, t0 : t0 + j],
                batch["rewards"][:, t0 : t0 + j],
                batch["timesteps"][:, t0 : t0 + j + 1],
            )
            torch.testing.assert_close(logits, out["logits"][:, t0 + j], rtol=0, atol=1e-10)
        block = slice(t0, t0 + C)
        mem = model.close_block(
            mem, batch["rewards"][:, block].sum(1), batch["dones"][:, block].amax(1)
        )
    for a, b in zip(mem, memory, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


# ----------------------------------------------------------------------------- 4. causality


def test_causality_of_subgoals_and_actions():
    """z_k depends on the (rtg, state) of block k's first step and on all of blocks < k, never
    on block k's actions, rewards, dones, later states or later returns-to-go, nor on any later
    block. Step t0 + j's logits (t0 = k c) depend on z_k and on the block's states up to t0 + j
    and actions and rewards up to t0 + j - 1 only."""
    torch.manual_seed(2)
    model = tiny_model().double().eval()
    batch = tiny_batch(dtype=torch.float64)
    base = model(batch)
    k, t0 = 3, 3 * C  # block 3: the second block of episode 2
    g = torch.Generator().manual_seed(5)

    def perturbed(**changes):
        new = {key: v.clone() for key, v in batch.items()}
        for key, where in changes.items():
            shape = new[key][:, where].shape
            if key == "actions":
                new[key][:, where] = (new[key][:, where] + 1 + torch.randint(0, 4, shape)) % 5
            else:
                new[key][:, where] = new[key][:, where] + 1 + torch.rand(shape, generator=g)
        return model(new)

    # Everything of block k after its (rtg, state) tokens, and all later blocks.
    out = perturbed(
        actions=slice(t0, None),
        rewards=slice(t0, None),
        dones=slice(t0, None),
        states=slice(t0 + 1, None),
        rtg=slice(t0 + 1, None),
    )
    torch.testing.assert_close(out["z"][:, : k + 1], base["z"][:, : k + 1], rtol=0, atol=1e-12)
    torch.testing.assert_close(out["z_logvar"][:, : k + 1], base["z_logvar"][:, : k + 1])
    torch.testing.assert_close(out["logits"][:, :t0], base["logits"][:, :t0], rtol=0, atol=1e-12)
    torch.testing.assert_close(out["logits"][:, t0], base["logits"][:, t0], rtol=0, atol=1e-12)
    assert (out["z"][:, k + 1] - base["z"][:, k + 1]).abs().max() > 1e-6  # later blocks do move

    # Inside block k from step j = 1: the logits of steps t0 and t0 + 1 stay, t0 + 2 moves.
    j = 1
    out = perturbed(
        actions=slice(t0 + j, t0 + C),
        rewards=slice(t0 + j, t0 + C),
        states=slice(t0 + j + 1, t0 + C),
    )
    # z_k and earlier are blind to the block (later z see its reward sum).
    torch.testing.assert_close(out["z"][:, : k + 1], base["z"][:, : k + 1], rtol=0, atol=1e-12)
    keep = slice(0, t0 + j + 1)
    torch.testing.assert_close(out["logits"][:, keep], base["logits"][:, keep], rtol=0, atol=1e-12)
    assert (out["logits"][:, t0 + j + 1] - base["logits"][:, t0 + j + 1]).abs().max() > 1e-6

    # Block k - 1's rewards do reach z_k (not z_{k-1}); block k's first state too.
    for changes in ({"rewards": slice(t0 - C, t0)}, {"states": slice(t0, t0 + 1)}):
        out = perturbed(**changes)
        torch.testing.assert_close(out["z"][:, :k], base["z"][:, :k], rtol=0, atol=1e-12)
        assert (out["z"][:, k] - base["z"][:, k]).abs().max() > 1e-6, changes


# ----------------------------------------------------------------------------- 5. loss mask


def test_loss_ignores_targets_outside_the_last_trajectory():
    torch.manual_seed(3)
    model = tiny_model().eval()
    batch = tiny_batch()
    last = slice(2 * EPISODE, None)  # the last trajectory starts at a block boundary
    base = model(batch)
    # Actions before the last trajectory: targets outside the mask, and inputs that reach the
    # last trajectory's logits through nothing (the Mamba never sees actions, and GPT blocks
    # end at the boundary).
    changed = {k: v.clone() for k, v in batch.items()}
    changed["actions"][:, : last.start] = (changed["actions"][:, : last.start] + 2) % 5
    out = model(changed)
    assert not torch.equal(out["logits"][:, : last.start], base["logits"][:, : last.start])
    for key in ("loss", "loss_action", "loss_goal"):
        assert torch.equal(out[key], base[key]), key
    # The same logits scored against other targets outside the mask: the same loss.
    targets = batch["actions"].clone()
    targets[:, : last.start] = (targets[:, : last.start] + 1) % 5
    same = action_loss(base["logits"], targets, batch["loss_mask"])
    assert torch.equal(same, base["loss_action"])
    # ... and against other targets inside the mask: another loss (the check can fail).
    targets = batch["actions"].clone()
    targets[:, last] = (targets[:, last] + 1) % 5
    assert not torch.allclose(action_loss(base["logits"], targets, batch["loss_mask"]), same)
    # The total is the action loss plus half the goal pass's.
    torch.testing.assert_close(base["loss"], base["loss_action"] + 0.5 * base["loss_goal"])


# ------------------------------------------------------------------------------- 6. overfit


def test_tiny_model_overfits_a_fixed_batch():
    """80 Adam steps at lr 1e-2 divide the loss of a fixed 2 x 12-step batch by at least 20
    (measured: about 2.6 -> 0.003)."""
    torch.manual_seed(4)
    model = tiny_model().train()
    batch = tiny_batch(episodes=2, seed=7)
    batch["loss_mask"] = torch.ones_like(batch["loss_mask"])  # every step a target
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(80):
        loss, _ = model.loss(batch)
        first = float(loss.detach()) if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        final = float(model.eval()(batch)["loss"])
    assert final < first / 20, (first, final)


def test_left_padding_blocks_do_not_reach_the_real_blocks():
    """A context batched behind whole blocks of left padding gives the same sub-goals, logits and
    loss on its real blocks as alone: the Mamba starts afresh at the first real block."""
    torch.manual_seed(0)
    model = tiny_model().double().eval()
    alone = tiny_batch(episodes=2, seed=3, dtype=torch.float64)
    L, c = alone["actions"].shape[1], model.config.c
    extra = 3 * c
    padded = {}
    for key, value in alone.items():
        fill = torch.full_like(value[:, :extra], 7)  # garbage: must not matter
        padded[key] = torch.cat([fill, value], 1)
    real = torch.zeros_like(alone["actions"], dtype=torch.bool)
    padded["pad"] = torch.cat([torch.ones_like(real[:, :extra]), real], 1)
    padded["loss_mask"][:, :extra] = 0
    padded["actions"][:, :extra] = 1
    with torch.no_grad():
        a, p = model(alone), model(padded)
    assert torch.allclose(p["z_mean"][:, 3:], a["z_mean"], atol=1e-10)
    assert torch.allclose(p["logits"][:, extra:], a["logits"], atol=1e-10)
    assert torch.allclose(p["loss"], a["loss"], atol=1e-12)
    # Without the flag the padding would leak into the memory.
    del padded["pad"]
    with torch.no_grad():
        leaky = model(padded)
    assert not torch.allclose(leaky["z_mean"][:, 3:], a["z_mean"], atol=1e-6)
    assert L % c == 0
