"""WorldModel: losses, imagination, episode boundaries, the O(1) acting path, size, bf16."""

import pytest
import torch
import torch.nn.functional as F

from lightning_drama.optim import LaProp
from lightning_drama.ssm.backbones import BACKBONES
from lightning_drama.world_model import WorldModel

SMALL = dict(
    encoder_channels=(4, 8, 8, 8, 8),
    stoch=8,
    classes=8,
    d_model=64,
    n_layers=1,
    headdim=16,
    chunk_size=16,
    head_hidden=32,
)


def small_model(num_actions: int = 3, seed: int = 0, **kwargs) -> WorldModel:
    torch.manual_seed(seed)
    return WorldModel(num_actions, **{**SMALL, **kwargs})


def synthetic_batch(
    batch: int = 4, length: int = 32, num_actions: int = 3, seed: int = 0, size: int = 64
):
    """A bright square moving over a dark frame; reward 1 for action 1, episode ends on action 2."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.zeros(batch, length, size, size, 3, dtype=torch.uint8)
    start = torch.randint(0, size, (batch,), generator=g)
    side = size // 4
    for b in range(batch):
        for t in range(length):
            x = (int(start[b]) + t) % (size - side)
            obs[b, t, side : 2 * side, x : x + side, b % 3] = 255
    action = torch.randint(0, num_actions, (batch, length), generator=g)
    is_first = torch.zeros(batch, length, dtype=torch.bool)
    is_first[:, 0] = True
    return {
        "obs": obs,
        "action": action,
        "reward": (action == 1).float(),
        "terminated": action == 2,
        "is_first": is_first,
    }


def mode_sample(model: WorldModel) -> None:
    """Replace sampling by the distribution's mode, to compare two computations exactly."""
    model.sample = lambda logits: F.one_hot(logits.argmax(-1), logits.shape[-1]).float().flatten(-2)


def context_of(batch, length: int = 8):
    return {
        "start_obs": batch["obs"][:, :length],
        "start_action": batch["action"][:, :length],
        "start_reward": batch["reward"][:, :length],
        "start_terminated": batch["terminated"][:, :length],
        "start_is_first": batch["is_first"][:, :length],
    }


def test_loss_parts_and_shapes():
    model = small_model()
    batch = synthetic_batch(2, 8)
    total, parts, features = model.loss(batch, return_features=True)
    expected = parts["recon"] + parts["reward"] + parts["cont"] + parts["dyn"] + 0.1 * parts["rep"]
    torch.testing.assert_close(total.detach(), expected)
    assert parts["dyn"] >= 1.0 and parts["rep"] >= 1.0  # free bits
    assert all(v.dim() == 0 for v in parts.values())  # loggable as they are
    assert features["z"].shape == (2, 8, 64) and features["d"].shape == (2, 8, 64)
    assert features["recon"].shape == (2, 8, 3, 64, 64)
    total.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "backbone" not in n)
    # The reference initialises the reward output like its other layers: not a uniform head.
    log_bins = torch.log(torch.tensor(255.0)).item()
    assert parts["reward"].item() != pytest.approx(log_bins, rel=1e-3)
    # zero_reward_init (DreamerV3): the prediction starts at exactly 0, the loss at log(255).
    _, parts = small_model(zero_reward_init=True).loss(batch)
    assert parts["reward"].item() == pytest.approx(log_bins, rel=1e-5)


def test_initialisation_follows_the_reference():
    from lightning_drama.ssm import Mamba2Backbone

    model = small_model()
    # weight_init: truncated normal, std sqrt(1 / fan_avg) / 0.8796, zero bias.
    conv = model.encoder.net[3]  # 4 -> 8 channels, kernel 5
    std = (1 / (25 * (4 + 8) / 2)) ** 0.5 / 0.87962566103423978
    assert conv.weight.abs().max() <= 2 * std
    assert conv.weight.std().item() == pytest.approx(std * 0.87962566103423978, rel=0.15)
    for head in (model.reward_head, model.termination_head):
        assert all(torch.all(m.bias == 0) for m in head.modules() if isinstance(m, torch.nn.Linear))
    assert torch.all(model.decoder.linear.bias == 0) and torch.all(model.stem[0].bias == 0)
    # mamba-ssm's out_proj scaled by 1 / sqrt(n_layers): same seed, 1 vs 4 layers.
    torch.manual_seed(0)
    one = Mamba2Backbone(32, 1, headdim=16).mixers[0].out_proj.weight
    torch.manual_seed(0)
    four = Mamba2Backbone(32, 4, headdim=16).mixers[0].out_proj.weight
    torch.testing.assert_close(four, one / 2)


