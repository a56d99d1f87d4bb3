"""Building blocks of the world model and the agent: conv encoder / decoder and normalised MLPs.

Images travel in channels_last memory format: a `[N, H, W, C]` uint8 batch permuted to
`[N, C, H, W]` already has channels_last strides, so no copy is made, and CPU convolutions are
~1.6x faster in that layout than in the default one (issue 3's probe).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lightning_drama.ssm import RMSNorm


def fan_avg_init_(module: nn.Module) -> nn.Module:
    """The reference's `weight_init` (Drama's tools.py, from DreamerV3): every Linear, Conv2d and
    ConvTranspose2d in `module` gets a truncated normal weight with std sqrt(1 / fan_avg) / 0.8796
    (cut at +-2 std; 0.8796 is the std of a unit normal cut there) and a zero bias, where fan_avg
    is the mean of the fan-in and fan-out (times the kernel area for convolutions)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            fan_avg = (m.in_features + m.out_features) / 2
        elif isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            area = m.kernel_size[0] * m.kernel_size[1]
            fan_avg = area * (m.in_channels + m.out_channels) / 2
        else:
            continue
        std = (1.0 / fan_avg) ** 0.5 / 0.87962566103423978
        nn.init.trunc_normal_(m.weight, 0.0, std, -2 * std, 2 * std)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    return module


def mlp(in_dim: int, hidden: int, layers: int) -> nn.Sequential:
    """`layers` x [Linear(hidden), RMSNorm, SiLU]; the output layer is added by the caller."""
    blocks: list[nn.Module] = []
    for i in range(layers):
        blocks += [nn.Linear(in_dim if i == 0 else hidden, hidden), RMSNorm(hidden), nn.SiLU()]
    return nn.Sequential(*blocks)


class Encoder(nn.Module):
    """Conv k5 p2 + BatchNorm + SiLU stack; first conv stride 1, the rest stride 2 (64 -> 4 pixels).

    Args:
        channels: output channels of each conv (paper: 16, 32, 48, 64, 64).
        image_size: height = width of the input frames (64).
        in_channels: colour channels of the input (3).
    """

    def __init__(
        self,
        channels: Sequence[int] = (16, 32, 48, 64, 64),
        image_size: int = 64,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i, c in enumerate(channels):
            c_in = in_channels if i == 0 else channels[i - 1]
            stride = 1 if i == 0 else 2
            # No conv bias: the BatchNorm that follows has its own.
            layers += [nn.Conv2d(c_in, c, 5, stride, 2, bias=False), nn.BatchNorm2d(c), nn.SiLU()]
        self.net = nn.Sequential(*layers)
        self.final_size = image_size // 2 ** (len(channels) - 1)
        self.out_dim = channels[-1] * self.final_size**2
        self.to(memory_format=torch.channels_last)

    # Frames per piece when encoding without gradients (imagination encodes 1024 x 8 frames):
    # pieces keep the activations small enough to be reused from the heap instead of
    # page-faulting gigabytes in afresh (8192 frames: 1.4 s in pieces, 2.5 s in one, 2 cores).
    no_grad_frames = 1024

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """obs: [..., H, W, C] uint8 -> features [..., out_dim]."""
        lead = obs.shape[:-3]
        frames = obs.flatten(0, -4)
        if self.training or torch.is_grad_enabled():
            x = self._encode(frames, inplace=False)
        else:
            pieces = frames.split(self.no_grad_frames)
            x = torch.cat([self._encode(piece, inplace=True) for piece in pieces])
        return x.unflatten(0, lead)  # [..., out_dim]

    def _encode(self, frames: torch.Tensor, inplace: bool) -> torch.Tensor:
        x = frames.permute(0, 3, 1, 2)  # [N, C, H, W], channels_last strides, no copy
        x = x.float() / 255.0
        x = x.contiguous(memory_format=torch.channels_last)
        x = self.net(x) if self.training else self._forward_folded(x, inplace)  # [N, c, h, w]
        # Flatten in (h, w, c) order: a view of channels_last memory instead of a copy.
        return x.permute(0, 2, 3, 1).flatten(1)

    def _forward_folded(self, x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        """Eval mode: BatchNorm with running statistics is an affine map, folded into the conv
        weights, which saves two passes over the largest activations. `inplace` (only without
        gradients) applies SiLU in place."""
        layers = list(self.net)
        for conv, bn in zip(layers[0::3], layers[1::3], strict=True):
            scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)  # [c]
            weight = conv.weight * scale[:, None, None, None]
            bias = bn.bias - bn.running_mean * scale
            x = F.silu(F.conv2d(x, weight, bias, conv.stride, conv.padding), inplace=inplace)
        return x


class Decoder(nn.Module):
    """Linear to a `[c, 4, 4]` map + BatchNorm2d(c) + SiLU, then ConvTranspose k5 stride 2 (+ BN +
    SiLU) up to the image size and a stride-1 ConvTranspose to the colour channels. Returns
    pre-sigmoid logits.

    The first norm is a BatchNorm2d over the reshaped map (statistics per channel, over 4 x 4
    positions), as in the reference code, not a BatchNorm1d per feature.

    Args:
        in_dim: size of the latent input (32 * 32).
        channels: channels of the feature maps from 4x4 upwards (paper: 64, 64, 48, 32, 16, the
            mirror of the encoder).
        image_size: output height = width (64).
        out_channels: colour channels (3).
    """

    def __init__(
        self,
        in_dim: int = 1024,
        channels: Sequence[int] = (64, 64, 48, 32, 16),
        image_size: int = 64,
        out_channels: int = 3,
    ) -> None:
        super().__init__()
        self.start_channels = channels[0]
        self.start_size = image_size // 2 ** (len(channels) - 1)
        start_dim = channels[0] * self.start_size**2
        # With a bias, as the reference: a per-channel BatchNorm2d keeps its 4 x 4 offsets.
        self.linear = nn.Linear(in_dim, start_dim)
        layers: list[nn.Module] = [nn.BatchNorm2d(channels[0]), nn.SiLU()]
        for c_in, c_out in zip(channels[:-1], channels[1:], strict=True):
            layers += [
                nn.ConvTranspose2d(c_in, c_out, 5, 2, 2, output_padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.SiLU(),
            ]
        layers.append(nn.ConvTranspose2d(channels[-1], out_channels, 5, 1, 2))
        self.net = nn.Sequential(*layers)
        self.to(memory_format=torch.channels_last)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z: [..., in_dim] -> logits [..., C, H, W] (channels_last strides)."""
        lead = z.shape[:-1]
        x = self.linear(z.flatten(0, -2))  # [N, start_dim]
        # The linear's outputs in (h, w, c) order: the permute is a channels_last view, no copy.
        x = x.unflatten(1, (self.start_size, self.start_size, self.start_channels))
        x = self.net(x.permute(0, 3, 1, 2))  # channels_last [N, C, H, W]
        return x.unflatten(0, lead)
