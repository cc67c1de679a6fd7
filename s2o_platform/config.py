"""Typed configuration: one pydantic model per stage, YAML presets in configs/, `--set` overrides.

    cfg = load_config(IngestConfig, "configs/tiny/ingest.yaml", ["tile_size=32", "split.seed=3"])

Unknown keys and wrong types are errors (`ConfigError`) that name the key, the value and where it
came from (the YAML file or `--set`). The resolved config is what a run saves beside its outputs.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from s2o_platform.data.normalization import SarScale
from s2o_platform.errors import S2OError

#: The step range 1..N a consistency student samples with unless its config or bundle says otherwise
#: (METHOD.md section 5): distill.max_sampling_steps' default, older bundles' sampler.max_steps, the samplers'.
STUDENT_MAX_STEPS = 8

ConfigT = TypeVar("ConfigT", bound="StageConfig")

#: The presets shipped inside the package (package data: they are in the wheel), read by `s2o demo` and
#: used when `--config configs/<preset>/<stage>.yaml` names a file that is not there (an installed package,
#: run outside a checkout). The repository's top-level configs/ is the source of truth; these are
#: byte-identical copies (tests/test_wheel.py fails on drift and says which file to copy).
PRESETS_DIR = Path(__file__).resolve().parent / "presets"


class ConfigError(S2OError, ValueError):
    """A configuration problem; the message names the key, the value and the source."""


class Section(BaseModel):
    """A config section: unknown keys are errors, values are validated on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class StageConfig(Section):
    """Base of the per-stage configuration models."""


def _off_is_off(value: Any) -> Any:
    """YAML 1.1 reads an unquoted `off` as false: `--set compile=off` (or `compile: off`) means the choice 'off'."""
    return "off" if value is False else value