def test_overfits_a_fixed_batch():
    # 32x32 frames (one stride-2 conv fewer) keep this under a few seconds on 2 CPU cores.
    model = small_model(encoder_channels=(4, 8, 8, 8), image_size=32)
    batch = synthetic_batch(4, 32, size=32)
    opt = LaProp(model.parameters(), lr=1e-3, eps=1e-8)
    first = None
    for _ in range(200):
        total, _ = model.loss(batch)
        opt.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), model.grad_clip)
        opt.step()
        first = first if first is not None else total.item()
        if total.item() <= 0.5 * first:
            break
    assert total.item() <= 0.5 * first, (first, total.item())


@pytest.mark.parametrize("backbone", BACKBONES)
def test_imagine_starts_from_the_state_of_a_full_forward_over_the_context(backbone):
    model = small_model(backbone=backbone)
    mode_sample(model)
    batch = synthetic_batch(3, 12)
    ctx = context_of(batch, 8)
    ctx["start_is_first"][1, 4] = True  # a boundary inside one context
    a_imagined = torch.tensor([[2, 0, 1], [1, 1, 0], [0, 2, 2]])
    steps = iter(a_imagined.T)
    im = model.imagine(ctx, lambda s: next(steps), horizon=3, reward_timing="outcome")
    assert im["states"].shape == (3, 4, 64 + 64)
    assert im["actions"].shape == im["rewards"].shape == im["cont"].shape == (3, 3)
    torch.testing.assert_close(im["actions"], a_imagined)

    model.eval()
    with torch.no_grad():
        z = model.sample(model.encode(ctx["start_obs"]))
        z0 = model.sample(
            model.prior_logits(
                model.backbone(
                    model.sequence_input(z, ctx["start_action"]), reset=ctx["start_is_first"]
                )[0][:, -1]
            )
        )
        # One parallel forward over context + the imagined latents and actions gives every d_k.
        z_all = torch.cat([z, z0[:, None]], 1)
        for k in range(3):
            a_all = torch.cat([ctx["start_action"], a_imagined[:, : k + 1]], 1)
            reset = F.pad(ctx["start_is_first"], (0, k + 1), value=False)
            d, _ = model.backbone(model.sequence_input(z_all, a_all), reset=reset)
            if k == 0:
                # s_0 = [z_0 ~ prior(d_{C-1}), d_{C-1}]
                torch.testing.assert_close(im["states"][:, 0], torch.cat([z0, d[:, 7]], -1))
            d_k = d[:, -1]
            torch.testing.assert_close(im["states"][:, k + 1, 64:], d_k, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(im["rewards"][:, k], model.predict_reward(d_k), atol=1e-4,
                                       rtol=1e-4)  # fmt: skip
            z_next = model.sample(model.prior_logits(d_k))
            torch.testing.assert_close(im["states"][:, k + 1, :64], z_next)
            z_all = torch.cat([z_all, z_next[:, None]], 1)
    torch.testing.assert_close(im["cont"], 1.0 - im["terminations"])


def test_imagined_rewards_and_terminations_follow_the_action_that_caused_them():
    # Train the sequence part on fixed latents where r_t = [a_t == 1] and e_t = [a_t == 2].
    model = small_model()
    batch = synthetic_batch(8, 32, seed=1)
    batch["is_first"][:] = False
    with torch.no_grad():
        z = model.sample(model.encode(batch["obs"]))
    params = [*model.stem.parameters(), *model.backbone.parameters(),
              *model.reward_head.parameters(), *model.termination_head.parameters()]  # fmt: skip
    opt = torch.optim.Adam(params, lr=3e-3)
    from lightning_drama.distributions import twohot_loss

    for _ in range(150):
        d, _ = model.backbone(model.sequence_input(z, batch["action"]))
        loss = twohot_loss(model.reward_head(d), batch["reward"], model.bins).mean()
        loss = loss + F.binary_cross_entropy_with_logits(
            model.predict_termination(d), batch["terminated"].float()
        )
        opt.zero_grad()
        loss.backward()
        opt.step()

    def policy(s):
        return torch.randint(0, 3, (s.shape[0],))

    torch.manual_seed(0)
    im = model.imagine(context_of(batch), policy, horizon=6, reward_timing="outcome")
    a = im["actions"]
    assert torch.all((im["rewards"] > 0.5) == (a == 1)), (im["rewards"], a)
    assert torch.all((im["terminations"] == 1) == (a == 2)), (im["terminations"], a)
    # The reference's timing: step k carries the outcome of the previous action, a_{k-1}, and
    # step 0 that of the context's last action.
    torch.manual_seed(0)
    im = model.imagine(context_of(batch), policy, horizon=6)
    previous = torch.cat([context_of(batch)["start_action"][:, -1:], im["actions"][:, :-1]], 1)
    assert torch.all((im["rewards"] > 0.5) == (previous == 1)), (im["rewards"], previous)
    assert torch.all((im["terminations"] == 1) == (previous == 2))


def test_reward_timing_on_a_two_step_rollout_with_a_stub_model():
    # Stub dynamics: the context gives d_{-1}, step k gives d_k; the reward head reads d[0] and
    # the termination logit d[1]. Hand-computed: d_{-1} = (5, +1), d_0 = (100, -1), d_1 = (101, +1).
    model = small_model()
    n, dim = 2, model.d_model

    def feature(reward: float, term_logit: float) -> torch.Tensor:
        d = torch.zeros(n, dim)
        d[:, 0], d[:, 1] = reward, term_logit
        return d

    step_features = iter([feature(100.0, -1.0), feature(101.0, 1.0)])
    z0 = torch.zeros(n, model.latent_dim)
    model.context_features = lambda obs, action, is_first: (z0, feature(5.0, 1.0), ())
    model.backbone.step = lambda x, state, reset=None: (next(step_features), state)
    model.predict_reward = lambda d: d[..., 0]
    model.predict_termination = lambda d: d[..., 1]
    ctx = context_of(synthetic_batch(n, 8))
    zeros = lambda s: torch.zeros(s.shape[0], dtype=torch.long)  # noqa: E731

    im = model.imagine(ctx, zeros, horizon=2)  # the default: reference timing
    torch.testing.assert_close(im["rewards"], torch.tensor([[5.0, 100.0]] * n))
    torch.testing.assert_close(im["terminations"], torch.tensor([[1.0, 0.0]] * n))
    torch.testing.assert_close(im["cont"], torch.tensor([[0.0, 1.0]] * n))

    step_features = iter([feature(100.0, -1.0), feature(101.0, 1.0)])
    im = model.imagine(ctx, zeros, horizon=2, reward_timing="outcome")
    torch.testing.assert_close(im["rewards"], torch.tensor([[100.0, 101.0]] * n))
    torch.testing.assert_close(im["terminations"], torch.tensor([[0.0, 1.0]] * n))
    with pytest.raises(ValueError, match="reward_timing"):
        model.imagine(ctx, zeros, horizon=2, reward_timing="late")


@pytest.mark.parametrize("backbone", BACKBONES)
def test_episode_boundary_gives_the_outputs_of_a_window_starting_there(backbone):
    model = small_model(dropout=0.1, backbone=backbone)
    mode_sample(model)
    model.eval()
    batch = synthetic_batch(2, 24, seed=2)
    b = 9
    batch["is_first"][:, b] = True
    tail = {k: v[:, b:] for k, v in batch.items()}
    with torch.no_grad():
        _, _, parts = model.loss(batch, return_features=True)
        _, _, parts_tail = model.loss(tail, return_features=True)
        torch.testing.assert_close(parts["d"][:, b:], parts_tail["d"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(
            model.predict_reward(parts["d"][:, b:]), model.predict_reward(parts_tail["d"])
        )
        # The KL of the boundary step is masked: changing the frame before it changes nothing there.
        other = {**batch, "obs": batch["obs"].clone()}
        other["obs"][:, :b] = 255 - other["obs"][:, :b]
        _, _, parts_other = model.loss(other, return_features=True)
        torch.testing.assert_close(parts_other["d"][:, b:], parts["d"][:, b:], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_observe_steps_match_a_parallel_forward(backbone):
    model = small_model(backbone=backbone)
    mode_sample(model)
    batch = synthetic_batch(2, 10, seed=3)
    batch["is_first"][0, 6] = True
    state = None
    inputs = []
    for t in range(10):
        prev_action = batch["action"][:, t - 1] if t else torch.zeros(2, dtype=torch.long)
        policy_input, state = model.observe(
            batch["obs"][:, t], prev_action, batch["is_first"][:, t], state
        )
        inputs.append(policy_input)
    inputs = torch.stack(inputs, 1)  # [2, 10, 128]
    assert model.training  # observe restores the mode
    model.eval()
    with torch.no_grad():
        z = model.sample(model.encode(batch["obs"]))
        d, _ = model.backbone(model.sequence_input(z, batch["action"]), reset=batch["is_first"])
    torch.testing.assert_close(inputs[..., :64], z)
    d_prev = torch.cat([torch.zeros(2, 1, 64), d[:, :-1]], 1)  # d_{t-1}
    d_prev[batch["is_first"]] = 0.0
    torch.testing.assert_close(inputs[..., 64:], d_prev, atol=1e-4, rtol=1e-4)


def test_parameter_count_of_the_default_model():
    counts = WorldModel(6).parameter_counts()
    assert abs(counts["total"] - 7.15e6) / 7.15e6 < 0.02, counts
    paper = dict(encoder=0.23e6, decoder=1.28e6, latent_heads=1.57e6, reward=0.20e6,
                 termination=0.13e6, sequence_model=3.73e6 + 512 * 6)  # fmt: skip
    for part, n in paper.items():
        assert abs(counts[part] - n) / n < 0.03, (part, counts[part], n)


def test_sequence_model_of_each_backbone_at_drama_xs_size():
    """The reference's settings: Mamba-2 and Mamba-1 with d_state 16, the Transformer with 8
    heads, 2 layers, 128 positions and its own stem (Linear without bias, LayerNorm, ReLU)."""
    counts = {kind: WorldModel(6, backbone=kind).parameter_counts() for kind in BACKBONES}
    rest = {k: v for k, v in counts["mamba2"].items() if k not in ("sequence_model", "total")}
    for kind in BACKBONES:  # only the sequence model differs
        assert {k: counts[kind][k] for k in rest} == rest
    seq = {kind: counts[kind]["sequence_model"] for kind in BACKBONES}
    assert 3.6e6 < seq["mamba2"] < 3.8e6
    # Mamba-1 by hand: in_proj, conv + bias, x_proj (dt_rank 32 + 2 x 16), dt_proj + bias, A_log,
    # D, out_proj and the block norm per layer; the stem ([z, a] -> 512, RMSNorm); the final norm.
    layer = 512 * 2048 + 1024 * 5 + 1024 * 64 + 32 * 1024 + 1024 + 1024 * 16 + 1024 + 1024 * 512
    assert seq["mamba"] == 2 * (layer + 512) + (1030 * 512 + 512 + 512) + 512
    assert 4.9e6 < seq["transformer"] < 5.2e6 and 3.6e6 < seq["gru"] < 3.8e6
    transformer = WorldModel(6, backbone="transformer")
    assert transformer.stem[0].bias is None and isinstance(transformer.stem[1], torch.nn.LayerNorm)
    assert transformer.backbone.blocks[0].dropout.p == 0.1  # the reference's Dropout: 0.1
    assert WorldModel(6).backbone.dropout.p == 0.0  # and none in its Mamba-2 blocks
    assert WorldModel(6, backbone="mamba").backbone.mixers[0].dt_rank == 32  # ceil(512 / 16)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_bf16_autocast_gives_finite_losses_and_gradients(backbone):
    model = small_model(backbone=backbone)
    batch = synthetic_batch(2, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total, parts = model.loss(batch)
        im = model.imagine(
            context_of(batch), lambda s: torch.zeros(s.shape[0], dtype=torch.long), 4
        )
    total.backward()
    assert total.dtype == torch.float32 and torch.isfinite(total)
    assert all(torch.isfinite(v).all() for v in parts.values())
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert all(torch.isfinite(v.float()).all() for v in im.values())


def test_bad_config_raises_a_clear_error():
    with pytest.raises(ValueError, match="image_size"):
        WorldModel(3, image_size=60)
    with pytest.raises(ValueError, match="num_actions"):
        WorldModel(0)
    with pytest.raises(ValueError, match="backbone must be one of mamba2, mamba, transformer, gru"):
        WorldModel(3, backbone="lstm")
    with pytest.raises(ValueError, match="num_heads"):
        WorldModel(3, backbone="transformer", num_heads=0)


def test_encoder_in_eval_mode_folds_batchnorm_exactly():
    model = small_model()
    obs = synthetic_batch(2, 3)["obs"]
    model.train()
    model.encoder(obs)  # move the running statistics away from (0, 1)
    with torch.no_grad():
        for m in model.encoder.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    model.eval()
    model.encoder.no_grad_frames = 4  # 6 frames: pieces of 4 and 2, SiLU in place
    with torch.no_grad():
        folded = model.encoder(obs)
        unfolded = model.encoder.net(obs.flatten(0, 1).permute(0, 3, 1, 2).float() / 255.0)
    expected = unfolded.permute(0, 2, 3, 1).flatten(1).unflatten(0, (2, 3))
    torch.testing.assert_close(folded, expected)
    # With gradients: one piece, no in-place activation, and the same features.
    torch.testing.assert_close(model.encoder(obs), expected)
