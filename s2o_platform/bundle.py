"""The inference bundle: what every training stage writes and evaluation, batch and serving read.

    BUNDLE/
      s2o_bundle.json                   stage, tile size, SAR/optical normalisation, sampler, model card
      unet/config.json                  diffusers save_pretrained folder of the network (teacher, student)...
      unet/diffusion_pytorch_model.safetensors   ...weights as safetensors (never pickles)
      generator/                        instead of unet/ for the pix2pix GAN baseline (same format)
      scheduler/scheduler_config.json   the noise schedule the network was trained with (DDPM for a
                                        teacher, LCM for a student; absent for the GAN)
      config.yaml                       the resolved training config
      README.md                         the model card, for people

Architecture comes from the bundle, never from command-line flags.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from s2o_platform import storage
from s2o_platform.config import STUDENT_MAX_STEPS
from s2o_platform.data.normalization import OpticalNormalization, SarNormalization
from s2o_platform.errors import S2OError

BUNDLE_FILE = "s2o_bundle.json"
BUNDLE_FORMAT = "s2o-bundle"
BUNDLE_FORMAT_VERSION = 1
STAGES = ("teacher", "student", "gan")


class BundleError(S2OError, ValueError):
    """A bundle that is missing, corrupt or unfit for what it is asked to do."""


def default_max_steps(name: str) -> int | None:
    """The largest step count a bundle sampling with `name` takes when its metadata does not say (bundles
    written before `max_steps` was recorded): an LCM student 1..8, the GAN's direct pass 1, a DDPM/DDIM
    teacher no limit beyond its own schedule (None)."""
    return {"lcm": STUDENT_MAX_STEPS, "direct": 1}.get(name)


@dataclass
class SamplerSpec:
    name: str  # ddpm | ddim | lcm | direct
    default_steps: int
    allowed: list[str] = field(default_factory=list)
    #: The largest step count the bundle samples with (1..max_steps); None: no limit beyond >= 1 (a teacher).
    max_steps: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "default_steps": self.default_steps,
            "allowed": self.allowed,
            "max_steps": self.max_steps,
        }


@dataclass
class BundleMetadata:
    stage: str
    tile_size: int
    sar_channels: int
    sar_normalization: SarNormalization
    optical_normalization: OpticalNormalization
    sampler: SamplerSpec
    model_card: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": BUNDLE_FORMAT,
            "format_version": BUNDLE_FORMAT_VERSION,
            "stage": self.stage,
            "tile_size": self.tile_size,
            "sar_channels": self.sar_channels,
            "sar_normalization": self.sar_normalization.to_dict(),
            "optical_normalization": self.optical_normalization.to_dict(),
            "sampler": self.sampler.to_dict(),
            "model_card": self.model_card,
        }

    @classmethod
    def for_store(
        cls, stage: str, store: Any, tile_size: int, sampler: SamplerSpec, card: dict[str, Any]
    ) -> BundleMetadata:
        """Metadata of a bundle trained on `store` (a StoreMetadata): its normalisation travels with the model."""
        return cls(
            stage=stage,
            tile_size=tile_size,
            sar_channels=store.sar_channels,
            sar_normalization=store.sar_normalization,
            optical_normalization=store.optical_normalization,
            sampler=sampler,
            model_card=card,
        )

    @classmethod
    def from_dict(cls, d: Any, where: str) -> BundleMetadata:
        """Validated metadata (`BundleFile`: types, ranges, the normalisations' own rules); any problem is one
        BundleError naming the field."""
        if not isinstance(d, dict):
            raise BundleError(
                f"corrupt bundle metadata in {where}: {BUNDLE_FILE} holds a {type(d).__name__}, not an object"
            )
        if d.get("format") != BUNDLE_FORMAT:
            raise BundleError(f"{where} is not an s2o inference bundle (format {d.get('format')!r})")
        try:
            checked = BundleFile.model_validate(d)
            sar = SarNormalization.from_dict(checked.sar_normalization)
            optical = OpticalNormalization.from_dict(checked.optical_normalization)
        except ValidationError as err:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']} (got {e.get('input')!r})"
                for e in err.errors()
            )
            raise BundleError(f"corrupt bundle metadata in {where}: {problems}") from None
        except (ValueError, TypeError, KeyError) as err:
            raise BundleError(f"corrupt bundle metadata in {where}: normalisation: {err}") from None
        if checked.format_version > BUNDLE_FORMAT_VERSION:
            raise BundleError(
                f"{where} has bundle format {checked.format_version}, newer than this s2o-platform reads"
            )
        sampler = checked.sampler.model_dump()
        if "max_steps" not in checked.sampler.model_fields_set:  # written before bundles recorded it
            sampler["max_steps"] = default_max_steps(sampler["name"])
        if sampler["max_steps"] is not None and sampler["default_steps"] > sampler["max_steps"]:
            raise BundleError(
                f"corrupt bundle metadata in {where}: sampler.default_steps: {sampler['default_steps']} is more "
                f"than sampler.max_steps ({sampler['max_steps']}): the bundle samples with 1..{sampler['max_steps']} steps"
            )
        return cls(
            stage=checked.stage,
            tile_size=checked.tile_size,
            sar_channels=checked.sar_channels,
            sar_normalization=sar,
            optical_normalization=optical,
            sampler=SamplerSpec(**sampler),
            model_card=dict(checked.model_card),
        )


class SamplerFile(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: Literal["ddpm", "ddim", "lcm", "direct"]
    default_steps: int = Field(ge=1, le=1000)
    allowed: list[Literal["ddpm", "ddim", "lcm", "direct"]] = Field(min_length=1)
    #: Absent in bundles written before it was recorded: then `default_max_steps(name)`. null: no limit (a teacher).
    max_steps: int | None = Field(
        None, ge=1, le=1000, description="the largest step count the bundle samples with"
    )


class BundleFile(BaseModel):
    """The schema of s2o_bundle.json (strict types: a string where a number belongs is an error)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    format: Literal["s2o-bundle"]
    format_version: int = Field(ge=1)
    stage: Literal["teacher", "student", "gan"]
    tile_size: int = Field(ge=8, le=8192, description="the network's tile side, px")
    sar_channels: int = Field(ge=1, le=16)
    sar_normalization: dict[str, Any]
    optical_normalization: dict[str, Any]
    sampler: SamplerFile
    model_card: dict[str, Any] = Field(default_factory=dict)


@dataclass
class Bundle:
    metadata: BundleMetadata
    model: torch.nn.Module  # UNet2DModel (teacher, student) or UNetGenerator (gan)
    scheduler_config: dict[str, Any] | None
    path: str


#: The folder of the network inside a bundle, by stage.
MODEL_FOLDER = {"teacher": "unet", "student": "unet", "gan": "generator"}


def write_bundle(
    directory: str | Path,
    metadata: BundleMetadata,
    model: torch.nn.Module,
    scheduler,
    resolved_config_yaml: str,
) -> Path:
    """Write a bundle into `directory` (created; existing content replaced). `scheduler` may be None (GAN).

    Written whole into a sibling folder, every file fsync'ed, then swapped in: a crash leaves the old bundle
    or the new one, never half of one."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = directory.parent / f".tmp-{directory.name}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        model.save_pretrained(staging / MODEL_FOLDER[metadata.stage], safe_serialization=True)
        if scheduler is not None:
            scheduler.save_pretrained(staging / "scheduler")
        (staging / "config.yaml").write_text(resolved_config_yaml)
        (staging / BUNDLE_FILE).write_text(json.dumps(metadata.to_dict(), indent=2))
        (staging / "README.md").write_text(model_card_markdown(metadata))
        for path in sorted(staging.rglob("*")):
            if path.is_file():
                with open(path, "rb+") as f:
                    os.fsync(f.fileno())
        old = directory.parent / f".old-{directory.name}-{uuid.uuid4().hex[:8]}"
        if directory.exists():
            directory.rename(old)
        staging.rename(directory)
        storage.fsync_folder(str(directory.parent))
        if old.exists():
            shutil.rmtree(old)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return directory


def model_card_markdown(metadata: BundleMetadata) -> str:
    card = metadata.model_card
    lines = [
        f"# s2o-platform {metadata.stage} bundle",
        "",
        f"- tile size: {metadata.tile_size} px, SAR channels: {metadata.sar_channels}",
        f"- SAR normalisation: dB window {list(metadata.sar_normalization.clip_db)} -> [-1, 1]",
        f"- sampler: {metadata.sampler.name}, default steps {metadata.sampler.default_steps}, allowed {metadata.sampler.allowed}"
        + (f", steps 1..{metadata.sampler.max_steps}" if metadata.sampler.max_steps is not None else ""),
    ]
    lines += [f"- {k.replace('_', ' ')}: {v}" for k, v in card.items()]
    return "\n".join(lines) + "\n"


def _local_copy(
    uri: str, options: storage.StorageOptions | None
) -> tuple[str, tempfile.TemporaryDirectory | None]:
    """A local directory holding the bundle (downloaded when it lives in object storage)."""
    if not storage.is_uri(uri) or uri.startswith("file://"):
        return str(storage.resolve(uri)[1]), None
    fs, root = storage.resolve(uri, options)
    paths = storage.list_files(fs, root)
    keys = [path[len(root) :].removeprefix("/") for path in paths]
    unsafe = [key for key in keys if not storage.is_safe_relative_key(key)]
    if unsafe:  # checked before anything is written: such a key would land outside the download folder
        raise BundleError(
            f"{uri} holds the object key {unsafe[0]!r} ('..' or an absolute part), which would be written "
            f"outside the bundle's download folder; a bundle never has such keys: remove or rename that object"
        )
    tmp = tempfile.TemporaryDirectory(prefix="s2o-bundle-")
    try:
        for path, key in zip(paths, keys):
            target = Path(tmp.name) / key
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(storage.read_bytes(fs, path))
    except BaseException:
        tmp.cleanup()  # a download cut off leaves no half bundle in the temp folder
        raise
    return tmp.name, tmp


def read_bundle_metadata(uri: str, options: storage.StorageOptions | None = None) -> BundleMetadata:
    fs, root = storage.resolve(uri, options)
    try:
        raw = storage.read_bytes(fs, storage.join(root, BUNDLE_FILE))
    except (FileNotFoundError, OSError):
        raise BundleError(
            f"no inference bundle at {uri}: {BUNDLE_FILE} is missing (a bundle is a training run's OUT/bundle)"
        ) from None
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BundleError(f"corrupt bundle metadata in {uri}: {BUNDLE_FILE} is not JSON ({err})") from None
    return BundleMetadata.from_dict(data, uri)


#: Weight files in pickle-based formats: never loaded (a pickle runs code when it is read).
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
SAFETENSORS_DTYPES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}


def check_safetensors_header(fs, path: str, where: str) -> int:
    """Validate a safetensors file without loading it: the JSON header, each tensor's dtype, shape and byte
    range inside the file. Returns the number of tensors."""
    size = fs.get_file_info(path).size
    with fs.open_input_file(path) as f:
        head = f.read(8)
        if len(head) < 8:
            raise BundleError(
                f"{where}: {path} is not a safetensors file (shorter than its 8-byte header length)"
            )
        n = int.from_bytes(head, "little")
        if n <= 0 or 8 + n > size or n > 100 * 2**20:
            raise BundleError(
                f"{where}: {path} is not a valid safetensors file (header length {n} for a {size}-byte file)"
            )
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise BundleError(f"{where}: {path} has a corrupt safetensors header ({err})") from None
    data_size = size - 8 - n
    tensors = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            itemsize = SAFETENSORS_DTYPES[entry["dtype"]]
            start, end = (int(v) for v in entry["data_offsets"])
            count = 1
            for dim in entry["shape"]:
                count *= int(dim)
        except (KeyError, TypeError, ValueError):
            raise BundleError(
                f"{where}: {path} tensor {name!r} has a malformed header entry {entry!r}"
            ) from None
        if not 0 <= start <= end <= data_size or end - start != count * itemsize:
            raise BundleError(
                f"{where}: {path} tensor {name!r} lies outside the file or does not match its shape "
                "(a truncated or damaged download?)"
            )
        tensors += 1
    if tensors == 0:
        raise BundleError(f"{where}: {path} holds no tensors")
    return tensors


def check_bundle(uri: str, options: storage.StorageOptions | None = None) -> BundleMetadata:
    """Everything about a bundle that can be checked without loading it, for every command's pre-flight: the
    validated metadata, the network's config, safetensors weights with sound headers (never pickles), and
    the noise schedule a diffusion bundle needs. Raises BundleError with one line naming the problem."""
    metadata = read_bundle_metadata(uri, options)
    fs, root = storage.resolve(uri, options)
    folder = storage.join(root, MODEL_FOLDER[metadata.stage])
    files = storage.list_files(fs, folder)
    names = [p.rsplit("/", 1)[-1] for p in files]
    weights = [p for p in files if p.endswith(".safetensors")]
    if not weights:
        pickled = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
        why = (
            f"only pickled weights ({', '.join(pickled)}), which are never loaded"
            if pickled
            else "no weights"
        )
        raise BundleError(
            f"{uri} has {why} in {MODEL_FOLDER[metadata.stage]}/: a bundle's network must be safetensors "
            "(diffusers save_pretrained(..., safe_serialization=True))"
        )
    if "config.json" not in names:
        raise BundleError(
            f"{uri} has no {MODEL_FOLDER[metadata.stage]}/config.json (the network's architecture)"
        )
    for path in weights:
        check_safetensors_header(fs, path, uri)
    if metadata.stage != "gan" and not storage.exists(
        fs, storage.join(root, "scheduler", "scheduler_config.json")
    ):
        raise BundleError(
            f"{uri} has no scheduler/scheduler_config.json: a {metadata.stage} bundle needs its noise schedule"
        )
    return metadata


#: What a bundle and a tile store must agree on: (field of both metadata, its name for people). Optical
#: normalisation is in it for every use (evaluation, translating a store, distilling from a teacher): a model's
#: outputs live in the optical space of the store it was trained on, so scores against, or a student trained
#: on, another store's optical tiles would be silently wrong.
FIT_FIELDS = (
    ("tile_size", "tile size"),
    ("sar_channels", "SAR channels"),
    ("sar_normalization", "SAR normalisation"),
    ("optical_normalization", "optical normalisation"),
)


def check_fits(
    bundle: BundleMetadata,
    store: Any,
    bundle_path: str,
    store_path: str,
    role: str = "bundle",
    advice: str = "use a store ingested with the settings of the one it was trained on",
) -> None:
    """The one rule for "does this bundle fit this store" (`store`: a data.store.StoreMetadata): every field
    of FIT_FIELDS equal. Raises BundleError naming both paths and each field that differs, with both values.
    `role` names the bundle in the message (e.g. "teacher"); `advice` ends it."""

    def show(value: Any) -> str:
        return str(value.to_dict()) if hasattr(value, "to_dict") else str(value)

    differences = []
    for name, label in FIT_FIELDS:
        theirs, ours = getattr(bundle, name), getattr(store, name)
        if theirs != ours:
            # the metadata key too (what to look for in s2o_bundle.json / the store's metadata), with the values
            # where they are short
            key = f"{name}={theirs} vs {ours}" if isinstance(theirs, int) else name
            differences.append(f"{label} {show(theirs)} but the store {store_path} has {show(ours)} ({key})")
    if differences:
        raise BundleError(
            f"the {role} {bundle_path} was trained for other tiles than the store {store_path} holds: "
            + "; ".join(differences)
            + f". {advice[:1].upper()}{advice[1:]}"
        )


def bundle_digest(uri: str, options: storage.StorageOptions | None = None) -> str:
    """sha256 over a bundle's files (relative path and bytes, in path order): the same weights, schedule
    and metadata give the same digest wherever the bundle is copied."""
    fs, root = storage.resolve(uri, options)
    digest = hashlib.sha256()
    files = storage.list_files(fs, root)
    if not files:
        raise BundleError(f"no inference bundle at {uri}")
    for path in files:
        digest.update(path[len(root) :].lstrip("/").encode() + b"\0")
        with fs.open_input_stream(path) as stream:
            while chunk := stream.read(1 << 24):
                digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _quiet_diffusers():
    """diffusers logs advice about accelerate and fp32 modules on every load; it is noise for users here."""
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(level)


def read_scheduler_config(uri: str, options: storage.StorageOptions | None = None) -> dict[str, Any] | None:
    """The bundle's noise-schedule config (None for a GAN bundle), read without loading the network."""
    fs, root = storage.resolve(uri, options)
    try:
        return json.loads(storage.read_bytes(fs, storage.join(root, "scheduler", "scheduler_config.json")))
    except (FileNotFoundError, OSError):
        return None
    except json.JSONDecodeError as err:
        raise BundleError(f"corrupt scheduler config in {uri}: {err}") from None


def load_bundle(
    uri: str,
    device: str | torch.device = "cpu",
    options: storage.StorageOptions | None = None,
    dtype: torch.dtype = torch.float32,
) -> Bundle:
    """Load a bundle's network (safetensors only, cast to `dtype` on `device`) and scheduler config."""
    from diffusers import UNet2DModel

    from s2o_platform.models.pix2pix import UNetGenerator

    metadata = read_bundle_metadata(uri, options)
    folder = MODEL_FOLDER[metadata.stage]
    model_class = UNetGenerator if metadata.stage == "gan" else UNet2DModel
    local, tmp = _local_copy(uri, options)
    try:
        model_dir = Path(local) / folder
        if not (model_dir / "diffusion_pytorch_model.safetensors").exists():
            raise BundleError(
                f"{uri} has no safetensors weights in {folder}/ (pickled weights are never loaded)"
            )
        try:
            with _quiet_diffusers():
                model = model_class.from_pretrained(
                    model_dir, use_safetensors=True, torch_dtype=dtype, low_cpu_mem_usage=False
                )
                model = model.to(device=device, dtype=dtype).eval()
        except (OSError, ValueError, RuntimeError) as err:
            raise BundleError(f"cannot load the network of {uri}: {err}") from None
        scheduler_path = Path(local) / "scheduler" / "scheduler_config.json"
        scheduler_config = json.loads(scheduler_path.read_text()) if scheduler_path.exists() else None
        if scheduler_config is None and metadata.stage != "gan":
            raise BundleError(
                f"{uri} has no scheduler/scheduler_config.json: a {metadata.stage} bundle needs its noise schedule"
            )
    finally:
        if tmp is not None:
            tmp.cleanup()
    return Bundle(metadata=metadata, model=model, scheduler_config=scheduler_config, path=uri)
