"""Helpers shared by the evaluation tests (kept out of tests/fixtures.py, which every test run imports, so that
it does not import torch)."""

import torch


class TinyFeatureNet(torch.nn.Module):
    """A scripted stand-in with the FID network's calling convention (uint8 in, (N, D) out)."""

    def forward(self, images: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        x = images.float() / 255.0
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)
