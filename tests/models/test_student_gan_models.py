"""Discriminator, pix2pix networks, the student sampler and bundles of every stage, without Ray."""

import numpy as np
import pytest
import torch

from s2o_platform.bundle import load_bundle
from s2o_platform.config import DistillConfig, GanConfig, TeacherConfig, load_config
from s2o_platform.data.normalization import SarNormalization
from s2o_platform.data.store import StoreMetadata
from s2o_platform.diffusion.sampling import sample_student
from s2o_platform.inference import translate_tiles
from s2o_platform.models.discriminator import EncoderDiscriminator
from s2o_platform.models.pix2pix import PatchDiscriminator, UNetGenerator
from s2o_platform.models.unet import build_unet
from s2o_platform.train.stages.distill import student_scheduler
from s2o_platform.train.stages.gan import GanStage
from s2o_platform.train.stages.teacher import noise_scheduler

TINY = [
    "model.sample_size=16",
    "model.block_out_channels=[32, 32]",
    "model.down_block_types=[DownBlock2D, DownBlock2D]",
    "model.up_block_types=[UpBlock2D, UpBlock2D]",
]


@pytest.fixture(scope="module")
def teacher():
    cfg = load_config(TeacherConfig, None, TINY)
    return build_unet(cfg.model), noise_scheduler(cfg.diffusion)


def test_discriminator_starts_from_teacher_encoder(teacher):
    unet, _ = teacher
    disc = EncoderDiscriminator.from_teacher(unet)
    assert torch.equal(disc.conv_in.weight, unet.conv_in.weight)
    assert torch.equal(
        disc.down_blocks[0].resnets[0].conv1.weight, unet.down_blocks[0].resnets[0].conv1.weight
    )
    assert (
        disc.conv_in.weight.data_ptr() != unet.conv_in.weight.data_ptr()
    )  # a copy: training D leaves the teacher alone
    x, sar = torch.randn(3, 3, 16, 16), torch.randn(3, 1, 16, 16)
    logits = disc(x, x, sar, torch.tensor([19, 39, 999]), torch.tensor([0, 19, 979]))
    assert logits.shape == (3,)
    logits.sum().backward()
    assert disc.conv_in.weight.grad is not None and disc.head[-1].weight.grad is not None


def test_pix2pix_shapes_and_range():
    gen = UNetGenerator(sample_size=32, in_channels=1, base_channels=8)
    out = gen(torch.randn(2, 1, 32, 32))
    assert out.shape == (2, 3, 32, 32) and out.abs().max() <= 1
    patches = PatchDiscriminator(in_channels=4, base_channels=8, n_layers=2)(torch.randn(2, 1, 32, 32), out)
    assert patches.shape[0] == 2 and patches.shape[1] == 1 and patches.shape[2] > 1  # a grid of patch logits
    with pytest.raises(ValueError, match="power-of-two"):
        UNetGenerator(sample_size=48)


