"""Drama's world model: a discrete-latent VAE whose dynamics are a Mamba-2 sequence model.

The sequence model is one switch, `backbone`: "mamba2" (Drama), "mamba" (Mamba-1), "transformer"
(the reference's baseline) or "gru"; all share one contract (`lightning_drama.ssm.backbones`).

Time alignment (replay row t holds o_t, the action a_t taken after seeing o_t, its reward r_t and
termination flag e_t):

    z_t  ~ posterior(encoder(o_t))              32 categoricals x 32 classes, straight-through
    d_t  = backbone(stem([z_t, onehot(a_t)]))   causal over t, reset where is_first[t]
    d_t  -> reward r_t, termination e_t, prior of z_{t+1}
    o_t  <- decoder(z_t)

The policy state is s_t = [z_t, d_{t-1}]: the current latent and the sequence feature that
predicted it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from lightning_drama.checks import ConfigError, check_float, check_int, check_ints
from lightning_drama.distributions import (
    categorical_entropy,
    categorical_kl,
    kl_free_bits,
    masked_mean,
    sample_straight_through,
    symlog_bins,
    twohot_loss,
    twohot_mean,
    unimix_logits,
)
from lightning_drama.networks import Decoder, Encoder, fan_avg_init_, mlp
from lightning_drama.ssm import RMSNorm
from lightning_drama.ssm.backbones import BACKBONES, build_backbone

Policy = Callable[[torch.Tensor], torch.Tensor]  # policy state [N, S] -> action int64 [N]

# Which feature an imagined step's reward and termination are read from (see `imagine`).
REWARD_TIMINGS = ("reference", "outcome")


class WorldModel(nn.Module):
    """Encoder, categorical latents, Mamba-2 dynamics, reward / termination heads and decoder.

    Args:
        num_actions: size of the discrete action space A.
        encoder_channels: conv channels of the encoder; the decoder mirrors them
            (paper: 16, 32, 48, 64, 64).
        image_size: frames are `[image_size, image_size, 3]` uint8 (64).
        stoch: number of categorical latents (32).
        classes: classes per categorical latent (32).
        unimix: uniform mixture of the latent distributions (0.01).
        backbone: the sequence model: "mamba2" (Drama), "mamba" (Mamba-1: paper Fig. 2),
            "transformer" (the reference's baseline) or "gru".
        d_model: width of the sequence model (512).
        n_layers: sequence-model layers (2).
        d_state: SSM state size per head (16).
        d_conv: causal conv kernel of the Mamba-2 layer (4).
        expand: inner width = expand * d_model (2).
        headdim: Mamba-2 head size (64).
        ngroups: B/C groups (1).
        chunk_size: Mamba-2's SSD chunk length (64).
        dt_rank: Mamba-1's step-size projection rank ("auto": ceil(d_model / 16)).
        num_heads: Transformer heads (8).
        max_length: Transformer attention window and learned positions (128: the reference's
            longest sequence, its training window; longer windows attend to the last 128 steps).
        positional: Transformer positions, "learned" (the reference) or "sinusoidal".
        dropout: dropout on the backbone's residual branches; None = the reference's for the
            backbone: 0 for the Mamba stacks and the GRU, 0.1 for the Transformer (its only
            `Dropout: 0.1`).
        norm_eps: epsilon of the backbone's RMSNorms (block, final and gated norms; 1e-5 as
            mamba-ssm, which the reference uses).
        head_hidden: hidden width of the reward and termination heads (256).
        num_bins: two-hot bins of the reward head (255).
        bin_range: the bins span [-bin_range, bin_range] in symlog space (20).
        free_bits: KL free bits in nats (1.0).
        dyn_scale: weight of the dynamics KL, KL(sg(post) || prior) (1.0).
        rep_scale: weight of the representation KL, KL(post || sg(prior)) (0.1).
        grad_clip: gradient-norm clip the training module applies to this model (1000).
        zero_reward_init: start the reward head's output layer at zero, so every predicted reward
            is exactly 0 before training (DreamerV3); the reference initialises it like the
            layers before it (False).
    """

    def __init__(
        self,
        num_actions: int,
        encoder_channels: Sequence[int] = (16, 32, 48, 64, 64),
        image_size: int = 64,
        stoch: int = 32,
        classes: int = 32,
        unimix: float = 0.01,
        backbone: str = "mamba2",
        d_model: int = 512,
        n_layers: int = 2,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        headdim: int = 64,
        ngroups: int = 1,
        chunk_size: int = 64,
        dt_rank: int | str = "auto",
        num_heads: int = 8,
        max_length: int = 128,
        positional: str = "learned",
        dropout: float | None = None,
        norm_eps: float = 1e-5,
        head_hidden: int = 256,
        num_bins: int = 255,
        bin_range: float = 20.0,
        free_bits: float = 1.0,
        dyn_scale: float = 1.0,
        rep_scale: float = 0.1,
        grad_clip: float = 1000.0,
        zero_reward_init: bool = False,
    ) -> None:
        super().__init__()
        where = "model.world_model"
        check_int("model", "num_actions", num_actions, 1)
        encoder_channels = check_ints(where, "encoder_channels", encoder_channels)
        for name, value in (("image_size", image_size), ("stoch", stoch), ("d_model", d_model),
                            ("n_layers", n_layers), ("d_state", d_state), ("d_conv", d_conv),
                            ("expand", expand), ("headdim", headdim), ("ngroups", ngroups),
                            ("chunk_size", chunk_size), ("head_hidden", head_hidden),
                            ("num_heads", num_heads), ("max_length", max_length)):  # fmt: skip
            check_int(where, name, value, 1)
        if backbone not in BACKBONES:
            raise ConfigError(
                f"{where}.backbone must be one of {', '.join(BACKBONES)}, got {backbone!r}"
            )
        if dt_rank != "auto":
            check_int(where, "dt_rank", dt_rank, 1)
        check_int(where, "classes", classes, 2)
        check_int(where, "num_bins", num_bins, 2)
        check_float(where, "unimix", unimix, minimum=0.0, below=1.0)
        if dropout is not None:
            check_float(where, "dropout", dropout, minimum=0.0, below=1.0)
        check_float(where, "norm_eps", norm_eps, above=0.0)
        check_float(where, "bin_range", bin_range, above=0.0)
        for name, value in (("free_bits", free_bits), ("dyn_scale", dyn_scale),
                            ("rep_scale", rep_scale)):  # fmt: skip
            check_float(where, name, value, minimum=0.0)
        check_float(where, "grad_clip", grad_clip, above=0.0)
        if image_size % 2 ** (len(encoder_channels) - 1):
            raise ConfigError(
                f"{where}.image_size {image_size} must be divisible by "
                f"2^{len(encoder_channels) - 1} (one stride-2 conv per encoder layer but the first)"
            )
        self.num_actions = num_actions
        self.image_size = image_size
        self.stoch, self.classes = stoch, classes
        self.latent_dim = stoch * classes
        self.d_model = d_model
        self.state_dim = self.latent_dim + d_model  # policy state [z_t, d_{t-1}]
        self.unimix = unimix
        self.free_bits, self.dyn_scale, self.rep_scale = free_bits, dyn_scale, rep_scale
        self.grad_clip = grad_clip

        self.encoder = Encoder(encoder_channels, image_size)
        self.posterior = nn.Linear(self.encoder.out_dim, self.latent_dim)
        self.decoder = Decoder(self.latent_dim, tuple(reversed(encoder_channels)), image_size)
        self.backbone_kind = backbone
        if backbone == "transformer":  # the reference Transformer's stem; it ends in the backbone
            self.stem = nn.Sequential(
                nn.Linear(self.latent_dim + num_actions, d_model, bias=False),
                nn.LayerNorm(d_model),
                nn.ReLU(),
            )
        else:  # the reference's Mamba wrapper's
            self.stem = nn.Sequential(
                nn.Linear(self.latent_dim + num_actions, d_model), RMSNorm(d_model), nn.SiLU()
            )
        self.backbone = build_backbone(
            backbone, d_model, n_layers, d_state=d_state, d_conv=d_conv, expand=expand,
            headdim=headdim, ngroups=ngroups, chunk_size=chunk_size, dt_rank=dt_rank,
            num_heads=num_heads, max_length=max_length, positional=positional, dropout=dropout,
            norm_eps=norm_eps,
        )  # fmt: skip
        self.prior = nn.Linear(d_model, self.latent_dim)
        self.reward_head = nn.Sequential(
            mlp(d_model, head_hidden, 1), nn.Linear(head_hidden, num_bins)
        )
        self.termination_head = nn.Sequential(
            mlp(d_model, head_hidden, 1), nn.Linear(head_hidden, 1)
        )
        # The reference's initialisation (mamba-ssm's for the sequence model, the stem's bias
        # zeroed with it; its `weight_init` for the convolutions and the reward / termination
        # heads; PyTorch's defaults for the posterior and prior heads).
        if self.stem[0].bias is not None:
            nn.init.zeros_(self.stem[0].bias)
        for part in (self.encoder, self.decoder, self.reward_head, self.termination_head):
            fan_avg_init_(part)
        if zero_reward_init:  # DreamerV3: the predicted reward starts at exactly 0
            nn.init.zeros_(self.reward_head[-1].weight)
            nn.init.zeros_(self.reward_head[-1].bias)
        self.register_buffer("bins", symlog_bins(num_bins, -bin_range, bin_range), persistent=False)

    # ------------------------------------------------------------------------------ pieces

    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        """obs: [..., H, W, 3] uint8 -> posterior log-probs [..., stoch, classes] (fp32, unimix)."""
        logits = self.posterior(self.encoder(obs))
        return unimix_logits(logits.unflatten(-1, (self.stoch, self.classes)), self.unimix)

    def prior_logits(self, d: torch.Tensor) -> torch.Tensor:
        """d_t: [..., d_model] -> prior log-probs of z_{t+1} [..., stoch, classes] (fp32)."""
        logits = self.prior(d)
        return unimix_logits(logits.unflatten(-1, (self.stoch, self.classes)), self.unimix)

    def sample(self, logits: torch.Tensor) -> torch.Tensor:
        """[..., stoch, classes] -> flat straight-through one-hot sample [..., stoch * classes]."""
        return sample_straight_through(logits).flatten(-2)

    def sequence_input(self, z: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """z: [..., latent_dim], action: [...] int64 -> stem([z, onehot(a)]) [..., d_model]."""
        # == arange, not F.one_hot: that checks the range of `action` with a host read on a CPU
        # (and an out-of-range action gives a zero row here instead of an error)
        a = (action[..., None] == torch.arange(self.num_actions, device=action.device)).to(z.dtype)
        return self.stem(torch.cat([z, a], -1))

    def predict_reward(self, d: torch.Tensor) -> torch.Tensor:
        """d_t: [..., d_model] -> predicted reward r_t [...] (fp32)."""
        return twohot_mean(self.reward_head(d), self.bins)

    def predict_termination(self, d: torch.Tensor) -> torch.Tensor:
        """d_t: [..., d_model] -> termination logit of e_t [...]."""
        return self.termination_head(d).squeeze(-1)

    # ------------------------------------------------------------------------------- training

    def loss(
        self, batch: Mapping[str, torch.Tensor], return_features: bool = False
    ) -> (
        tuple[torch.Tensor, dict[str, torch.Tensor]]
        | tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]
    ):
        """World-model loss on a replay window.

        batch: `obs` [B, L, H, W, 3] uint8, `action` [B, L] int64, `reward` [B, L] float,
        `terminated` [B, L] bool, `is_first` [B, L] bool (the module docstring gives the alignment).

        Returns `(total, parts)`; total = recon + reward + cont + dyn_scale * dyn + rep_scale * rep.
        parts (detached scalars): `recon` (squared error summed over C, H, W, mean over B, L),
        `reward` and `cont` (two-hot CE, BCE of the termination head), `dyn` and `rep` (free-bits
        losses), `kl` (raw mean KL over unmasked steps), `post_entropy`, `prior_entropy`,
        `reward_mae`, `cont_accuracy`. With `return_features=True` a third dict holds (detached)
        the posterior sample `z` [B, L, latent_dim], the sequence features `d` [B, L, d_model]
        and the reconstruction `recon` [B, L, 3, H, W] in [0, 1].
        """
        obs, action = batch["obs"], batch["action"]
        reward, terminated, is_first = batch["reward"], batch["terminated"], batch["is_first"]

        post = self.encode(obs)  # [B, L, S, C]
        z = self.sample(post)  # [B, L, S*C]

        target = (
            obs.permute(0, 1, 4, 2, 3).float() / 255.0
        )  # [B, L, 3, H, W], channels_last strides
        recon = torch.sigmoid(self.decoder(z).float())  # squared error in fp32 even under autocast
        recon_loss = (recon - target).square().sum((-3, -2, -1)).mean()

        d, _ = self.backbone(self.sequence_input(z, action), reset=is_first)  # [B, L, D]
        prior = self.prior_logits(d)  # [B, L, S, C]: prior of z_{t+1}

        reward_logits = self.reward_head(d)  # [B, L, K]
        reward_loss = twohot_loss(reward_logits, reward, self.bins).mean()
        term_logit = self.predict_termination(d).float()  # [B, L]
        cont_loss = F.binary_cross_entropy_with_logits(term_logit, terminated.float())

        # prior_t predicts post_{t+1}, except where a new episode starts at t+1.
        mask = ~is_first[:, 1:]  # [B, L-1]
        kl_dyn = categorical_kl(post[:, 1:].detach(), prior[:, :-1])  # [B, L-1]
        kl_rep = categorical_kl(post[:, 1:], prior[:, :-1].detach())
        dyn_loss, kl = kl_free_bits(kl_dyn, self.free_bits, mask)
        rep_loss, _ = kl_free_bits(kl_rep, self.free_bits, mask)

        total = recon_loss + reward_loss + cont_loss + self.dyn_scale * dyn_loss
        total = total + self.rep_scale * rep_loss
        with torch.no_grad():
            parts = {
                "recon": recon_loss.detach(),
                "reward": reward_loss.detach(),
                "cont": cont_loss.detach(),
                "dyn": dyn_loss.detach(),
                "rep": rep_loss.detach(),
                "kl": kl.detach(),
                "post_entropy": categorical_entropy(post).sum(-1).mean(),
                "prior_entropy": masked_mean(categorical_entropy(prior[:, :-1]).sum(-1), mask),
                "reward_mae": (twohot_mean(reward_logits, self.bins) - reward).abs().mean(),
                "cont_accuracy": ((term_logit > 0) == terminated).float().mean(),
            }
        if return_features:
            return total, parts, {"z": z.detach(), "d": d.detach(), "recon": recon.detach()}
        return total, parts

    # ---------------------------------------------------------------------------- imagination

    @torch.no_grad()
    def imagine(
        self,
        context: Mapping[str, torch.Tensor],
        policy: Policy,
        horizon: int = 16,
        reward_timing: str = "reference",
        step: Callable | None = None,
    ) -> dict[str, torch.Tensor]:
        """Roll the model out from real contexts with `policy`, without gradients.

        context: `start_obs` [N, C, H, W, 3] uint8, `start_action` [N, C] int64, `start_is_first`
        [N, C] bool (other `start_*` keys are ignored). policy: state [N, state_dim] -> action [N].

        The context gives d_{-1} := d_{C-1} and z_0 ~ prior(d_{-1}) (`context_features`). Then:

            s_0 = [z_0, d_{-1}]
            for k = 0..horizon-1:
                a_k ~ policy(s_k);  d_k = backbone.step(stem([z_k, a_k]))
                z_{k+1} ~ prior(d_k);  s_{k+1} = [z_{k+1}, d_k]

        and the reward r_k and termination e_k of step k are read from
        - `reward_timing="reference"` (the Drama code, `reward_decoder(dist_feat[:, :-1])`):
          d_{k-1}, the feature that predicted s_k, i.e. the outcome of the previous action
          (for k = 0 that of the context's last action);
        - `"outcome"`: d_k, the outcome of a_k.

        Returns a dict of fp32 / int64 tensors: `states` [N, horizon+1, state_dim] (s_0..s_H),
        `actions` [N, horizon], `rewards` [N, horizon] (predicted mean), `terminations` [N, horizon]
        (1.0 where the termination logit is > 0), `cont` = 1 - terminations. Runs with the model in
        eval mode (BatchNorm running statistics, no dropout) and restores the previous mode. A
        context whose last action ended the episode (`start_terminated[:, -1]`) has no successor
        state; the replay never picks such starts (`ReplayBuffer.valid_imagination_starts`), and
        nothing here masks them.

        `step` replaces :meth:`imagine_step` (e.g. a `torch.compile` d version of it; its outputs
        are cloned before the next call, as CUDA graphs reuse their output memory).
        """
        if reward_timing not in REWARD_TIMINGS:
            raise ValueError(
                f"unknown reward_timing {reward_timing!r}; choose one of {REWARD_TIMINGS}"
            )
        obs, action, is_first = (
            context["start_obs"],
            context["start_action"],
            context["start_is_first"],
        )
        with self._eval_mode():
            z, d, state = self.context_features(obs, action, is_first)  # z_0, d_{-1}
            states, actions, features = [torch.cat([z, d.to(z.dtype)], -1)], [], [d]
            for _ in range(horizon):
                a = policy(states[-1])  # [N]
                if step is None:
                    z, d, state = self.imagine_step(z, a, state)
                else:
                    z, d, state = step(z, a, state)
                    z, d, state = z.clone(), d.clone(), tuple(t.clone() for t in state)
                states.append(torch.cat([z, d.to(z.dtype)], -1))
                actions.append(a)
                features.append(d)
            # d_{k-1} for k = 0..H-1 ("reference"), or d_k ("outcome")
            d_reward = torch.stack(
                features[:-1] if reward_timing == "reference" else features[1:], 1
            )
            rewards = self.predict_reward(d_reward)  # [N, H]
            term_logits = self.predict_termination(d_reward).float()
        terminations = (term_logits > 0).float()
        return {
            "states": torch.stack(states, 1).float(),
            "actions": torch.stack(actions, 1),
            "rewards": rewards,
            "terminations": terminations,
            "cont": 1.0 - terminations,
        }

    def imagine_step(
        self, z: torch.Tensor, action: torch.Tensor, state: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
        """One step of imagination: d_k = backbone.step(stem([z_k, a_k])), z_{k+1} ~ prior(d_k).
        Returns `(z_{k+1}, d_k, state)`. Fixed shapes: the unit that `--model.compile` compiles."""
        d, state = self.backbone.step(self.sequence_input(z, action), state)
        return self.sample(self.prior_logits(d)), d, state

    def context_features(
        self, obs: torch.Tensor, action: torch.Tensor, is_first: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
        """The state after a real context: what imagination starts from and what the reference
        acts on.

        obs: [N, C, H, W, 3] uint8; action: [N, C] int64; is_first: [N, C] bool (the sequence
        model resets there; rows before a reset do not matter, so shorter contexts can be
        left-padded). The context frames are encoded to posterior samples z^c_0..z^c_{C-1} and
        run through the backbone in parallel with their actions, giving d_{C-1}, the feature
        after the last frame and its action. Returns `(z, d, state)`: a prior sample
        z ~ prior(d_{C-1}) [N, latent_dim], d_{C-1} [N, d_model] and the backbone state for
        continuing with `backbone.step`. Call without gradients, in eval mode.
        """
        z_ctx = self.sample(self.encode(obs))  # [N, C, S*C]
        d_ctx, state = self.backbone(self.sequence_input(z_ctx, action), reset=is_first)
        d = d_ctx[:, -1]  # d_{C-1}: [N, D]
        return self.sample(self.prior_logits(d)), d, state

    # ------------------------------------------------------------------------ real environment

    def initial_state(
        self, batch_size: int, device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, ...]:
        """State for `observe`: `(z_prev [N, latent_dim], *backbone_state)`, batch dim first."""
        z = torch.zeros(batch_size, self.latent_dim, device=device)
        return (z, *self.backbone.initial_state(batch_size, device=device))

    @torch.no_grad()
    def observe(
        self,
        obs: torch.Tensor,
        prev_action: torch.Tensor,
        is_first: torch.Tensor,
        state: tuple[torch.Tensor, ...] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """One real-environment step in O(1): the policy input for o_t and the new recurrent state.

        obs: o_t [N, H, W, 3] uint8; prev_action: a_{t-1} [N] int64 (ignored where is_first);
        is_first: [N] bool; state: `(z_{t-1}, *backbone_state)` from the previous call (None =
        start, every row is treated as is_first).

        d_{t-1} = backbone.step(stem([z_{t-1}, a_{t-1}])); z_t ~ posterior(o_t); returns
        `policy_input = [z_t, d_{t-1}]` [N, state_dim] and the state `(z_t, *backbone_state)`.
        At an episode start there is no previous step: d_{-1} = 0 and the backbone state is reset,
        so the next step computes d_t from a fresh state exactly like a training window with
        `reset=is_first`. Runs in eval mode (BatchNorm running statistics, no dropout).
        """
        n = obs.shape[0]
        if state is None:
            state = self.initial_state(n, obs.device)
            is_first = torch.ones(n, dtype=torch.bool, device=obs.device)
        z_prev, *backbone_state = state
        with self._eval_mode():
            d, backbone_state = self.backbone.step(
                self.sequence_input(z_prev, prev_action.clamp(0, self.num_actions - 1)),
                tuple(backbone_state),
            )
            fresh = self.backbone.initial_state(n, device=obs.device)
            backbone_state = tuple(
                torch.where(is_first.view(-1, *[1] * (s.dim() - 1)), f.to(s.dtype), s)
                for s, f in zip(backbone_state, fresh, strict=True)
            )
            d = torch.where(is_first[:, None], 0.0, d.float())
            z = self.sample(self.encode(obs)).float()
        return torch.cat([z, d], -1), (z, *backbone_state)

    @torch.no_grad()
    def observe_context(
        self, obs: torch.Tensor, action: torch.Tensor, is_first: torch.Tensor
    ) -> torch.Tensor:
        """The reference code's acting state: re-run the model over a short real context.

        obs: the last K frames o_{t-K}..o_{t-1} [N, K, H, W, 3] uint8; action: the actions taken
        on them [N, K] int64; is_first: [N, K] bool, True at the first frame of the episode in
        the window (rows before it are padding and do not matter). The current frame o_t is not
        looked at. Returns `policy_input = [z_t, d_{t-1}]` [N, state_dim] with z_t a *prior*
        sample from d_{t-1} (see `context_features`). Runs in eval mode.
        """
        with self._eval_mode():
            z, d, _ = self.context_features(obs, action, is_first)
        return torch.cat([z.float(), d.float()], -1)

    # ---------------------------------------------------------------------------------- misc

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per part (the paper's breakdown) and in total."""

        def count(*modules: nn.Module) -> int:
            return sum(p.numel() for m in modules for p in m.parameters())

        counts = {
            "encoder": count(self.encoder),
            "decoder": count(self.decoder),
            "latent_heads": count(self.posterior, self.prior),
            "reward": count(self.reward_head),
            "termination": count(self.termination_head),
            "sequence_model": count(self.stem, self.backbone),
        }
        counts["total"] = sum(counts.values())
        if counts["total"] != count(self):
            raise AssertionError("WorldModel.parameter_counts misses a submodule")
        return counts

    @contextmanager
    def _eval_mode(self):
        modes = {m: m.training for m in self.modules()}
        self.eval()
        try:
            yield
        finally:
            # The flag of each module itself: `m.train()` would recurse into its children, making
            # this quadratic in the module count (milliseconds per acting step).
            for m, training in modes.items():
                m.training = training
