"""Drama's actor-critic, trained only on imagined trajectories of the world model.

Given `imagined = world_model.imagine(context, actor_critic.act, horizon)` (states s_0..s_H, and for
k < H the action a_k with its outcome r_k, c_k = 1 - e_k):

    V_k, V^slow_k            critic and slow (EMA) critic at s_k
    G_k, G^slow_k            lambda-returns bootstrapped with V and with V^slow
    S                        EMA of the 95th - 5th percentile of G (return scale)
    actor loss  = -mean(log pi(a_k | s_k) * sg((G_k - V_k) / max(1, S))) - eta * mean(entropy)
    critic loss = two-hot CE(V_k, sg(G_k)) + two-hot CE(V_k, sg(G^slow_k))
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping

import torch
from torch import nn
from torch.distributions import Categorical

from lightning_drama.checks import ConfigError, check_choice, check_float, check_int
from lightning_drama.distributions import symlog_bins, twohot_loss, twohot_mean
from lightning_drama.networks import mlp
from lightning_drama.returns import BOOTSTRAP_MODES, lambda_returns, percentile_range
from lightning_drama.world_model import REWARD_TIMINGS


class RunningNorm(nn.Module):
    """Normalises inputs by their running mean / variance over all inputs seen, clipped to +-clip.

    The statistics live in buffers (checkpointed; fp32 and int64, which every device supports, MPS
    included) and change only through `update`, which does nothing in eval mode, so an evaluated or
    resumed agent sees exactly the training statistics.

    Args:
        dim: feature size.
        clip: clip of the normalised values (10).
        eps: added to the variance (1e-8).
    """

    def __init__(self, dim: int, clip: float = 10.0, eps: float = 1e-8) -> None:
        super().__init__()
        self.clip, self.eps = clip, eps
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("var", torch.ones(dim))
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Merge the statistics of x [..., dim] (Chan et al.'s parallel mean / variance)."""
        if not self.training:
            return
        x = x.detach().reshape(-1, x.shape[-1]).float()
        n = x.shape[0]
        batch_var, batch_mean = torch.var_mean(x, 0, correction=0)
        w = (n / (self.count + n)).float()  # weight of the new batch, computed on-device
        delta = batch_mean - self.mean
        self.var.copy_(self.var * (1 - w) + batch_var * w + delta.square() * w * (1 - w))
        self.mean.add_(delta * w)
        self.count.add_(n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., dim] -> normalised and clipped, in x's dtype."""
        out = (x.float() - self.mean) * torch.rsqrt(self.var + self.eps)
        return out.clamp(-self.clip, self.clip).to(x.dtype)


def _orthogonal_init(net: nn.Module, out: nn.Linear) -> None:
    """CleanRL's `layer_init`, as the reference uses it: orthogonal weights with gain sqrt(2) in
    `net`, 0.001 in the output layer `out`, zero biases."""
    for m in net.modules():
        if isinstance(m, nn.Linear):
            nn.init.orthogonal_(m.weight, math.sqrt(2))
            nn.init.zeros_(m.bias)
    nn.init.orthogonal_(out.weight, 0.001)
    nn.init.zeros_(out.bias)


class Actor(nn.Module):
    """Input normaliser -> layers x [Linear(hidden), RMSNorm, SiLU] -> action logits.

    Orthogonal init with gain sqrt(2) for the hidden layers and 0.001 for the output layer
    (CleanRL's `layer_init(std=...)`), so the initial policy is almost uniform.
    """

    def __init__(
        self, state_dim: int, num_actions: int, hidden: int = 256, layers: int = 3
    ) -> None:
        super().__init__()
        self.norm = RunningNorm(state_dim)
        self.net = mlp(state_dim, hidden, layers)
        self.out = nn.Linear(hidden, num_actions)
        _orthogonal_init(self.net, self.out)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        """state: [..., state_dim] -> logits [..., num_actions] (fp32)."""
        return self.out(self.net(self.norm(state.float()))).float()