def test_student_sampler_steps_and_seed(teacher):
    unet, sched = teacher
    cfg = load_config(DistillConfig)
    lcm_config = dict(student_scheduler(dict(sched.config), cfg).config)
    assert (
        lcm_config["beta_schedule"] == sched.config.beta_schedule
        and lcm_config["original_inference_steps"] == 50
    )
    sar = torch.zeros(2, 1, 16, 16)
    a = sample_student(unet.eval(), sar, lcm_config, 4, torch.Generator().manual_seed(0))
    b = sample_student(unet, sar, lcm_config, 4, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == (2, 3, 16, 16)
    calls = []
    hook = unet.register_forward_hook(lambda m, i, o: calls.append(int(i[1][0])))
    sample_student(unet, sar, lcm_config, 2, torch.Generator().manual_seed(0))
    hook.remove()
    assert calls == [999, 499]
    for bad in (0, 9):
        with pytest.raises(ValueError, match="1..8"):
            sample_student(unet, sar, lcm_config, bad)


def test_gan_bundle_loads_like_a_student(tmp_path):
    cfg = load_config(GanConfig, None, ["generator.sample_size=16", "generator.base_channels=8"])
    store = StoreMetadata(tile_size=16, sar_channels=1, sar_normalization=SarNormalization())
    stage = GanStage()
    models = stage.build(cfg, store, {}, torch.device("cpu"))
    stage.export(str(tmp_path / "b"), models.trainable["generator"], cfg, store, {})
    bundle = load_bundle(str(tmp_path / "b"))
    assert (
        bundle.metadata.stage == "gan"
        and bundle.metadata.sampler.name == "direct"
        and bundle.scheduler_config is None
    )
    out = translate_tiles(bundle, np.zeros((2, 1, 16, 16), np.float32))
    assert out.shape == (2, 3, 16, 16)
    # one step whatever is asked
    np.testing.assert_allclose(translate_tiles(bundle, np.zeros((2, 1, 16, 16), np.float32), steps=8), out)


class _PlainEngine:
    """The part of a DeepSpeed engine a stage's step uses (call, parameters, .module, backward, step), over a plain
    torch optimizer, so the step function itself runs here without a process group."""

    def __init__(self, module: torch.nn.Module, lr: float, on_backward=None):
        self.module, self.on_backward = module, on_backward
        self.optimizer = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=lr)

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def parameters(self):
        return self.module.parameters()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()
        if self.on_backward is not None:
            self.on_backward()

    def step(self) -> None:
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def _distill_step(tmp_path, adversarial: bool):
    """One real DistillStage.step from an exported (untrained) teacher bundle; returns the student's
    parameter change and the discriminator's gradients as they stood right after the generator's backward."""
    import copy

    from s2o_platform.train.stages.distill import DistillStage
    from s2o_platform.train.stages.teacher import TeacherStage

    store = StoreMetadata(tile_size=16, sar_channels=1, sar_normalization=SarNormalization())
    teacher_cfg = load_config(TeacherConfig, None, [*TINY, "diffusion.prediction_type=v_prediction"])
    torch.manual_seed(0)
    teacher_stage = TeacherStage()
    unet = teacher_stage.build(teacher_cfg, store, {}, torch.device("cpu")).trainable["unet"]
    bundle = tmp_path / f"teacher-{adversarial}"
    teacher_stage.export(str(bundle), unet, teacher_cfg, store, {"trained_steps": 0})
    cfg = load_config(
        DistillConfig, None, [f"distill.adversarial={str(adversarial).lower()}", "distill.lambda_adv=1.0"]
    )
    stage = DistillStage()
    models = stage.build(cfg, store, {"teacher": str(bundle)}, torch.device("cpu"))
    student = models.trainable["student"]
    before = {k: v.detach().clone() for k, v in student.named_parameters()}
    seen: dict[str, list] = {}
    disc = models.trainable.get("discriminator")

    def record_disc_grads():
        if disc is not None:
            seen["disc_grads"] = [p.grad for p in disc.parameters()]

    engines = {"student": _PlainEngine(student, lr=1e-2, on_backward=record_disc_grads)}
    if disc is not None:
        engines["discriminator"] = _PlainEngine(disc, lr=1e-3)
    ema = copy.deepcopy(student).requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    batch = {
        "optical": torch.rand(4, 3, 16, 16, generator=g) * 2 - 1,
        "sar": torch.rand(4, 1, 16, 16, generator=g) * 2 - 1,
    }
    metrics = stage.step(engines, models, ema, batch, torch.Generator().manual_seed(1))
    delta = torch.cat([(p.detach() - before[k]).flatten() for k, p in student.named_parameters()])
    return delta, seen, metrics


def test_adversarial_term_changes_the_student_update_and_never_trains_the_discriminator(tmp_path):
    plain, _, plain_metrics = _distill_step(tmp_path, adversarial=False)
    adversarial, seen, metrics = _distill_step(tmp_path, adversarial=True)
    # the same draws (seeded) and the same consistency loss: only the adversarial term differs
    assert metrics["loss_cd"] == pytest.approx(plain_metrics["loss_cd"], rel=1e-5)
    assert plain.abs().max() > 0 and "loss_g_adv" in metrics and "loss_g_adv" not in plain_metrics
    assert not torch.allclose(adversarial, plain, atol=1e-7)
    # right after the generator's backward, no discriminator parameter holds a gradient from it
    assert seen["disc_grads"] and all(g is None or not g.any() for g in seen["disc_grads"])
