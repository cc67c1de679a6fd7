"""Devices, precisions and CPU threads: the rules every stage shares (training workers, inference, evaluation,
translation and serving), so each has one home below all of them."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "--device cuda was asked for, but torch sees no CUDA GPU here; use --device auto or cpu"
        )
    if name not in ("cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


def cpu_supports(name: str) -> bool:
    """Whether this CPU runs a dtype at speed: bf16 needs AVX512-BF16 or AMX, fp16 AVX512-FP16 (oneDNN)."""
    if name == "fp32":
        return True
    check = {
        "bf16": torch.ops.mkldnn._is_mkldnn_bf16_supported,
        "fp16": torch.ops.mkldnn._is_mkldnn_fp16_supported,
    }[name]
    try:
        return bool(check())
    except (AttributeError, RuntimeError):
        return False


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """auto: fp16 on a GPU (diffusers' usual inference precision); on a CPU bf16 where it has AVX512-BF16
    or AMX (measured with benchmarks/inference_precision.py on the tiny student: 1.91x the fp32
    throughput, PSNR equal to 0.01 dB), else fp32. bf16/fp16 on a CPU only where it has the instructions
    for them (else they run emulated, many times slower)."""
    if name == "auto":
        if device.type == "cuda":
            return torch.float16
        return torch.bfloat16 if cpu_supports("bf16") else torch.float32
    if name not in DTYPES:
        raise ValueError(f"--dtype must be auto, fp32, fp16 or bf16, got {name!r}")
    if device.type == "cpu" and not cpu_supports(name):
        need = "AVX512-BF16 or AMX" if name == "bf16" else "AVX512-FP16"
        raise ValueError(
            f"--dtype {name} on this CPU would run emulated (it lacks {need}); use fp32{' or bf16' if cpu_supports('bf16') else ''}"
        )
    return DTYPES[name]


def cpu_threads(requested: int | None, local_workers: int, reserve: int = 0) -> int:
    """Torch threads for a CPU worker: as asked, else the node's cores, less `reserve` (cores kept for a
    process that works beside the workers, e.g. the driver that mosaics and writes `s2o translate`'s COGs),
    shared among its workers.

    Ray sets OMP_NUM_THREADS to a worker's CPU reservation (1 here), which would leave cores idle.
    """
    if requested:
        return requested
    return max(1, ((os.cpu_count() or 1) - reserve) // max(1, local_workers))


def dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in DTYPES.items()}[dtype]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({os.cpu_count()} cores)"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class ActorPlan:
    """Where a Ray Data pool of model actors runs (`inference_actors`): the device each actor loads its model
    on, the most actors in the pool and the GPUs each reserves. CPU actors on one node share its cores
    (`cpu_share`, for cpu_threads); Ray Data's default of one CPU per actor is kept."""

    device: str  # cuda | cpu (or what was asked for where the cluster has no GPU: resolve_device refuses it there)
    actors: int
    gpus_per_actor: int
    cpu_hosts: int = 1  # the machines with CPUs to run actors on (cluster_cpu_hosts)

    @property
    def cpu_share(self) -> int:
        """Actors per machine, so each takes its machine's cores / this many threads: Ray Data spreads the pool
        over the nodes (SPREAD), so N actors on N machines get one each. Rounded up: of 3 actors on 2 machines,
        the one alone uses half its cores (never more than all). SPREAD is best effort: actors packed onto one
        machine anyway oversubscribe it by up to the number of machines."""
        return -(-self.actors // max(1, min(self.cpu_hosts, self.actors)))

    def map_batches_args(self) -> dict:
        """`compute` and `num_gpus` for Dataset.map_batches: a pool of exactly `actors` actors. Ray Data spreads
        them over the cluster's nodes (its default scheduling strategy, SPREAD), so several nodes' cores or GPUs
        are used, and restarts an actor elsewhere when its node is lost (actors restartable by default)."""
        import ray.data

        return {
            "compute": ray.data.ActorPoolStrategy(size=self.actors),
            "num_gpus": self.gpus_per_actor,
        }


def inference_actors(actors: int, cluster_gpus: int, device: str = "auto", cpu_hosts: int = 1) -> ActorPlan:
    """The one rule for model actors on Ray Data (evaluation, translation of scenes and of stores): where the
    cluster has GPUs every actor takes one and runs on CUDA; else each runs on `device` (auto: the CPU), sharing
    its machine's cores with the pool's other actors there (`cpu_hosts`: the cluster's machines with CPUs).
    At least one actor."""
    on_gpu = cluster_gpus > 0
    return ActorPlan(
        device="cuda" if on_gpu else ("cpu" if device == "auto" else device),
        actors=max(1, actors),
        gpus_per_actor=1 if on_gpu else 0,
        cpu_hosts=max(1, cpu_hosts),
    )


def cluster_gpus() -> int:
    """GPUs of the connected Ray cluster."""
    import ray

    return int(ray.cluster_resources().get("GPU", 0))


def cluster_cpu_hosts() -> int:
    """Machines (node addresses) of the connected Ray cluster with alive nodes that have CPUs, where CPU actors
    can run. Addresses, not nodes: several raylets on one machine (a test cluster) share its cores, which is
    what cpu_threads divides."""
    import ray

    nodes = [node for node in ray.nodes() if node["Alive"] and node["Resources"].get("CPU", 0) > 0]
    return len({node["NodeManagerAddress"] for node in nodes})
