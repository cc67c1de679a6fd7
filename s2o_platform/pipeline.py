"""`S2OPipeline`: the Python API, in diffusers' shape.

    from s2o_platform import S2OPipeline
    pipe = S2OPipeline.from_pretrained("runs/acd/bundle")        # or s3://...; device=, dtype=, compile=
    rgb = pipe(sar, num_inference_steps=4, generator=torch.Generator().manual_seed(0)).images[0]

One object owns an inference bundle on a device and dtype (loading: `bundle.load_bundle`; device, dtype and CPU
threads: `devices`; `--compile`: `inference_compile`). `inference.LoadedModel`, the base of archive
translation's and evaluation's Ray actors and of the Serve replicas, is a thin subclass of it, so every path
loads, places and compiles a bundle the same way.

A call translates whole images of any size exactly as `s2o translate` translates a scene, with the project's own
rules, each called from its one home:

    input -> SAR pixels in the model's range + validity   data.scene (inspect_scene / read_rows), data.normalization
                                                          (model_pixels, PILLOW_MODES): band, pixel type,
                                                          --sar-scale, nodata
          -> windows with overlap (reflection-padded when  geo.blending.cut_image
             smaller than a tile)
          -> tiles, one forward batch per window row,      tile_sampling.translate_tiles, keys tile_sampling.tile_key
             each tile's noise from batch_seed(seed, key)
          -> float16 tiles, blended with their validity     geo.blending (OPTICAL_TILE_DTYPE, mosaic_tile,
                                                          mosaic_image: StripMosaic)
          -> uint8 RGB 1..255 (0 nodata) | float [0, 1]     geo.blending.output_pixels
             (NaN nodata)

Seeds. The run seed and the image's name give every window's noise: the window at (row, col) of image NAME draws
from `batch_seed(seed, "NAME:row:col")`, as `s2o translate --seed SEED` draws for scene NAME (its file name without
suffix, or its path under a SOURCE folder). So `pipe("scene.tif", seed=7)` is pixel-identical to the COG
`s2o translate scene.tif --seed 7` writes, given the same bundle, steps, overlap, batch size, device, dtype and,
on a CPU, torch thread count (`threads=devices.cpu_threads(None, actors, reserve=1)`, translate's actor beside its driver): float sums depend on the batch and threads. A
`generator=` gives the run seed `generator.initial_seed()`: `torch.Generator().manual_seed(7)` is `seed=7` (its
state is read, not advanced: the same generator gives the same images again). Neither given: the seed is 0, as
`s2o translate`'s default.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
import torch
from diffusers.utils import BaseOutput

from s2o_platform.bundle import Bundle, _quiet_diffusers

OUTPUT_TYPES = ("pil", "np")


@dataclass
class S2OPipelineOutput(BaseOutput):
    """What a call returns. `images`: a list of RGB PIL images (output_type="pil"), or for output_type="np" a
    float32 array (N, H, W, 3) in [0, 1] with NaN where the input was nodata (a list of (H, W, 3) arrays when the
    images differ in size)."""

    images: Union[list, np.ndarray]  # noqa: UP007 - BaseOutput evaluates field types on Python 3.9 as well
    #: With `uncertainty=K`: per image the per-pixel spread of the K samples (std, mean of RGB), as `s2o translate
    #: --uncertainty` writes its fourth band: single-band "L" PIL images in the RGB images' 8-bit levels (0 nodata)
    #: for output_type="pil", float32 (N, H, W) in [0, 1] units (NaN nodata) for "np". None without it.
    uncertainty: Union[list, np.ndarray, None] = None  # noqa: UP007


@dataclass
class _SarImage:
    """One input in the model's range: values (C, H, W) float32 (nodata -1), valid (H, W) bool, the name its
    windows' noise is keyed by."""

    values: np.ndarray
    valid: np.ndarray
    name: str


