"""Every stage's training step in bf16 and fp16 through real DeepSpeed engines (one process, CPU), and
the EMA-from-master-weights rule.

bf16 runs as it would in `s2o train ... --set deepspeed.precision=bf16` here: this CPU has
AVX512-BF16 and DeepSpeed's CPU accelerator accepts it. fp16: DeepSpeed refuses it on CPUs without
AVX512-FP16 (oneDNN's fast fp16 path), which is a speed gate, not a correctness one: torch's CPU
kernels compute fp16 exactly as specified, so the fp16 tests lift that gate for the test only, and
DeepSpeed's real FP16 optimizer (fp32 masters, dynamic loss scaling) runs.
"""

import numpy as np
import pytest
import torch

from s2o_platform.config import DistillConfig, GanConfig, TeacherConfig, load_config
from s2o_platform.data.normalization import SarNormalization
from s2o_platform.data.store import StoreMetadata
from s2o_platform.train.runtime import build_runtime, ensure_process_group, master_parameters
from s2o_platform.train.stages.teacher import TeacherStage
from tests.fixtures import REPO_ROOT

STORE = StoreMetadata(tile_size=16, sar_channels=1, sar_normalization=SarNormalization())
UNET = [
    "model.sample_size=16",
    "model.block_out_channels=[32, 32]",
    "model.down_block_types=[DownBlock2D, DownBlock2D]",
    "model.up_block_types=[UpBlock2D, UpBlock2D]",
    "model.norm_num_groups=8",
]
COMMON = ["train.batch_size=4", "train.warmup_steps=0", "train.lr=1e-3"]
GAN = [
    "generator.sample_size=16",
    "generator.base_channels=8",
    "discriminator.base_channels=8",
    "discriminator.n_layers=2",
]


@pytest.fixture(scope="module", autouse=True)
def process_group():
    ensure_process_group()


@pytest.fixture(scope="module")
def teacher_bundle(tmp_path_factory):
    cfg = load_config(TeacherConfig, None, UNET)
    torch.manual_seed(0)
    stage = TeacherStage()
    path = tmp_path_factory.mktemp("teacher") / "bundle"
    stage.export(
        str(path),
        stage.build(cfg, STORE, {}, torch.device("cpu")).trainable["unet"],
        cfg,
        STORE,
        {"trained_steps": 0},
    )
    return str(path)


@pytest.fixture
def fp16_on_this_cpu(monkeypatch):
    from deepspeed.accelerator import get_accelerator

    monkeypatch.setattr(get_accelerator(), "is_fp16_supported", lambda: True)


def batch(seed=0, n=4):
    rng = np.random.default_rng(seed)
    return {
        "sar": torch.from_numpy(rng.uniform(-1, 1, (n, 1, 16, 16)).astype(np.float32)),
        "optical": torch.from_numpy(rng.uniform(-1, 1, (n, 3, 16, 16)).astype(np.float32)),
    }


def runtime_for(stage, precision, teacher_bundle=None, *overrides):
    if stage == "teacher":
        cfg = load_config(
            TeacherConfig, None, [*UNET, *COMMON, f"deepspeed.precision={precision}", *overrides]
        )
    elif stage == "gan":
        cfg = load_config(GanConfig, None, [*GAN, *COMMON, f"deepspeed.precision={precision}", *overrides])
    else:
        cfg = load_config(
            DistillConfig,
            None,
            [
                *COMMON,
                f"deepspeed.precision={precision}",
                "train.ema_decay=0.95",
                "train.ema_warmup=false",
                *overrides,
            ],
        )
    extra = {"teacher": teacher_bundle} if stage == "distill" else {}
    return build_runtime(stage, cfg, STORE, extra, torch.device("cpu"))


def check_steps(runtime, dtype):
    main = runtime.main
    assert next(main.module.parameters()).dtype == dtype
    assert all(p.dtype == torch.float32 for p in runtime.ema.parameters())
    masters_before = [m.detach().clone() for m in master_parameters(main)]
    for i in range(3):
        metrics, stepped = runtime.step(batch(i))
        assert stepped and all(np.isfinite(v) for v in metrics.values()), metrics
    masters = master_parameters(main)
    assert all(m.dtype == torch.float32 for m in masters)
    assert any(not torch.equal(a, b) for a, b in zip(masters_before, masters))  # it trained
    for p, m in zip(main.module.parameters(), masters):  # the forward copy is the rounded master
        assert torch.equal(p.detach(), m.to(p.dtype))
    return metrics


STAGES = [("teacher", ()), ("distill", ()), ("distill", ("distill.adversarial=false",)), ("gan", ())]


@pytest.mark.parametrize("stage,overrides", STAGES, ids=["teacher", "acd", "ablation", "gan"])
def test_each_stage_steps_in_bf16(stage, overrides, teacher_bundle):
    metrics = check_steps(runtime_for(stage, "bf16", teacher_bundle, *overrides), torch.bfloat16)
    if stage == "distill" and not overrides:
        assert {"loss_cd", "loss_g_adv", "loss_d"} <= set(metrics)


