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
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from s2o_platform import storage
from s2o_platform.data.normalization import OpticalNormalization, SarNormalization

BUNDLE_FILE = "s2o_bundle.json"
BUNDLE_FORMAT = "s2o-bundle"
BUNDLE_FORMAT_VERSION = 1
STAGES = ("teacher", "student", "gan")


class BundleError(ValueError):
    """A bundle that is missing, corrupt or unfit for what it is asked to do."""


@dataclass
class SamplerSpec:
    name: str  # ddpm | ddim | lcm | direct
    default_steps: int
    allowed: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "default_steps": self.default_steps, "allowed": self.allowed}


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
    def for_store(cls, stage: str, store: Any, tile_size: int, sampler: SamplerSpec, card: dict[str, Any]) -> BundleMetadata:
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
    def from_dict(cls, d: dict[str, Any], where: str) -> BundleMetadata:
        if d.get("format") != BUNDLE_FORMAT:
            raise BundleError(f"{where} is not an s2o inference bundle (format {d.get('format')!r})")
        if int(d.get("format_version", 0)) > BUNDLE_FORMAT_VERSION:
            raise BundleError(f"{where} has bundle format {d['format_version']}, newer than this s2o-platform reads")
        if d.get("stage") not in STAGES:
            raise BundleError(f"{where} has unknown stage {d.get('stage')!r}")
        return cls(
            stage=d["stage"],
            tile_size=int(d["tile_size"]),
            sar_channels=int(d["sar_channels"]),
            sar_normalization=SarNormalization.from_dict(d["sar_normalization"]),
            optical_normalization=OpticalNormalization.from_dict(d["optical_normalization"]),
            sampler=SamplerSpec(**d["sampler"]),
            model_card=dict(d.get("model_card", {})),
        )


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
    """Write a bundle into `directory` (created; existing content replaced). `scheduler` may be None (GAN)."""
    directory = Path(directory)
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    model.save_pretrained(directory / MODEL_FOLDER[metadata.stage], safe_serialization=True)
    if scheduler is not None:
        scheduler.save_pretrained(directory / "scheduler")
    (directory / "config.yaml").write_text(resolved_config_yaml)
    (directory / BUNDLE_FILE).write_text(json.dumps(metadata.to_dict(), indent=2))
    (directory / "README.md").write_text(model_card_markdown(metadata))
    return directory


def model_card_markdown(metadata: BundleMetadata) -> str:
    card = metadata.model_card
    lines = [
        f"# s2o-platform {metadata.stage} bundle",
        "",
        f"- tile size: {metadata.tile_size} px, SAR channels: {metadata.sar_channels}",
        f"- SAR normalisation: dB window {list(metadata.sar_normalization.clip_db)} -> [-1, 1]",
        f"- sampler: {metadata.sampler.name}, default steps {metadata.sampler.default_steps}, allowed {metadata.sampler.allowed}",
    ]
    lines += [f"- {k.replace('_', ' ')}: {v}" for k, v in card.items()]
    return "\n".join(lines) + "\n"


def _local_copy(uri: str, options: storage.StorageOptions | None) -> tuple[str, tempfile.TemporaryDirectory | None]:
    """A local directory holding the bundle (downloaded when it lives in object storage)."""
    if not storage.is_uri(uri) or uri.startswith("file://"):
        return str(storage.resolve(uri)[1]), None
    fs, root = storage.resolve(uri, options)
    tmp = tempfile.TemporaryDirectory(prefix="s2o-bundle-")
    for path in storage.list_files(fs, root):
        target = Path(tmp.name) / path[len(root) :].lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(storage.read_bytes(fs, path))
    return tmp.name, tmp


def read_bundle_metadata(uri: str, options: storage.StorageOptions | None = None) -> BundleMetadata:
    fs, root = storage.resolve(uri, options)
    try:
        raw = storage.read_bytes(fs, storage.join(root, BUNDLE_FILE))
    except (FileNotFoundError, OSError):
        raise BundleError(f"no inference bundle at {uri}: {BUNDLE_FILE} is missing (a bundle is a training run's OUT/bundle)") from None
    try:
        return BundleMetadata.from_dict(json.loads(raw), uri)
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise BundleError(f"corrupt bundle metadata in {uri}: {err}") from None


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
            raise BundleError(f"{uri} has no safetensors weights in {folder}/ (pickled weights are never loaded)")
        try:
            with _quiet_diffusers():
                model = model_class.from_pretrained(model_dir, use_safetensors=True, torch_dtype=dtype, low_cpu_mem_usage=False)
                model = model.to(device=device, dtype=dtype).eval()
        except (OSError, ValueError, RuntimeError) as err:
            raise BundleError(f"cannot load the network of {uri}: {err}") from None
        scheduler_path = Path(local) / "scheduler" / "scheduler_config.json"
        scheduler_config = json.loads(scheduler_path.read_text()) if scheduler_path.exists() else None
        if scheduler_config is None and metadata.stage != "gan":
            raise BundleError(f"{uri} has no scheduler/scheduler_config.json: a {metadata.stage} bundle needs its noise schedule")
    finally:
        if tmp is not None:
            tmp.cleanup()
    return Bundle(metadata=metadata, model=model, scheduler_config=scheduler_config, path=uri)