class S2OPipeline:
    """An inference bundle (teacher, student or pix2pix GAN) loaded onto a device and dtype.

    Build it with `S2OPipeline.from_pretrained(path_or_uri, device=, dtype=)`; call it on SAR images (see
    `__call__`); move it with `.to("cuda")` / `.to(torch.float16)`. Attributes: `bundle` (the loaded `Bundle`:
    metadata, network, scheduler config), `device`, `dtype`, `dtype_name`, `compile_plan`, and the defaults
    `sampler`, `steps`, `seed` and `batch_size` (tiles per forward pass).
    """

    def __init__(
        self,
        bundle: str | Bundle,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "auto",
        sampler: str | None = None,
        steps: int | None = None,
        seed: int = 0,
        batch_size: int = 32,
        cpu_share: int | None = None,
        storage_options=None,
        threads: int | None = None,
        compile: str = "off",
        warm_up: bool = False,
    ):
        """`bundle`: a bundle's path or URI (s3://...), or a loaded `Bundle` (moved to `device` and `dtype`).
        `device`: auto | cpu | cuda | cuda:N | a torch.device. `dtype`: auto | fp32 | fp16 | bf16 or a torch dtype
        (auto: fp16 on a GPU, bf16 on a CPU that runs it at speed, else fp32; `devices.resolve_dtype`).
        `compile`: off | auto | default | max (`inference_compile`); with `warm_up`, every batch size up to
        `batch_size` is compiled here. `threads` / `cpu_share`: on a CPU, torch's threads are set to `threads`,
        else the cores shared among `cpu_share` processes; neither given, torch's setting is left as it is."""
        from s2o_platform.bundle import load_bundle
        from s2o_platform.devices import cpu_threads
        from s2o_platform.inference_compile import buckets_up_to, compile_bundle, resolve_compile

        self.device = _resolve_device(device)
        if self.device.type == "cpu" and (threads is not None or cpu_share is not None):
            torch.set_num_threads(cpu_threads(threads, cpu_share or 1))
        self._set_dtype(_resolve_dtype(dtype, self.device))
        self.compile_plan = resolve_compile(compile, self.device)  # before loading: a refusal costs nothing
        self.storage_options = storage_options
        if isinstance(bundle, Bundle):
            with _quiet_diffusers():
                bundle.model = bundle.model.to(device=self.device, dtype=self.dtype).eval()
            self.bundle = bundle
        else:
            self.bundle = load_bundle(bundle, device=self.device, options=storage_options, dtype=self.dtype)
        self.sampler, self.steps, self.seed, self.batch_size = sampler, steps, seed, batch_size
        # after set_num_threads: inductor's CPU kernels are generated for the thread count at compile time
        compile_bundle(
            self.bundle,
            self.compile_plan,
            max_batch=batch_size,
            warm_batches=buckets_up_to(batch_size) if warm_up else (),
        )

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "auto",
        torch_dtype: torch.dtype | None = None,
        compile: str = "off",
        storage_options=None,
        **kwargs: Any,
    ) -> S2OPipeline:
        """Load a bundle (a training run's OUT/bundle: a local folder, file:// or s3:// URI; safetensors only).
        `torch_dtype` (diffusers' name) is `dtype`; other keywords: `sampler`, `steps`, `seed`, `batch_size`,
        `threads`, `warm_up` (see the constructor)."""
        return cls(
            os.fspath(pretrained_model_name_or_path),
            device=device,
            dtype=torch_dtype if torch_dtype is not None else dtype,
            compile=compile,
            storage_options=storage_options,
            **kwargs,
        )

    def _set_dtype(self, dtype: torch.dtype) -> None:
        from s2o_platform.devices import dtype_name

        self.dtype, self.dtype_name = dtype, dtype_name(dtype)

    def to(
        self, *args: Any, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None
    ) -> S2OPipeline:
        """Move the network to a device and/or dtype, as diffusers' `pipe.to("cuda")`, `pipe.to(torch.float16)`,
        `pipe.to("cuda", torch.float16)`; returns the pipeline. A compiled network is compiled again for the new
        device (on its first call)."""
        from s2o_platform.devices import DTYPES
        from s2o_platform.inference_compile import CompiledNetwork, compile_bundle, resolve_compile

        for arg in args:
            if isinstance(arg, torch.dtype) or (isinstance(arg, str) and arg in DTYPES):
                dtype = arg
            else:
                device = arg
        target_device = self.device if device is None else _resolve_device(device)
        target_dtype = self.dtype if dtype is None else _resolve_dtype(dtype, target_device)
        if (target_device, target_dtype) == (self.device, self.dtype):
            return self
        model = self.bundle.model
        network = model.network if isinstance(model, CompiledNetwork) else model
        with (
            _quiet_diffusers()
        ):  # its advice on casting with to() is about modules kept in fp32: UNet2DModel has none
            self.bundle.model = network.to(device=target_device, dtype=target_dtype)
        self.device = target_device
        self._set_dtype(target_dtype)
        if self.compile_plan.choice != "off":
            self.compile_plan = resolve_compile(self.compile_plan.choice, self.device)
            compile_bundle(self.bundle, self.compile_plan, max_batch=self.batch_size)
        return self

    @property
    def metadata(self):
        """The bundle's metadata (stage, tile size, SAR channels and normalisation, sampler, model card)."""
        return self.bundle.metadata

    def run_tiles(
        self,
        tiles: np.ndarray | torch.Tensor,
        seed: int,
        keys: Sequence[str] | None = None,
        steps: int | None = None,
        sampler: str | None = None,
    ) -> np.ndarray:
        """Tiles (N, C, T, T) in [-1, 1] -> optical (N, 3, T, T) float32 in [-1, 1] (`tile_sampling.translate_tiles`),
        with this pipeline's sampler, steps and batch size unless given."""
        from s2o_platform.tile_sampling import translate_tiles

        return translate_tiles(
            self.bundle,
            tiles,
            sampler or self.sampler,
            self.steps if steps is None else steps,
            seed=seed,
            batch_size=self.batch_size,
            keys=keys,
        )

    def run_tiles_with_uncertainty(
        self,
        tiles: np.ndarray | torch.Tensor,
        seed: int,
        samples: int,
        keys: Sequence[str] | None = None,
        steps: int | None = None,
        output: str = "mean",
        sampler: str | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """`run_tiles` with `samples` draws per tile: (optical (N, 3, T, T), uncertainty (N, T, T)), both in the
        model's units (`tile_sampling.translate_tiles_with_uncertainty`)."""
        from s2o_platform.tile_sampling import translate_tiles_with_uncertainty

        return translate_tiles_with_uncertainty(
            self.bundle,
            tiles,
            samples,
            sampler or self.sampler,
            self.steps if steps is None else steps,
            seed=seed,
            batch_size=self.batch_size,
            keys=keys,
            output=output,
        )

    @torch.no_grad()
    def __call__(
        self,
        sar: Any,
        num_inference_steps: int | None = None,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        *,
        seed: int | None = None,
        sampler: str | None = None,
        sar_scale: str = "auto",
        band: str | int | None = None,
        overlap: int | None = None,
        name: str | Sequence[str] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        uncertainty: int = 0,
        uncertainty_output: str = "mean",
    ) -> S2OPipelineOutput | tuple:
        """Translate SAR images of any size into optical RGB, tiled and blended as `s2o translate` does.

        Args:
            sar: one image or a list of them: a numpy array (H, W) or (C, H, W) of raw SAR values (a masked array's
                mask, NaN and infinite values are nodata; (N, C, H, W) is N images), a torch tensor (the same), a
                single-band PIL image, or the path/URI of a GeoTIFF or PNG (read as `s2o translate` reads a scene:
                `band` picks the polarisation, VV where bands are named).
            num_inference_steps: sampling steps (student 1-8; teacher DDIM any, DDPM its schedule; ignored by the
                GAN); default the bundle's.
            generator: a torch.Generator (or one per image): the run seed is its `initial_seed()`.
            seed: the run seed instead of a generator (default 0); see the module doc for how it maps to
                `s2o translate --seed`.
            sampler: ddpm | ddim for a teacher bundle (default the bundle's); a student samples lcm, the GAN direct.
            sar_scale: auto | db | linear | dn | uint8, as `s2o translate --sar-scale` (auto: detected per image).
            overlap: px between neighbouring windows (default a quarter of the tile, as `s2o translate`).
            name: the name each image's windows are keyed by (default: a file's name without suffix, as
                `s2o translate` names a scene given the file; "" for arrays and images).
            output_type: "pil" (uint8 RGB, 1..255, 0 where the input was nodata) or "np" (float32 [0, 1], NaN where
                nodata; N x H x W x 3).
            return_dict: False returns the tuple `(images,)` (`(images, uncertainty)` with `uncertainty`).
            uncertainty: K >= 2 draws K samples per window (seeded per window and sample, as `s2o translate
                --uncertainty K`): `.uncertainty` holds their per-pixel spread, blended like the image. Not for a
                pix2pix bundle (deterministic). 0: none.
            uncertainty_output: with `uncertainty`, the images are the samples' "mean" or the first "sample" (what
                a call without `uncertainty` gives).
        """
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        from s2o_platform.tile_sampling import resolve_sampler

        sampler_name, steps = resolve_sampler(
            self.bundle,
            sampler or self.sampler,
            self.steps if num_inference_steps is None else num_inference_steps,
        )
        tile = self.metadata.tile_size
        overlap = tile // 4 if overlap is None else int(overlap)
        if not 0 <= overlap < tile:
            raise ValueError(
                f"overlap must be in 0..{tile - 1} px for the model's {tile} px tiles, got {overlap}"
            )
        if uncertainty == 1 or uncertainty < 0:
            raise ValueError(f"uncertainty needs at least 2 samples per window (0: none), got {uncertainty}")
        images = self._read_inputs(sar, sar_scale, band, name)
        seeds = _run_seeds(generator, self.seed if seed is None else seed, seed is not None, len(images))
        out_dtype = "uint8" if output_type == "pil" else "float32"
        sampling = (uncertainty, uncertainty_output) if uncertainty else None
        pixels = [
            self._translate_image(image, run_seed, sampler_name, steps, overlap, out_dtype, sampling)
            for image, run_seed in zip(images, seeds)
        ]
        result = _as_output([p[:3] for p in pixels], output_type)
        spread = _as_output([p[3:] for p in pixels], output_type) if uncertainty else None
        if not return_dict:
            return (result,) if spread is None else (result, spread)
        return S2OPipelineOutput(images=result, uncertainty=spread)

    # -- one image ----------------------------------------------------------------------------------------------

    def _translate_image(
        self,
        image: _SarImage,
        seed: int,
        sampler: str,
        steps: int,
        overlap: int,
        output_dtype: str,
        sampling: tuple[int, str] | None = None,
    ) -> np.ndarray:
        """One image -> its (3, H, W) output pixels (4 with `sampling` (samples, output): the spread band), as
        `s2o translate` makes a scene's (see the module doc)."""
        from s2o_platform.geo.blending import (
            OPTICAL_TILE_DTYPE,
            cut_image,
            mosaic_image,
            mosaic_tile,
            output_pixels,
        )
        from s2o_platform.tile_sampling import tile_key

        channels, height, width = image.values.shape
        tile = self.metadata.tile_size
        windows, positions = cut_image(
            np.concatenate([image.values, image.valid[None].astype(np.float32)]), tile, overlap
        )
        tiles, masks = windows[:, :channels], windows[:, channels] > 0.5
        stacked = np.empty((len(windows), 5 if sampling else 4, tile, tile), np.float32)
        # one forward batch per window row, as s2o translate runs a scene's strips
        for row in dict.fromkeys(r for r, _ in positions):
            index = [i for i, (r, _) in enumerate(positions) if r == row]
            keys = [tile_key(image.name, r, c) for r, c in (positions[i] for i in index)]
            if sampling:
                optical, spread = self.run_tiles_with_uncertainty(
                    tiles[index],
                    seed,
                    sampling[0],
                    keys=keys,
                    steps=steps,
                    output=sampling[1],
                    sampler=sampler,
                )
                spreads = spread.astype(OPTICAL_TILE_DTYPE)
            else:
                optical = self.run_tiles(tiles[index], seed=seed, keys=keys, steps=steps, sampler=sampler)
                spreads = [None] * len(index)
            for i, tile_optical, tile_spread in zip(index, optical.astype(OPTICAL_TILE_DTYPE), spreads):
                stacked[i] = mosaic_tile(tile_optical, masks[i], tile_spread)
        return output_pixels(mosaic_image(stacked, positions, height, width, overlap), output_dtype)

    # -- inputs -------------------------------------------------------------------------------------------------

    def _read_inputs(
        self, sar: Any, sar_scale: str, band: str | int | None, name: str | Sequence[str] | None
    ) -> list[_SarImage]:
        from s2o_platform.data.normalization import SarScale

        if sar_scale not in [s.value for s in SarScale]:
            raise ValueError(f"sar_scale must be one of {[s.value for s in SarScale]}, got {sar_scale!r}")
        items = list(sar) if isinstance(sar, (list, tuple)) else [sar]
        if not items:
            raise ValueError("no SAR image was given")
        names = list(name) if isinstance(name, (list, tuple)) else [name] * len(items)
        if len(names) != len(items):
            raise ValueError(f"{len(names)} names for {len(items)} inputs")
        images: list[_SarImage] = []
        for item, item_name in zip(items, names):
            images += self._read_input(item, sar_scale, band, item_name)
        return images

    def _read_input(
        self, sar: Any, sar_scale: str, band: str | int | None, name: str | None
    ) -> list[_SarImage]:
        if isinstance(sar, (str, os.PathLike)):
            return [self._read_path(os.fspath(sar), sar_scale, band, name)]
        if isinstance(sar, torch.Tensor):
            tensor = sar.detach().cpu()
            sar = (tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor).numpy()
        from PIL import Image

        if isinstance(sar, Image.Image):
            return [self._read_pil(sar, sar_scale, name)]
        if isinstance(sar, np.ndarray):
            if sar.dtype == np.float16:
                sar = sar.astype(np.float32)
            if sar.ndim == 4:
                return [self._read_array(one, sar_scale, name or "", str(one.dtype)) for one in sar]
            return [self._read_array(sar, sar_scale, name or "", str(sar.dtype))]
        raise TypeError(
            f"cannot translate a {type(sar).__name__}: give a numpy array, a torch tensor, a PIL image, "
            "or the path of a GeoTIFF or PNG (or a list of them)"
        )

    def _read_array(
        self,
        raw: np.ndarray,
        sar_scale: str,
        name: str,
        dtype: str,
        palette: bool = False,
        bits: int | None = None,
    ) -> _SarImage:
        """Raw SAR values (H, W) or (C, H, W) -> the model's range, by the rules archive translation reads with."""
        from s2o_platform.data.normalization import model_pixels, sar_pixels

        if raw.ndim == 2:
            raw = raw[None]
        metadata = self.metadata
        if raw.ndim != 3 or raw.shape[0] != metadata.sar_channels:
            raise ValueError(
                f"a SAR image of shape {tuple(raw.shape)} does not fit this {metadata.stage} bundle: it takes "
                f"(H, W) or ({metadata.sar_channels}, H, W) arrays ((N, {metadata.sar_channels}, H, W) for N images)"
            )
        if min(raw.shape[1:]) < 1:
            raise ValueError(f"a SAR image of shape {tuple(raw.shape)} has no pixels")
        pixels = sar_pixels(
            dtype, palette=palette, bits=bits
        )  # UnsupportedSarPixels (a ValueError) says what to send
        scale, _ = pixels.resolve_scale(sar_scale, raw)
        values, valid = model_pixels(raw, dtype, scale.value, metadata.sar_normalization)
        return _SarImage(values, valid.all(axis=0), name)

    def _read_pil(self, image, sar_scale: str, name: str | None) -> _SarImage:
        from s2o_platform.data.normalization import PILLOW_MODES

        if image.mode not in PILLOW_MODES:
            raise ValueError(
                f"a PIL image of mode {image.mode!r} is not one SAR band: give a single-band image "
                f"(modes {', '.join(PILLOW_MODES)}) or a numpy array"
            )
        dtype, bits, palette = PILLOW_MODES[image.mode]
        raw = np.asarray(image)
        return self._read_array(
            raw.astype(dtype, copy=False),
            sar_scale,
            name or "",
            dtype,
            palette=palette,
            bits=bits if bits < 8 else None,
        )

    def _read_path(self, uri: str, sar_scale: str, band: str | int | None, name: str | None) -> _SarImage:
        """A GeoTIFF or PNG (local, file:// or s3://), read as `s2o translate` reads a scene (whole, in memory)."""
        from s2o_platform.data.rasters import strip_suffix
        from s2o_platform.data.scene import inspect_scene, read_rows

        metadata = self.metadata
        if metadata.sar_channels != 1:
            raise ValueError(
                f"this bundle takes {metadata.sar_channels} SAR channels; a file gives one band: read the "
                f"bands yourself and pass a ({metadata.sar_channels}, H, W) array"
            )
        scene_name = name if name is not None else strip_suffix(uri.rstrip("/").rsplit("/", 1)[-1])
        tile = metadata.tile_size
        info = inspect_scene(
            uri,
            scene_name,
            band,
            sar_scale,
            tile,
            tile // 4,
            metadata.sar_normalization,
            self.storage_options,
            archive=False,
        )
        values, valid = read_rows(info, 0, info.height)
        return _SarImage(values[None], valid, scene_name)

    def __repr__(self) -> str:
        m = self.metadata
        return (
            f"S2OPipeline({self.bundle.path!r}, stage={m.stage}, tile={m.tile_size}, sampler={m.sampler.name}, "
            f"device={self.device}, dtype={self.dtype_name})"
        )


def _resolve_device(device: str | torch.device) -> torch.device:
    """auto | cpu | cuda (`devices.resolve_device`), or cuda:N / a torch.device."""
    from s2o_platform.devices import resolve_device

    if isinstance(device, torch.device) or (isinstance(device, str) and ":" in device):
        resolved = torch.device(device)
        resolve_device(resolved.type)  # the same refusals: no CUDA here, or not cpu/cuda
        return resolved
    return resolve_device(device)


def _resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """auto | fp32 | fp16 | bf16 or a torch dtype, checked for the device (`devices.resolve_dtype`)."""
    from s2o_platform.devices import DTYPES, dtype_name, resolve_dtype

    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ValueError(f"dtype {dtype} is not one of torch.float32, torch.float16, torch.bfloat16")
        dtype = dtype_name(dtype)
    return resolve_dtype(dtype, device)


def _run_seeds(
    generator: torch.Generator | Sequence[torch.Generator] | None, seed: int, seed_given: bool, count: int
) -> list[int]:
    """The run seed of each of `count` images: a generator's `initial_seed()`, else `seed`."""
    if generator is None:
        return [int(seed)] * count
    if seed_given:
        raise ValueError("give generator= or seed=, not both")
    generators = list(generator) if isinstance(generator, (list, tuple)) else [generator] * count
    if len(generators) != count:
        raise ValueError(f"{len(generators)} generators for {count} images")
    return [int(g.initial_seed()) for g in generators]


def _as_output(pixels: list[np.ndarray], output_type: str) -> list | np.ndarray:
    """Per image (bands, H, W) output pixels -> PIL images (RGB, or "L" for one band) or an (N, H, W, bands) array
    ((N, H, W) for one band; a list where the images differ in size)."""
    if output_type == "pil":
        from PIL import Image

        return [
            Image.fromarray(np.ascontiguousarray(p[0] if len(p) == 1 else p.transpose(1, 2, 0)))
            for p in pixels
        ]
    arrays = [np.ascontiguousarray(p[0] if len(p) == 1 else p.transpose(1, 2, 0)) for p in pixels]
    return np.stack(arrays) if len({a.shape for a in arrays}) == 1 else arrays
