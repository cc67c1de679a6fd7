"""The service's settings (the `args` of the Serve application) and reading serve/config.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from s2o_platform.config import CompileChoice
from s2o_platform.errors import S2OError

#: The Serve config shipped inside the package (package data: it is in the wheel). The repository's
#: serve/config.yaml is the source of truth; this is a byte-identical copy (tests/test_wheel.py fails
#: on drift and says which file to copy).
DEFAULT_CONFIG = Path(__file__).resolve().parent / "config.yaml"


class ServeConfigError(S2OError, ValueError):
    """serve/config.yaml or the service's settings are unusable (said before anything starts)."""


class ServeSettings(BaseModel):
    """What one replica does with a request. Deployment options (replicas, autoscaling, queue limits)
    are Serve's own and live beside these in serve/config.yaml."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="inference bundle (a student's OUT/bundle; any stage's bundle works)")
    steps: int | None = Field(None, description="default sampling steps; None: the bundle's default")
    overlap: int | None = Field(
        None, ge=0, description="px between neighbouring tiles of a large image; None: a quarter tile"
    )
    max_image_side: int = Field(1024, ge=8, description="largest accepted width or height, px")
    max_body_mb: float = Field(
        16.0, gt=0, description="largest accepted request body, MB (checked before decoding)"
    )
    max_decode_mb: float = Field(
        64.0,
        gt=0,
        description="largest decoded raster (and TIFF block) a request may need, "
        "MB (checked from the header before any pixel is read)",
    )
    body_timeout_s: float = Field(
        20.0, gt=0, description="a request body must arrive within this many seconds (else 408)"
    )
    body_chunk_timeout_s: float = Field(
        5.0, gt=0, description="the longest pause between two chunks of a body (else 408)"
    )
    max_request_model_s: float = Field(
        20.0,
        gt=0,
        description="refuse (413) a request whose tiles x steps would take "
        "longer than this at the replica's measured speed; keep below the HTTP request timeout",
    )
    max_batch_size: int = Field(
        16, ge=1, description="requests merged into one forward pass (1 turns merging off)"
    )
    max_uncertainty_samples: int = Field(
        8,
        ge=2,
        description="most samples per tile a request may ask for with ?uncertainty=K (each costs a forward pass)",
    )
    model_batch_tiles: int = Field(
        64, ge=1, description="the most tiles in one forward pass, merged across requests"
    )
    seed: int = 0
    device: str = Field("auto", description="auto | cpu | cuda")
    dtype: str = Field(
        "auto",
        pattern="^(auto|fp32|fp16|bf16)$",
        description="network precision: auto (fp16 on a GPU; "
        "bf16 on a CPU that has it, else fp32), fp32, fp16 or bf16",
    )
    compile: CompileChoice = Field(
        "off",
        pattern="^(off|auto|default|max)$",
        description="the forward pass (inference_compile): "
        "off (eager), auto (compiled where a C++ compiler / Triton works, else eager), default "
        "(torch.compile; CUDA graphs on a GPU) or max; every batch size a replica can run is compiled "
        "before it reports ready (an unquoted off, which YAML reads as false, means 'off')",
    )
    torch_threads: int | None = Field(
        None,
        ge=1,
        description="CPU replicas: torch threads; None: the CPUs the "
        "replica reserves (ray_actor_options.num_cpus), leaving the rest to the HTTP proxy",
    )

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    @property
    def max_decode_bytes(self) -> int:
        return int(self.max_decode_mb * 1024 * 1024)


def settings_from_args(args: dict[str, Any]) -> ServeSettings:
    try:
        return ServeSettings(**args)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors())
        raise ServeConfigError(f"bad serve application args: {problems}") from None


def load_serve_config(path: str | Path):
    """serve/config.yaml as a validated `ServeDeploySchema` (what `serve deploy` would accept)."""
    from ray.serve.schema import ServeDeploySchema

    path = Path(path)
    if not path.is_file():
        raise ServeConfigError(
            f"no Serve config at {path}; pass --config with the repository's serve/config.yaml "
            f"or your copy of it (the package ships one: {DEFAULT_CONFIG})"
        )
    try:
        raw = yaml.safe_load(path.read_text())
        config = ServeDeploySchema.model_validate(raw)
    except (yaml.YAMLError, ValidationError) as err:
        raise ServeConfigError(f"{path} is not a valid Serve config: {err}") from None
    if len(config.applications) != 1:
        raise ServeConfigError(
            f"{path} must hold exactly one application (the translator), found {len(config.applications)}"
        )
    return config
