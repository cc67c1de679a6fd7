"""The forward-pass switch: `--compile off|auto|default|max` for the sampler's network call.

One choice for every inference path (`LoadedModel`, so archive translation, evaluation's Ray actors and
Serve replicas; and `s2o eval`'s in-process pass): the bundle's network is wrapped in `CompiledNetwork`,
which calls a `torch.compile`d copy of it (inductor) with static shapes:

- off: eager PyTorch, as before.
- default: `torch.compile(mode="default")` on a CPU (measured on the tiny student and teacher: 1.1-1.5x
  the eager throughput in the same dtype, docs/MEASUREMENTS.md "Compiled inference"); on a GPU `mode="reduce-overhead"`, which
  captures CUDA graphs (the launch overhead that makes a small batch launch-bound).
- max: `mode="max-autotune-no-cudagraphs"` on a CPU, `"max-autotune"` on a GPU: longer compiles that try
  more kernels.
- auto: default where the backend works here (a C++ compiler on a CPU, Triton on a GPU), else off with
  the reason logged. `default`/`max` where the backend cannot work are refused (`CompileError`).

Shapes are static (`dynamic=False`): one compiled graph (and, on a GPU, one CUDA graph) per batch size.
So that a server seeing every batch size from 1 to 64 does not compile 64 times, a batch is padded to
the next power of two (capped at the model's batch size; padded rows are zeros and dropped from the
output; every network here treats rows independently: GroupNorm/InstanceNorm, no batch statistics), so
at most log2(batch)+1 shapes are ever compiled per process. Compiled code is cached on disk by inductor
(its FX graph cache, on by default in torch's cache directory, `TORCHINDUCTOR_CACHE_DIR`), so a second
process with the same network and shapes compiles in a fraction of the time.

The precision of the network call is the existing `--dtype` switch (weights and inputs cast to it);
this module does not change it.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from s2o_platform.errors import S2OError

log = logging.getLogger(__name__)

COMPILE_CHOICES = ("off", "auto", "default", "max")

#: torch.compile mode per choice and device type.
MODES = {
    ("default", "cpu"): "default",
    ("max", "cpu"): "max-autotune-no-cudagraphs",
    ("default", "cuda"): "reduce-overhead",
    ("max", "cuda"): "max-autotune",
}
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


class CompileError(S2OError, ValueError):
    """--compile cannot be honoured here (no C++ compiler, no Triton, an unknown choice or a failed compile)."""


@dataclass(frozen=True)
class CompilePlan:
    """What `--compile` resolved to on one device."""

    choice: str  # as asked: off | auto | default | max
    mode: str | None  # the torch.compile mode; None: eager
    device_type: str = "cpu"
    reason: str = ""  # why eager under auto
    freeze: bool = (
        False  # inductor freezing on a CPU: measured no faster on the tiny UNet, twice the compile time
    )

    @property
    def freezing(self) -> bool:
        """Inductor's freezing (weights as constants), CPU only; off by default (benchmarks/inference_speed.py
        --freeze-variant measures it)."""
        return self.freeze and self.enabled and self.device_type == "cpu"

    @property
    def enabled(self) -> bool:
        return self.mode is not None

    @property
    def cuda_graphs(self) -> bool:
        return self.mode in CUDA_GRAPH_MODES

    def describe(self) -> str:
        if not self.enabled:
            return f"eager ({self.reason})" if self.reason else "eager"
        return f"torch.compile mode={self.mode}{' + freezing' if self.freezing else ''}, static shapes per batch size"


def backend_problem(device_type: str) -> str | None:
    """Why inductor cannot compile for this device type here, or None when it can."""
    if device_type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            return "Triton is not installed or this GPU is too old for it (inductor's GPU backend)"
        return None
    try:
        from torch._inductor import config as inductor_config
        from torch._inductor.cpp_builder import get_cpp_compiler
    except ImportError as err:  # a torch build without inductor
        return f"torch's inductor is not available ({err})"
    try:
        get_cpp_compiler()
    except Exception:  # noqa: BLE001 - InvalidCxxCompiler, or anything else the search raises
        tried = ", ".join(str(c) for c in inductor_config.cpp.cxx if c)
        return f"no working C++ compiler for inductor's CPU backend (tried {tried}; set CXX or install g++)"
    return None


def resolve_compile(
    choice: str, device: torch.device | str, log_fn: Callable[[str], None] | None = None
) -> CompilePlan:
    """--compile on this device: a plan, or CompileError naming why it cannot be honoured."""
    device_type = torch.device(device).type
    if choice not in COMPILE_CHOICES:
        raise CompileError(f"--compile must be one of {', '.join(COMPILE_CHOICES)}; got {choice!r}")
    if choice == "off":
        return CompilePlan("off", None, device_type)
    problem = backend_problem(device_type)
    if problem:
        if choice == "auto":
            plan = CompilePlan(
                "auto", None, device_type, reason=f"--compile auto fell back to eager: {problem}"
            )
            (log_fn or log.warning)(plan.reason)
            return plan
        raise CompileError(
            f"--compile {choice} cannot run on this {device_type}: {problem}. "
            f"Use --compile off (eager), or auto (compiles where it can, else eager)."
        )
    return CompilePlan(choice, MODES[("max" if choice == "max" else "default", device_type)], device_type)


def check_compile_here(choice: str, device: str) -> None:
    """--compile before anything starts (translate, serve): CompileError for an unknown choice, or for default/max
    where this machine cannot compile for the device the workers will most likely use (`device`: auto | cpu |
    cuda; auto is CUDA where this machine has it). off and auto pass: under auto each worker falls back to eager
    where it runs, and logs why."""
    if choice in ("off", "auto"):
        return
    target = "cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu"
    resolve_compile(choice, target)


def batch_bucket(n: int, max_batch: int | None = None) -> int:
    """The batch size a batch of n runs at: the next power of two, capped at max_batch (when n <= max_batch)."""
    bucket = 1 << max(0, int(n) - 1).bit_length()
    if max_batch is not None and n <= max_batch:
        bucket = min(bucket, max_batch)
    return bucket


def buckets_up_to(max_batch: int) -> list[int]:
    """Every batch size a model of batch size `max_batch` can run at (what a warm-up compiles)."""
    return sorted({batch_bucket(n, max_batch) for n in range(1, max_batch + 1)})


def _pad(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    if tensor.shape[0] == rows:
        return tensor
    padding = tensor.new_zeros((rows - tensor.shape[0], *tensor.shape[1:]))
    return torch.cat([tensor, padding])


@dataclass
class CompileStats:
    """What was compiled: batch size -> seconds of its first call (compile + one run)."""

    first_call_s: dict[int, float] = field(default_factory=dict)
    fell_back: str | None = None  # why it runs eager after a failed compile (auto only)

    @property
    def compiled_batches(self) -> list[int]:
        return sorted(self.first_call_s)


class CompiledNetwork(torch.nn.Module):
    """A bundle's network behind the `--compile` switch, called exactly like the network it wraps
    (`unet(x, t).sample` for a diffusers UNet2DModel, `generator(x)` for pix2pix): parameters, dtype
    and device are the wrapped network's. Batches are padded to `batch_bucket` sizes (see the module doc)."""

    def __init__(
        self,
        network: torch.nn.Module,
        plan: CompilePlan,
        max_batch: int | None = None,
        log_fn: Callable[[str], None] | None = None,
        backend: Any = None,
    ):
        super().__init__()
        self.network = network
        self.plan = plan
        self.max_batch = max_batch
        self.stats = CompileStats()
        self._log = log_fn or log.info
        self._unet = _is_unet(network)
        self._compiled: list[Callable] = []  # a list, not an attribute: it is not a submodule of ours
        if plan.enabled:
            import torch._dynamo.config as dynamo_config

            # diffusers' upsampling asks is_torch_version() (an lru_cache) inside forward: dynamo traces through it
            # and warns, once per process, in every replica's log; the answer is a constant for a given torch
            warnings.filterwarnings(
                "ignore",
                message="Dynamo detected a call to a `functools.lru_cache`-wrapped",
                category=UserWarning,
            )
            # one cache entry per (network, batch size) on the forward's code object: several models and
            # buckets in one process (a benchmark, an eval of 4 settings) must not hit dynamo's limit of 8
            dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 64)
            dynamo_config.accumulated_recompile_limit = max(dynamo_config.accumulated_recompile_limit, 1024)
            kwargs: dict[str, Any] = {"dynamic": False}
            if backend is not None:  # tests: a counting backend
                kwargs["backend"] = backend
            elif (
                plan.freezing
            ):  # mode's options plus freezing (torch.compile takes a mode or options, not both)
                from torch._inductor import list_mode_options

                kwargs["options"] = {**list_mode_options(plan.mode), "freezing": True}
            else:
                kwargs["mode"] = plan.mode
            self._compiled.append(torch.compile(network, **kwargs))

    @property
    def compiled(self) -> bool:
        return bool(self._compiled)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if not self._compiled:
            return self.network(x, *args, **kwargs)
        n = x.shape[0]
        rows = batch_bucket(n, self.max_batch)
        padded_args = [
            _pad(a, rows) if torch.is_tensor(a) and a.ndim and a.shape[0] == n else a for a in args
        ]
        call_kwargs = dict(kwargs)
        want_dict = call_kwargs.pop("return_dict", True) if self._unet else False
        if self._unet:
            call_kwargs["return_dict"] = False
        first = rows not in self.stats.first_call_s
        started = time.perf_counter()
        if self.plan.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        try:
            out = self._compiled[0](_pad(x, rows), *padded_args, **call_kwargs)
        except Exception as err:  # noqa: BLE001 - a backend failure (compiler missing or broken) on first use
            if not first:
                raise
            return self._failed(err, x, args, kwargs)
        sample = out[0] if self._unet else out
        sample = sample[:n]
        if self.plan.cuda_graphs:  # the graph's output buffer is overwritten by its next replay
            sample = sample.clone()
        if first:
            if x.is_cuda:
                torch.cuda.synchronize(x.device)
            seconds = time.perf_counter() - started
            self.stats.first_call_s[rows] = seconds
            self._log(
                f"[compile] {type(self.network).__name__} {self.plan.mode}: batch {rows} compiled in {seconds:.1f} s"
            )
        if self._unet and want_dict:
            from diffusers.models.unets.unet_2d import UNet2DOutput

            return UNet2DOutput(sample=sample)
        return (sample,) if self._unet else sample

    def _failed(self, err: Exception, x: torch.Tensor, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
        cause = (
            getattr(err, "inner_exception", None) or err
        )  # dynamo's BackendCompilerFailed wraps the backend's error
        lines = [line for line in str(cause).splitlines() if line.strip()]
        reason = (
            f"torch.compile ({self.plan.mode}) failed: {type(cause).__name__}: {lines[0] if lines else ''}"
        )
        if self.plan.choice != "auto":
            raise CompileError(
                f"--compile {self.plan.choice}: {reason}. Use --compile off, or auto to fall back to eager"
            ) from err
        self.stats.fell_back = reason
        self._compiled.clear()
        self._log(f"[compile] --compile auto: running eager: {reason}")
        return self.network(x, *args, **kwargs)

    @torch.no_grad()
    def warm_up(self, batch_sizes: Sequence[int], sample_shape: Sequence[int]) -> None:
        """Compile every bucket of `batch_sizes` now (zeros of shape (b, *sample_shape); a timestep for a UNet)."""
        if not self._compiled:
            return
        first = next(self.network.parameters())
        for b in sorted({batch_bucket(n, self.max_batch) for n in batch_sizes}):
            if b in self.stats.first_call_s:
                continue
            x = torch.zeros((b, *sample_shape), device=first.device, dtype=first.dtype)
            if self._unet:
                self(x, torch.full((b,), 999, device=first.device, dtype=torch.long))
            else:
                self(x)
            if not self._compiled:
                return


def _is_unet(network: torch.nn.Module) -> bool:
    from diffusers import UNet2DModel

    return isinstance(network, UNet2DModel)


def network_input_shape(network: torch.nn.Module, tile_size: int, sar_channels: int) -> tuple[int, int, int]:
    """The (C, H, W) a bundle's network takes: noisy optical + SAR for a UNet, SAR for pix2pix."""
    channels = network.config.in_channels if _is_unet(network) else sar_channels
    return (int(channels), tile_size, tile_size)


def compile_bundle(
    bundle,
    plan: CompilePlan,
    max_batch: int | None = None,
    log_fn: Callable[[str], None] | None = None,
    warm_batches: Sequence[int] = (),
):
    """Put a loaded bundle's network behind the switch (in place; returns the bundle). A no-op when off."""
    if not plan.enabled or isinstance(bundle.model, CompiledNetwork):
        return bundle
    wrapped = CompiledNetwork(bundle.model, plan, max_batch=max_batch, log_fn=log_fn)
    bundle.model = wrapped
    if warm_batches:
        wrapped.warm_up(
            warm_batches,
            network_input_shape(wrapped.network, bundle.metadata.tile_size, bundle.metadata.sar_channels),
        )
    return bundle


def compile_stats(bundle) -> CompileStats | None:
    model = getattr(bundle, "model", None)
    return model.stats if isinstance(model, CompiledNetwork) else None
