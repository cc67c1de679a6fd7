"""Stage 3, the pix2pix baseline: U-Net generator + PatchGAN, L1 + adversarial, one step (METHOD.md section 6).

Per micro-batch: fake = G(SAR); G loss = adversarial(D(SAR, fake)) + lambda_l1 |fake - optical|;
then D loss on (SAR, optical) as real and (SAR, fake) as fake. Two DeepSpeed engines, as in distillation.
"""

from __future__ import annotations

from typing import Any

import torch

from s2o_platform.bundle import BundleMetadata, SamplerSpec, write_bundle
from s2o_platform.config import GanConfig, dump_config
from s2o_platform.data.store import StoreMetadata
from s2o_platform.losses import discriminator_loss, generator_loss, hide_invalid, logit_accuracy, masked_mean
from s2o_platform.models.pix2pix import PatchDiscriminator, UNetGenerator
from s2o_platform.train.stages.base import StageModels


class GanStage:
    name = "gan"
    config_model = GanConfig

    def build(
        self,
        cfg: GanConfig,
        store: StoreMetadata,
        extra: dict[str, Any],
        device: torch.device,
        compute_dtype: torch.dtype = torch.float32,
    ) -> StageModels:
        cfg = cfg.sized_for_store(store.tile_size)  # a size left null is the store's
        self.cfg = cfg
        generator = UNetGenerator(
            sample_size=cfg.generator.sample_size,
            in_channels=store.sar_channels,
            out_channels=3,
            base_channels=cfg.generator.base_channels,
            dropout=cfg.generator.dropout,
        )
        discriminator = PatchDiscriminator(
            in_channels=store.sar_channels + 3,
            base_channels=cfg.discriminator.base_channels,
            n_layers=cfg.discriminator.n_layers,
        )
        return StageModels(
            trainable={"generator": generator.to(device), "discriminator": discriminator.to(device)},
            lr={"discriminator": cfg.gan.discriminator_lr or cfg.train.lr},
        )

    def step(self, engines, models, ema, batch, generator) -> dict[str, float]:
        cfg = self.cfg.gan
        gen, disc = engines["generator"], engines["discriminator"]
        sar, optical, valid = batch["sar"], batch["optical"], batch.get("valid")
        fake = gen(sar).float()
        disc.module.requires_grad_(False)
        loss_adv = generator_loss(disc.module(sar, hide_invalid(fake, valid)), cfg.gan_loss)
        disc.module.requires_grad_(True)
        loss_l1 = masked_mean((fake - optical.float()).abs(), valid)
        gen.backward(loss_adv + cfg.lambda_l1 * loss_l1)
        gen.step()
        real_logits = disc(sar, hide_invalid(optical, valid))
        fake_logits = disc(sar, hide_invalid(fake.detach(), valid))
        loss_d = discriminator_loss(real_logits, fake_logits, cfg.gan_loss)
        disc.backward(loss_d)
        disc.step()
        acc_real, acc_fake = logit_accuracy(real_logits.detach(), fake_logits.detach())
        return {
            "loss_l1": loss_l1.item(),
            "loss_g_adv": loss_adv.item(),
            "loss_d": loss_d.item(),
            "d_acc_real": acc_real,
            "d_acc_fake": acc_fake,
        }

    def bundle_metadata(
        self,
        cfg: GanConfig,
        store: StoreMetadata,
        card: dict[str, Any],
        context: dict[str, Any] | None = None,
    ) -> BundleMetadata:
        sampler = SamplerSpec(name="direct", default_steps=1, allowed=["direct"], max_steps=1)
        return BundleMetadata.for_store(
            "gan",
            store,
            cfg.generator.sample_size or store.tile_size,
            sampler,
            {"method": "pix2pix (U-Net + PatchGAN, L1 + adversarial)", **card},
        )

    def export(
        self,
        directory: str,
        ema: torch.nn.Module,
        cfg: GanConfig,
        store: StoreMetadata,
        card: dict[str, Any],
        context: dict[str, Any] | None = None,
    ) -> None:
        write_bundle(directory, self.bundle_metadata(cfg, store, card), ema.eval(), None, dump_config(cfg))
