"""The pix2pix baseline (Isola et al. 2017): a U-Net generator SAR -> optical and a PatchGAN discriminator.

Saved and loaded as diffusers models (ModelMixin + ConfigMixin): config.json + safetensors.
"""

from __future__ import annotations

import math

import torch
from diffusers import ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from torch import nn


class UNetGenerator(ModelMixin, ConfigMixin):
    """Encoder-decoder with skips down to 1x1: log2(sample_size) stride-2 4x4 convolutions each way.

    Channels per level: base, 2 base, 4 base, 8 base, 8 base, ... (pix2pix's C64-C128-C256-C512-...).
    Dropout in the three innermost decoder layers is pix2pix's source of noise.
    """

    @register_to_config
    def __init__(
        self,
        sample_size: int = 256,
        in_channels: int = 1,
        out_channels: int = 3,
        base_channels: int = 64,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        levels = int(math.log2(sample_size))
        if 2**levels != sample_size:
            raise ValueError(f"pix2pix generator needs a power-of-two sample_size, got {sample_size}")
        chans = [min(base_channels * 2**i, base_channels * 8) for i in range(levels)]
        self.downs = nn.ModuleList()
        for i, c in enumerate(chans):
            c_in = in_channels if i == 0 else chans[i - 1]
            layers: list[nn.Module] = [] if i == 0 else [nn.LeakyReLU(0.2)]
            layers.append(nn.Conv2d(c_in, c, 4, stride=2, padding=1))
            if 0 < i < levels - 1:  # no norm on the outermost layer, nor on the 1x1 bottleneck
                layers.append(nn.InstanceNorm2d(c, affine=True))
            self.downs.append(nn.Sequential(*layers))
        self.ups = nn.ModuleList()
        for i in reversed(range(levels)):
            c_in = chans[i] if i == levels - 1 else 2 * chans[i]
            c_out = out_channels if i == 0 else chans[i - 1]
            layers = [nn.ReLU(), nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1)]
            if i > 0:
                layers.append(nn.InstanceNorm2d(c_out, affine=True))
                if i >= levels - 3 and dropout > 0:
                    layers.append(nn.Dropout(dropout))
            else:
                layers.append(nn.Tanh())
            self.ups.append(nn.Sequential(*layers))

    def forward(self, sar: torch.Tensor) -> torch.Tensor:
        """SAR (B, C, H, W) in [-1, 1] -> optical (B, 3, H, W) in [-1, 1]."""
        skips = []
        h = sar.to(self.downs[0][0].weight.dtype)
        for down in self.downs:
            h = down(h)
            skips.append(h)
        skips.pop()  # the bottleneck feeds the first up layer directly
        for up in self.ups:
            h = up(h)
            if skips:
                h = torch.cat([h, skips.pop()], dim=1)
        return h


class PatchDiscriminator(ModelMixin, ConfigMixin):
    """PatchGAN: a grid of logits, each judging one receptive-field patch of concat(SAR, optical)."""

    @register_to_config
    def __init__(self, in_channels: int = 4, base_channels: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, base_channels, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
        ]
        c = base_channels
        for i in range(1, n_layers + 1):
            c_next = base_channels * min(2**i, 8)
            stride = 2 if i < n_layers else 1
            layers += [
                nn.Conv2d(c, c_next, 4, stride=stride, padding=1),
                nn.InstanceNorm2d(c_next, affine=True),
                nn.LeakyReLU(0.2),
            ]
            c = c_next
        layers.append(nn.Conv2d(c, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, sar: torch.Tensor, optical: torch.Tensor) -> torch.Tensor:
        x = torch.cat([sar, optical], dim=1).to(self.net[0].weight.dtype)
        return self.net(x)