def _text(value: Any) -> Any:
    """A band given as a number (`--set band=2`, YAML `band: 2`) is its 1-based index, as `--band 2` is."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


#: A `compile` choice (off | auto | default | max), unquoted `off` in YAML included.
CompileChoice = Annotated[str, BeforeValidator(_off_is_off)]


# ---------------------------------------------------------------------------------------------
# Data stages
# ---------------------------------------------------------------------------------------------


class SplitSection(Section):
    test_fraction: float = Field(0.1, ge=0, lt=1)
    val_fraction: float = Field(0.1, ge=0, lt=1)
    seed: int = 0


class IngestConfig(StageConfig):
    """`s2o data ingest`: how sources are cut into tiles and normalised."""

    tile_size: int = Field(256, ge=8, description="tile side in pixels (the model's input size)")
    stride: int | None = Field(None, ge=1, description="window step; defaults to tile_size (no overlap)")
    sar_scale: SarScale = SarScale.AUTO
    sar_band: str | None = Field(None, description="SAR polarisation by name (VV) or 1-based index")
    clip_db: tuple[float, float] = (-25.0, 0.0)
    shard_mb: float = Field(64.0, gt=0, description="target size of one Parquet shard")
    max_nodata: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="largest share of invalid pixels (nodata, fill) a kept "
        "window may hold; they are recorded in a per-pixel mask that training losses and "
        "evaluation metrics ignore. 0: only fully valid windows",
    )
    split: SplitSection = SplitSection()

    @field_validator("clip_db")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if v[0] >= v[1]:
            raise ValueError(f"clip_db must be LO < HI, got {list(v)}")
        return v


class SynthConfig(StageConfig):
    """`s2o data synth`: the procedural benchmark set."""

    pairs: int = Field(2048, ge=1)
    size: int = Field(32, ge=8)
    scene_files: int = Field(3, ge=0, description="large GeoTIFF scenes written with --scenes")
    scene_size: int = Field(512, ge=32)
    clip_db: tuple[float, float] = (-25.0, 0.0)
    split: SplitSection = SplitSection()


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def parse_override(text: str) -> tuple[list[str], Any]:
    """'a.b.c=value' -> (['a', 'b', 'c'], value parsed as YAML: 3 -> int, true -> bool, [1,2] -> list)."""
    if "=" not in text:
        raise ConfigError(f"--set expects dotted.key=value, got {text!r}")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set has an empty key in {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def _set_nested(data: dict, keys: list[str], value: Any, original: str) -> None:
    node = data
    for depth, key in enumerate(keys[:-1]):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {original}: {'.'.join(keys[: depth + 1])} is a value, not a section")
        node = child
    node[keys[-1]] = value


def _describe(error: dict, sources: dict[str, str], data: dict) -> str:
    loc = ".".join(str(p) for p in error["loc"])
    # The nearest key that was set, for errors on sub-items like clip_db.0.
    parts = [str(p) for p in error["loc"]]
    where = "defaults"
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        below = [k for k in sources if k == prefix or k.startswith(prefix + ".")]
        if below:
            where = sources[below[-1]]
            break
    value = error.get("input")
    if error["type"] == "extra_forbidden":
        return f"unknown key {loc!r} (value {value!r}) in {where}"
    return f"{loc}: {error['msg']} (value {value!r}) in {where}"


def _flatten(data: Any, prefix: str = "") -> list[str]:
    if not isinstance(data, dict):
        return [prefix]
    out = []
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        out += [key] + (_flatten(v, key) if isinstance(v, dict) else [])
    return out


def _merge(into: dict, update: Mapping) -> None:
    """Deep-merge `update` into `into`: sections merge key by key, anything else is replaced."""
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)


def load_config(
    model: type[ConfigT],
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    *,
    flags: Mapping[str, Any] | None = None,
    base: Mapping[str, Any] | None = None,
    base_source: str = "defaults",
    flags_source: str | Callable[[str], str] = "the command line",
) -> ConfigT:
    """Build a config from a YAML file (optional) and `--set` overrides, validating everything.

    Precedence, lowest first: the model's defaults < `base` (a preset's values, e.g. `s2o demo --preset`)
    < the file < `overrides` (`--set dotted.key=value`, in order) < `flags` (dotted key -> value: a
    command's explicit options; None values are left out, so an option not given changes nothing).
    Errors name where a value came from: `base_source`, the file, the `--set`, or `flags_source` (a text, or a
    function of the key, e.g. key -> its option's name).
    """
    data: dict[str, Any] = copy.deepcopy(dict(base or {}))
    sources: dict[str, str] = {k: base_source for k in _flatten(data)} if data else {}
    if path is not None:
        path = packaged_preset(Path(path))
        try:
            loaded = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of keys, got {type(loaded).__name__}")
        _merge(data, loaded)
        sources.update({k: f"file {path}" for k in _flatten(loaded)})
    for text in overrides or []:
        keys, value = parse_override(text)
        _set_nested(data, keys, value, text)
        sources[".".join(keys)] = f"--set {text}"
    for key, value in (flags or {}).items():
        if value is not None:
            where = flags_source(key) if callable(flags_source) else flags_source
            _set_nested(data, key.split("."), value, f"{key}={value!r} ({where})")
            sources[key] = where
    try:
        return model.model_validate(data)
    except ValidationError as err:
        problems = "; ".join(_describe(e, sources, data) for e in err.errors())
        raise ConfigError(f"invalid {model.__name__}: {problems}") from None


def packaged_preset(path: Path) -> Path:
    """`path` itself where it exists (a path given always wins); else, for a relative
    `configs/<preset>/<file>.yaml` (the repository's presets, as the README writes them) the copy shipped
    in the package, so that the documented commands work from any directory once the package is installed."""
    if path.exists() or path.is_absolute() or len(path.parts) != 3 or path.parts[0] != "configs":
        return path
    shipped = PRESETS_DIR / path.parts[1] / path.parts[2]
    return shipped if shipped.is_file() else path


def dump_config(config: BaseModel) -> str:
    """The resolved config as YAML (saved with every run and bundle)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


# ---------------------------------------------------------------------------------------------
# Training stages (shared sections, then one model per stage)
# ---------------------------------------------------------------------------------------------


class UNetSection(Section):
    """diffusers UNet2DModel architecture; input = concat(noisy optical, SAR), output = 3 channels."""

    sample_size: int | None = Field(
        None, ge=8, description="tile side in pixels; null: the training store's tile size"
    )
    block_out_channels: tuple[int, ...] = (32, 64, 128)
    layers_per_block: int = Field(1, ge=1)
    down_block_types: tuple[str, ...] = ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D")
    up_block_types: tuple[str, ...] = ("UpBlock2D", "AttnUpBlock2D", "UpBlock2D")
    attention_head_dim: int = 8
    norm_num_groups: int = 32
    dropout: float = Field(0.0, ge=0, lt=1)

    @field_validator("up_block_types")
    @classmethod
    def _same_depth(cls, v: tuple[str, ...], info) -> tuple[str, ...]:
        down = info.data.get("down_block_types")
        if down is not None and len(down) != len(v):
            raise ValueError(f"up_block_types has {len(v)} blocks but down_block_types has {len(down)}")
        return v


class DiffusionSection(Section):
    """The noise schedule (diffusers DDPMScheduler arguments)."""

    num_train_timesteps: int = Field(1000, ge=2)
    beta_schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    prediction_type: str = Field("epsilon", pattern="^(epsilon|v_prediction)$")
    clip_sample: bool = Field(
        True, description="samplers clip the predicted clean image to [-1, 1] (pixel space)"
    )


class TrainSection(Section):
    max_steps: int = Field(1000, ge=1, description="optimizer steps")
    batch_size: int = Field(16, ge=1, description="micro-batch per worker")
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(2e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = Field(100, ge=0)
    lr_schedule: str = Field("cosine", pattern="^(cosine|constant|linear)$")
    grad_clip: float = Field(1.0, ge=0, description="0 disables clipping")
    ema_decay: float = Field(0.999, ge=0, lt=1)
    ema_warmup: bool = Field(
        True,
        description="cap the EMA decay at (1 + step) / (10 + step), so the average "
        "forgets its starting weights early (a random initialisation would linger otherwise)",
    )
    autocast: str = Field(
        "off",
        pattern="^(off|bf16)$",
        description="bf16: forward passes under torch.autocast "
        "in bfloat16 with fp32 weights, optimizer and EMA (CPUs with AVX512-BF16/AMX and GPUs); "
        "applies where deepspeed.precision resolves to fp32",
    )
    seed: int = 0
    augment: bool = Field(True, description="random flips and 90-degree rotations, same for SAR and optical")
    log_every_steps: int = Field(10, ge=1)


class ScalingSection(Section):
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    placement_strategy: str = Field(
        "PACK",
        pattern="^(PACK|SPREAD|STRICT_PACK|STRICT_SPREAD)$",
        description="how workers are placed on the nodes (Ray placement groups): PACK fills a node before the "
        "next (fast links inside a node); SPREAD one worker per node where it can, STRICT_SPREAD always (losing "
        "a node then takes one worker, and each node's cores or GPUs and I/O are used)",
    )
    torch_threads: int | None = Field(
        None, ge=1, description="CPU workers: torch threads; default cores / workers on the node"
    )


class DeepSpeedSection(Section):
    zero_stage: int = Field(
        0, ge=0, le=2, description="ZeRO 0-2 (3 partitions parameters, which EMA export needs whole)"
    )
    precision: str = Field(
        "auto",
        pattern="^(auto|fp32|bf16|fp16)$",
        description="auto: bf16 on GPUs that have it, else fp16 on GPU, fp32 on CPU",
    )


class CheckpointSection(Section):
    every_steps: int = Field(200, ge=1)
    num_to_keep: int = Field(2, ge=1)


class FailureSection(Section):
    max_failures: int = Field(
        2,
        ge=0,
        description="worker/node failures survived by restarting from the latest checkpoint; "
        "and, counted apart, storage outages that stopped Ray Train's controller",
    )
    storage_wait_s: float = Field(
        600,
        gt=0,
        description="at most how long a run whose storage stopped answering waits for it; it resumes from "
        "the latest checkpoint as soon as the storage answers, and fails naming the storage error after this",
    )


class DataSection(Section):
    materialize_below_mb: float = Field(
        2048,
        ge=0,
        description="a train split smaller than this is read once into the object store and fully "
        "shuffled every epoch; a larger one is streamed from storage every epoch",
    )
    shuffle_buffer: int = Field(
        256,
        ge=0,
        description="rows in the local shuffle buffer of each worker "
        "for a streamed split (0: none; a materialised split is fully shuffled instead)",
    )


class TrackingSection(Section):
    """Experiment tracking with MLflow (s2o_platform/tracking.py): off unless a tracking URI is set here or in
    $MLFLOW_TRACKING_URI. Not a defining section: a resumed run may change it."""

    uri: str | None = Field(
        None,
        description="MLflow tracking URI (http://host:5000, databricks, ...); "
        "null: $MLFLOW_TRACKING_URI, and tracking is off when that is unset too",
    )
    experiment: str | None = Field(
        None, description="MLflow experiment; null: s2o-<stage> (s2o-teacher, s2o-distill, s2o-gan)"
    )
    run_name: str | None = Field(None, description="name of the MLflow run; null: the run folder's name")
    register_as: str | None = Field(
        None,
        description="register the final bundle as a new version of this "
        "MLflow registered model (created when missing); null: no registration",
    )


class TrainingStageConfig(StageConfig):
    """Sections every training stage has."""

    train: TrainSection = TrainSection()
    data: DataSection = DataSection()
    scaling: ScalingSection = ScalingSection()
    deepspeed: DeepSpeedSection = DeepSpeedSection()
    checkpoint: CheckpointSection = CheckpointSection()
    failure: FailureSection = FailureSection()
    tracking: TrackingSection = TrackingSection()

    def model_tile_size(self) -> int | None:
        """The tile side the stage's network is configured for (null: take the store's; distillation: the teacher's)."""
        for section in ("model", "generator"):
            if hasattr(self, section):
                return getattr(self, section).sample_size
        return None

    def sized_for_store(self, tile_size: int) -> TrainingStageConfig:
        """This config with a network tile side left null set to the training store's: the store knows its tiles, so
        a preset need not restate them. The filled-in value is what the run folder's config.yaml records."""
        for section in ("model", "generator"):
            part = getattr(self, section, None)
            if part is not None and part.sample_size is None:
                return self.model_copy(update={section: part.model_copy(update={"sample_size": tile_size})})
        return self


class TeacherLossSection(Section):
    min_snr_gamma: float | None = Field(
        None,
        gt=0,
        description="Min-SNR-gamma loss weighting (Hang et al. 2023; 5 is their choice); null: the plain MSE",
    )


class TeacherConfig(TrainingStageConfig):
    """`s2o train teacher`: the conditional pixel-space DDPM (METHOD.md section 2)."""

    model: UNetSection = UNetSection()
    diffusion: DiffusionSection = DiffusionSection()
    loss: TeacherLossSection = TeacherLossSection()
    sample_steps: int = Field(50, ge=1, description="DDIM steps the bundle advertises as its default sampler")


class DistillSection(Section):
    """Adversarial consistency distillation (METHOD.md sections 3-4)."""

    num_ddim_steps: int = Field(
        50, ge=2, description="solver grid points over the training timesteps (skip = T / N)"
    )
    huber_c: float = Field(
        0.001, gt=0, description="pseudo-Huber c; 0.001 as in the public code makes it nearly L1"
    )
    timestep_scaling: float = Field(
        10.0, gt=0, description="s in c_skip/c_out (sigma_data is 0.5, as in LCMScheduler)"
    )
    adversarial: bool = Field(True, description="false: consistency distillation only (the ablation)")
    real: str = Field(
        "ground_truth", pattern="^(ground_truth|target)$", description="what the discriminator sees as real"
    )
    gan_loss: str = Field("non_saturating", pattern="^(non_saturating|hinge|wgan)$")
    lambda_adv: float = Field(1.0, ge=0)
    discriminator_lr: float | None = Field(None, gt=0, description="default: train.lr")
    default_steps: int = Field(
        4, ge=1, description="student steps the bundle advertises (at most max_sampling_steps)"
    )
    max_sampling_steps: int = Field(
        STUDENT_MAX_STEPS,
        ge=1,
        le=50,
        description="the student bundle's step range 1..N, written as its "
        "sampler.max_steps (METHOD.md section 5: 1..8); more steps are refused at inference",
    )
    frozen_fp32: bool = Field(
        False,
        description="false: the frozen teacher and the EMA target (fp32 weights, no "
        "gradients) run under autocast in the student's compute dtype (bf16/fp16 when it trains "
        "in them): their outputs are regression targets for a student that itself computes in "
        "that dtype, and on a GPU this halves the two extra forward passes; true: fp32 passes",
    )

    @model_validator(mode="after")
    def _default_within_range(self) -> DistillSection:
        if self.default_steps > self.max_sampling_steps:
            raise ValueError(
                f"default_steps ({self.default_steps}) must be at most max_sampling_steps "
                f"({self.max_sampling_steps}): the bundle samples with 1..{self.max_sampling_steps} steps"
            )
        return self


class DistillConfig(TrainingStageConfig):
    """`s2o train distill`: student, EMA target and frozen teacher from a teacher bundle.

    The architecture comes from the teacher bundle. train.ema_decay is the target network's decay mu
    (0.95 in the paper); the exported student is that EMA target.
    """

    distill: DistillSection = DistillSection()


class GeneratorSection(Section):
    sample_size: int | None = Field(
        None, ge=8, description="tile side, a power of two; null: the training store's tile size"
    )
    base_channels: int = Field(64, ge=4)
    dropout: float = Field(0.5, ge=0, lt=1)


class PatchDiscriminatorSection(Section):
    base_channels: int = Field(64, ge=4)
    n_layers: int = Field(3, ge=1, le=5, description="3 gives pix2pix's 70x70 patches at 256 px")


class GanSection(Section):
    lambda_l1: float = Field(100.0, ge=0)
    gan_loss: str = Field("non_saturating", pattern="^(non_saturating|hinge|wgan)$")
    discriminator_lr: float | None = Field(None, gt=0, description="default: train.lr")


class GanConfig(TrainingStageConfig):
    """`s2o train gan`: the pix2pix baseline (U-Net generator + PatchGAN, L1 + adversarial)."""

    generator: GeneratorSection = GeneratorSection()
    discriminator: PatchDiscriminatorSection = PatchDiscriminatorSection()
    gan: GanSection = GanSection()


# ---------------------------------------------------------------------------------------------
# Inference commands: `s2o translate` and `s2o eval` (pure data: the commands build their run options from these)
# ---------------------------------------------------------------------------------------------

#: Network precision names (devices.DTYPES) and auto.
DTYPE_PATTERN = "^(auto|fp32|fp16|bf16)$"
COMPILE_PATTERN = "^(off|auto|default|max)$"


class TranslateConfig(StageConfig):
    """`s2o translate`: how SAR scenes (or a tile store's split) are translated. SOURCE and DEST, the Ray
    cluster (--address), the storage endpoint (--s3-endpoint) and --progress stay on the command line;
    the resolved config is saved as DEST/_s2o_config.yaml."""

    model: str | None = Field(
        None,
        description="the bundle to translate with (a student's OUT/bundle; any stage "
        "works), local or s3://; required, here or as --model",
    )
    steps: int | None = Field(
        None,
        ge=1,
        description="sampling steps (student: 1..the bundle's max_steps, 8 by default); null: the bundle's default",
    )
    overlap: int | None = Field(
        None,
        ge=0,
        description="overlap of neighbouring windows in px, blended smoothly; null: a quarter of the tile",
    )
    batch_size: int = Field(32, ge=1, description="tiles per forward pass")
    actors: int = Field(1, ge=1, description="model actors (each takes a GPU where the cluster has them)")
    band: Annotated[str | None, BeforeValidator(_text)] = Field(
        None,
        description="SAR band by name (VV, VH) or 1-based index; null: the band described VV, else the first",
    )
    target_crs: str | None = Field(
        None,
        description="for scenes referenced by ground control points (Sentinel-1 GRD): the CRS of the grid they are "
        "warped onto (EPSG:32633, WKT...); null: the UTM zone of the scene centre",
    )
    target_resolution: float | None = Field(
        None,
        gt=0,
        description="for GCP-referenced scenes: the grid's pixel size in the target CRS's units; null: the "
        "source's ground spacing",
    )
    asset: str | None = Field(
        None,
        description="for a STAC SOURCE: the key of each item's SAR asset; null: the asset whose sar:polarizations "
        "or key says VV, else the only data asset",
    )
    sar_scale: SarScale = Field(
        SarScale.AUTO,
        description="how SAR values are expressed: auto decides per scene "
        "(see `s2o translate --help`), or uint8 | db | linear | dn",
    )
    output_dtype: str = Field(
        "uint8",
        pattern="^(uint8|float32)$",
        description="uint8 RGB (nodata 0) or float32 in [0, 1] (nodata NaN)",
    )
    seed: int = Field(
        0, description="noise seed (each tile's noise is keyed by it, its scene and its window)"
    )
    device: str = Field(
        "auto",
        pattern="^(auto|cpu|cuda)$",
        description="where the model actors run: auto (a GPU "
        "where the cluster has one, else the CPU), cpu or cuda",
    )
    dtype: str = Field(
        "auto",
        pattern=DTYPE_PATTERN,
        description="network precision: auto (fp16 on a GPU; bf16 on "
        "a CPU that has it, else fp32), fp32, fp16 or bf16",
    )
    compile: CompileChoice = Field(
        "off",
        pattern=COMPILE_PATTERN,
        description="the forward pass: off (eager), auto, "
        "default or max (torch.compile; see `s2o translate --help`)",
    )
    uncertainty: int = Field(
        0,
        ge=0,
        description="samples per tile for an uncertainty band (0: none; else at least 2): each scene's COG gains "
        "a fourth band, the per-pixel standard deviation over the samples (mean of RGB, in the RGB bands' units), "
        "blended across overlaps like the image; costs that many forward passes (a student or teacher bundle)",
    )
    output: str = Field(
        "mean",
        pattern="^(mean|sample)$",
        description="with --uncertainty: the RGB bands hold the samples' mean, or the first sample "
        "(what a run without --uncertainty gives)",
    )
    split: str = Field("test", description="for a tile store SOURCE: the split translated into Parquet")


class EvalConfig(StageConfig):
    """`s2o eval`: which model settings are compared, on which tiles, and how speed is measured. The store
    (--data), the report folder (--out), the Ray cluster (--address), the storage endpoint (--s3-endpoint) and
    --mlflow-run-id stay on the command line; the resolved config is saved as REPORT_DIR/config.yaml."""

    models: list[str] = Field(
        default_factory=list,
        description="NAME=BUNDLE[@SAMPLER[:STEPS[,STEPS...]]] specs, "
        "one report row per step count (see `s2o eval --help`); at least one, here or as "
        "--model (which replaces this list)",
    )
    split: str = Field("test", description="store split to evaluate on: train, val or test")
    limit: int | None = Field(
        None, ge=1, description="evaluate the first N tiles (by tile id) of the split; null: all"
    )
    batch_size: int = Field(
        32, ge=1, description="tiles per forward pass; throughput is measured at this size"
    )
    fid_weights: str | None = Field(
        None,
        description="Inception-v3 FID network (TorchScript or torch-fidelity "
        "weights file); null: FID is reported as skipped",
    )
    device: str = Field(
        "auto", pattern="^(auto|cpu|cuda)$", description="auto (CUDA when present), cpu or cuda"
    )
    dtype: str = Field(
        "auto", pattern=DTYPE_PATTERN, description="network precision: auto, fp32, fp16 or bf16"
    )
    compile: CompileChoice = Field(
        "off",
        pattern=COMPILE_PATTERN,
        description="the forward pass of every model, speed references included: off, auto, default or max",
    )
    seed: int = Field(0, description="noise seed: batch i uses seed + i, the same for every model")
    uncertainty: int = Field(
        0,
        ge=0,
        description="samples per tile (0: none; else at least 2): how well the per-pixel spread of K samples "
        "predicts the first sample's error, per student or teacher setting (Spearman rho, calibration table, "
        "uncertainty.png); costs K forward passes per tile",
    )
    repeats: int = Field(
        3, ge=1, description="timed calls per latency measurement (median; after one warm-up)"
    )
    ddpm_limit: int = Field(
        32, ge=1, description="tiles scored with ancestral DDPM (all training steps per tile)"
    )
    workers: int = Field(1, ge=1, description="Ray Data actors per model setting (with --address)")
    speed_references: bool = Field(
        True,
        description="time teacher DDPM (all steps) and DDIM-50 for the speed-ups "
        "when a teacher is given but those settings are not listed",
    )
    sample_tiles: int = Field(4, ge=1, description="tiles shown per setting in samples.png")
    landcover_fit_tiles: int = Field(
        1024,
        ge=1,
        description="train tiles the land-cover classifier is fitted on (where the store has class maps)",
    )