@pytest.mark.parametrize("stage,overrides", STAGES, ids=["teacher", "acd", "ablation", "gan"])
def test_each_stage_steps_in_fp16(stage, overrides, teacher_bundle, fp16_on_this_cpu):
    check_steps(runtime_for(stage, "fp16", teacher_bundle, *overrides), torch.float16)


def test_fp16_refused_where_deepspeed_says_so():
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().is_fp16_supported():
        pytest.skip("this CPU has fp16 (AVX512-FP16)")
    with pytest.raises(ValueError, match="deepspeed.precision=fp16 is not supported on this cpu"):
        runtime_for("teacher", "fp16")


@pytest.mark.parametrize("frozen_fp32,expected", [(False, torch.bfloat16), (True, torch.float32)])
def test_frozen_teacher_and_target_run_in_the_chosen_precision(teacher_bundle, frozen_fp32, expected):
    runtime = runtime_for(
        "distill",
        "bf16",
        teacher_bundle,
        "distill.adversarial=false",
        f"distill.frozen_fp32={str(frozen_fp32).lower()}",
    )
    seen = {}

    def record(name):
        def hook(module, inputs, output):
            seen[name] = output.dtype

        return hook

    hooks = [
        module.conv_out.register_forward_hook(record(name))
        for name, module in (("teacher", runtime.models.frozen["teacher"]), ("target", runtime.ema))
    ]
    runtime.step(batch())
    for hook in hooks:
        hook.remove()
    assert seen == {"teacher": expected, "target": expected}
    assert next(runtime.models.frozen["teacher"].parameters()).dtype == torch.float32  # weights stay fp32


@pytest.mark.parametrize("zero_stage", [0, 1])
def test_ema_follows_the_fp32_masters_not_the_rounded_copies(teacher_bundle, zero_stage):
    """With a learning rate far below bf16's resolution the bf16 copies barely move while the masters
    do: an EMA of the copies would stall. The EMA must be the one built from the masters, which are
    what the (torch AdamW) optimizer inside DeepSpeed steps."""
    runtime = runtime_for(
        "teacher",
        "bf16",
        None,
        f"deepspeed.zero_stage={zero_stage}",
        "train.lr=1e-5",
        "train.ema_decay=0.5",
        "train.ema_warmup=false",
        "train.grad_clip=0",
    )
    main = runtime.main
    inner = [
        p for group in main.optimizer.optimizer.param_groups for p in group["params"]
    ]  # the optimizer's own fp32 tensors

    def optimizer_masters():
        flat = torch.cat([p.detach().flatten() for p in inner])
        return flat[: sum(p.numel() for p in main.module.parameters())]  # ZeRO pads its flat partition

    expected = optimizer_masters().clone()  # the EMA starts at the masters
    assert torch.equal(torch.cat([e.flatten() for e in runtime.ema.parameters()]), expected)
    for i in range(4):
        runtime.step(batch(i))
        expected = 0.5 * expected + 0.5 * optimizer_masters()
    ema = torch.cat([e.detach().flatten() for e in runtime.ema.parameters()])
    torch.testing.assert_close(ema, expected, rtol=0, atol=1e-7)
    rounded = torch.cat([p.detach().float().flatten() for p in main.module.parameters()])
    masters = optimizer_masters()
    assert (masters - rounded).abs().max() > 0  # the masters hold what bf16 cannot


def test_gpu_check_script_runs_here():
    """benchmarks/gpu_check.py, the one command for a lent GPU, checked on this CPU (tiny preset, bf16)
    so it does not rot between GPU sessions."""
    import subprocess
    import sys

    script = REPO_ROOT / "benchmarks" / "gpu_check.py"
    proc = subprocess.run(
        [
            sys.executable,
            str(script),
            "--device",
            "cpu",
            "--preset",
            "tiny",
            "--precisions",
            "bf16",
            "--steps",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "13/13 checks passed" in proc.stdout
    assert (
        "pass | bf16 train distill acd" in proc.stdout and "pass | bf16 sample student lcm:8" in proc.stdout
    )


def test_pix2pix_step_ignores_the_values_of_masked_pixels():
    """Invalid pixels (nodata kept under --max-nodata) change no loss: two batches that differ only in the
    optical values of masked pixels give the same L1, adversarial and discriminator losses."""
    first, second = batch(5), batch(5)
    valid = torch.ones(4, 1, 16, 16)
    valid[:, :, :5, :7] = 0
    second["optical"] = torch.where(valid > 0, second["optical"], torch.full_like(second["optical"], 0.9))
    results = []
    for b in (first, second):
        torch.manual_seed(0)
        runtime = runtime_for("gan", "fp32", None, "train.augment=false")
        torch.manual_seed(1)  # the generator's dropout
        results.append(runtime.step({**b, "valid": valid})[0])
    assert results[0] == results[1]
    torch.manual_seed(0)
    runtime = runtime_for("gan", "fp32", None)
    torch.manual_seed(1)
    unmasked = runtime.step(second)[0]
    assert unmasked["loss_l1"] != results[1]["loss_l1"]  # without the mask the same change does count
