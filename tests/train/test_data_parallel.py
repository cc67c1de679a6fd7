"""Data parallelism is right: 2 workers at batch b make the same first update as 1 worker at batch 2b.

Real DeepSpeed engines built by the training runtime (train/runtime.py), two processes in a gloo group on
loopback, no Ray: each rank steps on its half of one batch, and the optimizer's first moment after the step,
(1 - beta1) x the averaged gradient, is compared with one process stepping on the whole batch. The first
moment is the gradient itself, so a wrong average (a sum, a missing half, a rank's stale copy) shows; the
updated weights are compared too (Adam's first step is about lr x sign(gradient): it would hide a scale error).

The pix2pix stage is used: its step draws no noise (dropout off, no augmentation here) and its networks
normalise per sample (InstanceNorm, GroupNorm), so its gradient on 2b samples is exactly the mean of the two
halves'. The teacher and ACD stages run on the same runtime and engines; they draw noise from a generator per
rank, so their two halves would not see the noise one worker draws.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.fixtures import REPO_ROOT

HALF_BATCH = 4
TILE = 16
GAN = [
    "generator.sample_size=16",
    "generator.base_channels=8",
    "generator.dropout=0",
    "discriminator.base_channels=8",
    "discriminator.n_layers=2",
    "train.warmup_steps=0",
    "train.grad_clip=0",
    "deepspeed.precision=fp32",
    "deepspeed.zero_stage=0",
]


def whole_batch() -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(7)
    return {
        "sar": torch.from_numpy(rng.uniform(-1, 1, (2 * HALF_BATCH, 1, TILE, TILE)).astype(np.float32)),
        "optical": torch.from_numpy(rng.uniform(-1, 1, (2 * HALF_BATCH, 3, TILE, TILE)).astype(np.float32)),
    }


def first_update(rank: int, world: int, rows: slice) -> dict[str, torch.Tensor]:
    """One optimizer step of the pix2pix stage on `rows` of whole_batch() in this process's group (rank of
    world): every trainable's first moments and weights after it, by name."""
    from s2o_platform.config import GanConfig, load_config
    from s2o_platform.data.normalization import SarNormalization
    from s2o_platform.data.store import StoreMetadata
    from s2o_platform.train.runtime import build_runtime

    batch = {k: v[rows] for k, v in whole_batch().items()}
    cfg = load_config(GanConfig, None, [*GAN, f"train.batch_size={batch['sar'].shape[0]}"])
    store = StoreMetadata(tile_size=TILE, sar_channels=1, sar_normalization=SarNormalization())
    runtime = build_runtime("gan", cfg, store, {}, torch.device("cpu"), rank, world)
    _, stepped = runtime.step(batch)
    assert stepped
    found = {}
    for name, engine in runtime.engines.items():
        for param_name, param in engine.module.named_parameters():
            found[f"{name}.{param_name}.weight_after"] = param.detach().clone()
            found[f"{name}.{param_name}.exp_avg"] = engine.optimizer.state[param]["exp_avg"].clone()
    return found


#: One rank of the group, in its own process: `python -c WORKER RANK WORLD PORT OUT`.
WORKER = """
import sys
import torch.distributed as dist
from safetensors.torch import save_file
from tests.train.test_data_parallel import HALF_BATCH, first_update
rank, world, port, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
if world == 2:
    save_file(first_update(rank, world, slice(rank * HALF_BATCH, (rank + 1) * HALF_BATCH)), out)
else:  # one worker: the whole batch, then (the negative control) its first half alone
    save_file(first_update(0, 1, slice(0, 2 * HALF_BATCH)), out)
    save_file(first_update(0, 1, slice(0, HALF_BATCH)), out.replace(".safetensors", "-half.safetensors"))
dist.destroy_process_group()
"""


def free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports (all held open while picked, so no two are the same)."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def start_group(world: int, port: int, tmp_path) -> tuple[list[subprocess.Popen], list]:
    """The ranks of a group of `world` processes meeting at `port`, started (each writes its first updates; see
    WORKER)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    outs = [tmp_path / f"world{world}-rank{r}.safetensors" for r in range(world)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(r), str(world), str(port), str(outs[r])],
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(world),
                 "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)},
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(world)
    ]  # fmt: skip
    return procs, outs


def finish_group(world: int, procs: list[subprocess.Popen], outs: list) -> list[dict[str, torch.Tensor]]:
    """Each rank's first update (world 2), or one worker's on the whole batch and on its first half (world 1)."""
    try:
        for proc in procs:
            output, _ = proc.communicate(timeout=300)
            assert proc.returncode == 0, output[-3000:]
    finally:
        for proc in procs:  # a rank left waiting in gloo for one that failed
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if world == 1:
        return [load_file(outs[0]), load_file(str(outs[0]).replace(".safetensors", "-half.safetensors"))]
    return [load_file(out) for out in outs]


@pytest.fixture(scope="module")
def updates(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dp")
    # both groups side by side (they share nothing but the cores); a failure anywhere stops every rank
    groups = {}
    try:
        for world, port in zip((1, 2), free_ports(2)):
            groups[world] = start_group(world, port, tmp)
        one_worker, one_worker_half = finish_group(1, *groups[1])
        two_workers = finish_group(2, *groups[2])
    finally:
        for procs, _ in groups.values():
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    return {"two_workers": two_workers, "one_worker": one_worker, "one_worker_half": one_worker_half}


#: Tolerance on a first moment, (1 - beta1) x gradient: the real gradients here are 1e-4..1e-1, and one worker
#: and two differ by summation order only (measured: below 1e-7 absolute).
MOMENT_ATOL, MOMENT_RTOL = 1e-7, 1e-5
#: A gradient below this is rounding noise: the convolution biases right before an InstanceNorm or GroupNorm
#: have a true gradient of zero (the norm removes any constant), measured 1e-9..4e-8. Adam's first step is
#: lr x sign(gradient), so their updated weights follow the noise's sign, and are left out of the weights check.
NOISE_GRADIENT = 1e-6


def test_two_workers_at_b_update_as_one_worker_at_2b(updates):
    rank0, rank1 = updates["two_workers"]
    one = updates["one_worker"]
    moments = sorted(name for name in one if name.endswith(".exp_avg"))
    assert set(rank0) == set(one) and len(moments) > 10
    checked_weights = 0
    for name in moments:
        # the ranks hold one averaged gradient, equal to one worker's on the whole batch to rounding
        torch.testing.assert_close(rank1[name], rank0[name], rtol=0, atol=0, msg=name)
        torch.testing.assert_close(rank0[name], one[name], rtol=MOMENT_RTOL, atol=MOMENT_ATOL, msg=name)
        weight = name.removesuffix(".exp_avg") + ".weight_after"
        torch.testing.assert_close(rank1[weight], rank0[weight], rtol=0, atol=0, msg=weight)
        if one[name].abs().max() > NOISE_GRADIENT:
            torch.testing.assert_close(rank0[weight], one[weight], rtol=1e-5, atol=1e-6, msg=weight)
            checked_weights += 1
    assert checked_weights > len(moments) * 2 // 3


def test_the_comparison_sees_a_missing_half(updates):
    """The check can fail: one worker on half the batch moves differently from the whole batch."""
    one, half = updates["one_worker"], updates["one_worker_half"]
    moments = [n for n in one if n.endswith(".exp_avg") and one[n].abs().max() > NOISE_GRADIENT]
    differing = [
        n for n in moments if not torch.allclose(half[n], one[n], rtol=MOMENT_RTOL, atol=MOMENT_ATOL)
    ]
    assert differing == moments