class Critic(nn.Module):
    """layers x [Linear(hidden), RMSNorm, SiLU] -> two-hot logits over symlog bins.

    Initialised as the actor (the reference's `layer_init`): orthogonal with gain sqrt(2) for the
    hidden layers and 0.001 for the output layer, zero biases, so V starts close to 0.
    """

    def __init__(
        self, state_dim: int, hidden: int = 512, layers: int = 3, num_bins: int = 255
    ) -> None:
        super().__init__()
        self.net = mlp(state_dim, hidden, layers)
        self.out = nn.Linear(hidden, num_bins)
        _orthogonal_init(self.net, self.out)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        """state: [..., state_dim] -> bin logits [..., num_bins] (fp32)."""
        return self.out(self.net(state.float())).float()


class ActorCritic(nn.Module):
    """Actor, critic, slow critic and return scale with the imagination-training loss.

    Args:
        num_actions: size of the discrete action space.
        state_dim: size of the policy state [z, d] (32 * 32 + 512 = 1536).
        actor_hidden: actor MLP width (256).
        actor_layers: actor hidden layers (3).
        critic_hidden: critic MLP width (512).
        critic_layers: critic hidden layers (3).
        num_bins: two-hot bins of the critic (255).
        bin_range: the bins span [-bin_range, bin_range] in symlog space (20).
        gamma: discount (0.985).
        lam: lambda of the lambda-returns (0.95).
        entropy_coef: weight of the policy entropy bonus (3e-4).
        slow_critic_decay: EMA decay of the slow critic per `update_slow_critic` (0.98).
        return_scale_decay: EMA decay of the return scale S (0.99).
        percentiles: low and high percentile of the returns spanned by S (0.05, 0.95).
        grad_clip: gradient-norm clip the training module applies to the actor-critic (100).
        reward_timing: which sequence feature the imagined reward and termination of step k are
            read from. "reference" (the Drama code): d_{k-1}, the feature that predicted s_k,
            so step k's reward is the outcome of the previous action; "outcome": d_k, the
            outcome of a_k. Used by `WorldModel.imagine`.
        return_bootstrap: the one-step bootstrap of the lambda-returns, "reference" (V(s_k), the
            Drama code) or "next" (V(s_{k+1})); see `returns.lambda_returns`.
    """

    def __init__(
        self,
        num_actions: int,
        state_dim: int = 1536,
        actor_hidden: int = 256,
        actor_layers: int = 3,
        critic_hidden: int = 512,
        critic_layers: int = 3,
        num_bins: int = 255,
        bin_range: float = 20.0,
        gamma: float = 0.985,
        lam: float = 0.95,
        entropy_coef: float = 3e-4,
        slow_critic_decay: float = 0.98,
        return_scale_decay: float = 0.99,
        percentiles: tuple[float, float] = (0.05, 0.95),
        grad_clip: float = 100.0,
        reward_timing: str = "reference",
        return_bootstrap: str = "reference",
    ) -> None:
        super().__init__()
        where = "model.actor_critic"
        check_choice(where, "reward_timing", reward_timing, REWARD_TIMINGS)
        check_choice(where, "return_bootstrap", return_bootstrap, BOOTSTRAP_MODES)
        for name, value in (("actor_hidden", actor_hidden), ("actor_layers", actor_layers),
                            ("critic_hidden", critic_hidden), ("critic_layers", critic_layers),
                            ("state_dim", state_dim)):  # fmt: skip
            check_int(where, name, value, 1)
        check_int(where, "num_bins", num_bins, 2)
        check_float(where, "bin_range", bin_range, above=0.0)
        check_float(where, "gamma", gamma, above=0.0, maximum=1.0)
        check_float(where, "lam", lam, minimum=0.0, maximum=1.0)
        check_float(where, "entropy_coef", entropy_coef, minimum=0.0)
        check_float(where, "slow_critic_decay", slow_critic_decay, minimum=0.0, below=1.0)
        check_float(where, "return_scale_decay", return_scale_decay, minimum=0.0, below=1.0)
        low, high = (check_float(where, "percentiles", p, 0.0, 1.0) for p in percentiles)
        if not low < high:
            raise ConfigError(
                f"{where}.percentiles must be (low, high) with low < high, got {percentiles}"
            )
        check_float(where, "grad_clip", grad_clip, above=0.0)
        self.reward_timing, self.return_bootstrap = reward_timing, return_bootstrap
        self.num_actions = num_actions
        self.gamma, self.lam, self.entropy_coef = gamma, lam, entropy_coef
        self.slow_critic_decay, self.return_scale_decay = slow_critic_decay, return_scale_decay
        self.percentiles = percentiles
        self.grad_clip = grad_clip
        self.actor = Actor(state_dim, num_actions, actor_hidden, actor_layers)
        self.critic = Critic(state_dim, critic_hidden, critic_layers, num_bins)
        self.slow_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.register_buffer("return_scale", torch.zeros(()))
        self.register_buffer("bins", symlog_bins(num_bins, -bin_range, bin_range), persistent=False)

    def policy(self, state: torch.Tensor) -> Categorical:
        """state: [..., state_dim] -> Categorical over actions.

        Not validated: a diverged actor's NaN logits give a NaN loss, which the training module
        skips and counts (`DramaModule.divergence_patience`), instead of an exception here."""
        return Categorical(logits=self.actor(state), validate_args=False)

    @torch.no_grad()
    def act(self, state: torch.Tensor, greedy: bool = False) -> torch.Tensor:
        """state: [N, state_dim] -> action [N] int64, sampled (or the most likely one if greedy)."""
        logits = self.actor(state)
        if greedy:
            return logits.argmax(-1)
        # Gumbel-max: a sample of Categorical(logits) that stays a valid action (rather than an
        # error) when a diverged actor gives non-finite logits; see `policy`.
        gumbel = -torch.log(-torch.log(torch.rand_like(logits)))
        return (logits + gumbel).argmax(-1)

    def value(self, state: torch.Tensor, slow: bool = False) -> torch.Tensor:
        """state: [..., state_dim] -> V(s) [...] of the critic (or the slow critic)."""
        return twohot_mean((self.slow_critic if slow else self.critic)(state), self.bins)

    def loss(
        self, imagined: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Actor + critic loss on an imagined batch (the dict returned by `WorldModel.imagine`).

        imagined: `states` [N, H+1, S], `actions` [N, H], `rewards` [N, H], `cont` [N, H].
        In train mode this also updates the actor's input normaliser and the return scale S
        (buffers).
        Returns `(actor_loss + critic_loss, stats)` with detached scalar stats: `actor`, `critic`,
        `entropy`, `return` (mean G), `value` (mean V), `return_scale` (S), `advantage_abs`.
        """
        states = imagined["states"].detach().float()  # [N, H+1, S]
        actions, rewards, cont = imagined["actions"], imagined["rewards"], imagined["cont"]
        horizon = actions.shape[1]

        critic_logits = self.critic(states)  # [N, H+1, K]
        value = twohot_mean(critic_logits, self.bins)  # [N, H+1]
        with torch.no_grad():
            slow_value = self.value(states, slow=True)
            returns = lambda_returns(  # [N, H]
                rewards, cont, value.detach(), self.gamma, self.lam, self.return_bootstrap
            )
            slow_returns = lambda_returns(
                rewards, cont, slow_value, self.gamma, self.lam, self.return_bootstrap
            )
            if self.training:
                decay = self.return_scale_decay
                spread = percentile_range(returns, *self.percentiles)
                self.return_scale.mul_(decay).add_((1.0 - decay) * spread)
            advantage = (returns - value[:, :horizon].detach()) / self.return_scale.clamp(min=1.0)

        self.actor.norm.update(states)
        dist = self.policy(states[:, :horizon])  # batch [N, H]
        entropy = dist.entropy()
        actor_loss = (
            -(dist.log_prob(actions) * advantage).mean() - self.entropy_coef * entropy.mean()
        )
        critic_loss = (
            twohot_loss(critic_logits[:, :horizon], returns, self.bins)
            + twohot_loss(critic_logits[:, :horizon], slow_returns, self.bins)
        ).mean()
        stats = {
            "actor": actor_loss.detach(),
            "critic": critic_loss.detach(),
            "entropy": entropy.detach().mean(),
            "return": returns.mean(),
            "value": value.detach().mean(),
            "return_scale": self.return_scale.clone(),
            "advantage_abs": advantage.abs().mean(),
        }
        return actor_loss + critic_loss, stats

    @torch.no_grad()
    def update_slow_critic(self) -> None:
        """slow <- decay * slow + (1 - decay) * critic, once per actor-critic update."""
        for slow, online in zip(
            self.slow_critic.parameters(), self.critic.parameters(), strict=True
        ):
            slow.lerp_(online, 1.0 - self.slow_critic_decay)
