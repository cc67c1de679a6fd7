"""The adversarial distillation discriminator (METHOD.md section 4).

The teacher's encoder half (conv_in, time embedding, down blocks, mid block), initialised from the
teacher's weights and fully trainable, applied twice with shared weights:
    conditioning branch: concat(x_start, SAR) at t_start
    candidate branch:    concat(candidate, SAR) at t_prev
and a new head over the concatenated feature maps:
    conv 3x3, GroupNorm, SiLU, strided conv 4x4, GroupNorm, SiLU, global average pool, linear -> 1 logit.
"""

from __future__ import annotations

import torch
from diffusers import ModelMixin, UNet2DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from torch import nn

ENCODER_PARTS = ("conv_in", "time_proj", "time_embedding", "down_blocks", "mid_block")


def _groups(channels: int, preferred: int = 32) -> int:
    return max(g for g in range(1, min(preferred, channels) + 1) if channels % g == 0)


class EncoderDiscriminator(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(self, unet_config: dict) -> None:
        super().__init__()
        unet = UNet2DModel.from_config(dict(unet_config))
        for part in ENCODER_PARTS:
            setattr(self, part, getattr(unet, part))
        channels = unet.config.block_out_channels[-1]
        self.head = nn.Sequential(
            nn.Conv2d(2 * channels, channels, 3, padding=1),
            nn.GroupNorm(_groups(channels), channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 4, stride=2, padding=1),
            nn.GroupNorm(_groups(channels), channels),
            nn.SiLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(channels, 1),
        )

    @classmethod
    def from_teacher(cls, teacher: UNet2DModel) -> EncoderDiscriminator:
        """A discriminator whose encoder starts as a copy of the teacher's."""
        disc = cls(unet_config=dict(teacher.config))
        encoder_state = {k: v for k, v in teacher.state_dict().items() if k.split(".")[0] in ENCODER_PARTS}
        missing, unexpected = disc.load_state_dict(encoder_state, strict=False)
        if unexpected or not all(k.startswith("head.") for k in missing):
            raise RuntimeError(
                f"teacher encoder does not fit the discriminator: missing {missing}, unexpected {unexpected}"
            )
        return disc.to(device=teacher.device, dtype=torch.float32)

    def features(self, x: torch.Tensor, sar: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Encoder features (B, C_last, h, w) of concat(x, SAR) at timesteps t (B,)."""
        dtype = self.conv_in.weight.dtype
        emb = self.time_embedding(self.time_proj(t).to(dtype))
        h = self.conv_in(torch.cat([x, sar], dim=1).to(dtype))
        for block in self.down_blocks:
            h, _ = block(hidden_states=h, temb=emb)
        return self.mid_block(h, emb)

    def forward(
        self,
        x_start: torch.Tensor,
        candidate: torch.Tensor,
        sar: torch.Tensor,
        t_start: torch.Tensor,
        t_prev: torch.Tensor,
    ) -> torch.Tensor:
        """One logit per sample (B,): high for 'real' candidates."""
        condition = self.features(x_start, sar, t_start)
        judged = self.features(candidate, sar, t_prev)
        return self.head(torch.cat([condition, judged], dim=1)).squeeze(1)
