"""The Python API (`S2OPipeline`, s2o_platform/pipeline.py): inputs of every kind and any size, diffusers-style
outputs, seeds, teacher DDIM and the GAN, `.to()`, the shared core with `LoadedModel`, and the key property:
a GeoTIFF through the pipeline is pixel-identical to the COG `s2o translate` writes for it with the same seed.

Kept cheap (2-core CI): tiny untrained bundles of 16 px tiles written without a Ray cluster (as test_compile.py
does), one torch thread in this process; only the `s2o translate` comparison uses the shared Ray cluster."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from PIL import Image
from typer.testing import CliRunner

from s2o_platform import S2OPipeline, S2OPipelineOutput
from s2o_platform.bundle import BundleError
from s2o_platform.devices import cpu_supports, cpu_threads
from s2o_platform.inference import LoadedModel, batch_seed, translate_tiles
from tests.fixtures import write_smallest_bundles

TILE = 16


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a busy 2-core machine two threads spin against other processes (many times slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    return write_smallest_bundles(tmp_path_factory.mktemp("pipeline-api"), TILE)


@pytest.fixture(scope="module")
def student(bundles):
    return S2OPipeline.from_pretrained(bundles["student"], device="cpu", dtype="fp32")


def sar_db(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-22, -2, (height, width)).astype(np.float32)


def test_numpy_tensor_pil_and_png_path_give_the_same_image(student, tmp_path):
    raw = np.random.default_rng(1).integers(20, 235, (40, 52), dtype=np.uint8)
    png = tmp_path / "patch.png"
    Image.fromarray(raw).save(png)
    seed = dict(generator=torch.Generator().manual_seed(3), num_inference_steps=2)
    from_array = np.asarray(student(raw, **seed).images[0])
    assert from_array.shape == (40, 52, 3) and from_array.dtype == np.uint8
    for other in (raw[None], torch.from_numpy(raw), Image.fromarray(raw)):
        np.testing.assert_array_equal(np.asarray(student(other, **seed).images[0]), from_array)
    # a file is keyed by its name (as s2o translate keys a scene); with the same name it is the same image
    np.testing.assert_array_equal(np.asarray(student(png, name="", **seed).images[0]), from_array)
    np.testing.assert_array_equal(np.asarray(student(str(png), name="", **seed).images[0]), from_array)
    assert not np.array_equal(np.asarray(student(png, **seed).images[0]), from_array)
    # lists and (N, C, H, W) batches: one image each, each as it is alone
    both = student([raw, raw[::-1].copy()], output_type="np", **seed).images
    assert both.shape == (2, 40, 52, 3)
    stacked = student(
        torch.from_numpy(np.stack([raw, raw[::-1].copy()])[:, None]), output_type="np", **seed
    ).images
    np.testing.assert_array_equal(stacked, both)
    np.testing.assert_array_equal(np.clip(np.rint(both[0] * 255), 1, 255).astype(np.uint8), from_array)


def test_bad_inputs_are_refused_with_what_to_send(student):
    with pytest.raises(ValueError, match="sar_scale"):
        student(sar_db(20, 20), sar_scale="decibel")
    with pytest.raises(ValueError, match="int8"):
        student(np.zeros((20, 20), np.int8))
    with pytest.raises(ValueError, match="palette"):
        student(Image.fromarray(np.zeros((20, 20), np.uint8)).convert("P"))
    with pytest.raises(ValueError, match=r"\(1, H, W\)"):
        student(np.zeros((2, 20, 20), np.float32))
    with pytest.raises(TypeError, match="numpy array"):
        student(3.5)
    with pytest.raises(ValueError, match="output_type"):
        student(sar_db(20, 20), output_type="latent")


def test_outputs_are_diffusers_shaped(student):
    sar = sar_db(24, 30)
    out = student(sar)
    assert isinstance(out, S2OPipelineOutput) and isinstance(out.images, list)
    image = out.images[0]
    assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == (30, 24)
    assert out[0] is out.images and out["images"] is out.images  # BaseOutput: index and key access
    as_np = student(sar, output_type="np").images
    assert (
        as_np.dtype == np.float32 and as_np.shape == (1, 24, 30, 3) and 0 <= as_np.min() and as_np.max() <= 1
    )
    tuple_out = student(sar, return_dict=False)
    assert isinstance(tuple_out, tuple) and len(tuple_out) == 1
    np.testing.assert_array_equal(np.asarray(tuple_out[0][0]), np.asarray(image))
    # images of different sizes: a list of arrays
    mixed = student([sar, sar_db(20, 17)], output_type="np").images
    assert [a.shape for a in mixed] == [(24, 30, 3), (20, 17, 3)]


def test_a_generator_reproduces_and_is_the_seed(student):
    sar = sar_db(30, 30)

    def run(**kwargs):
        return student(sar, num_inference_steps=4, output_type="np", **kwargs).images

    first = run(generator=torch.Generator().manual_seed(7))
    np.testing.assert_array_equal(run(generator=torch.Generator().manual_seed(7)), first)
    np.testing.assert_array_equal(run(seed=7), first)  # generator.initial_seed() is the run seed
    assert not np.array_equal(run(seed=8), first)
    assert not np.array_equal(run(seed=7, name="other"), first)  # windows are keyed by the image's name too
    with pytest.raises(ValueError, match="not both"):
        run(seed=7, generator=torch.Generator().manual_seed(7))


def test_any_size_comes_back_at_that_size_with_nodata_kept(student):
    sar = sar_db(97, 150)
    sar[:10, :10] = np.nan  # nodata
    out = student(sar, num_inference_steps=1)
    assert out.images[0].size == (150, 97)
    pixels = np.asarray(out.images[0])
    assert (pixels[:10, :10] == 0).all() and (pixels[10:, 10:] >= 1).all()
    as_np = student(sar, num_inference_steps=1, output_type="np").images[0]
    assert (
        as_np.shape == (97, 150, 3) and np.isnan(as_np[:10, :10]).all() and np.isfinite(as_np[10:, 10:]).all()
    )
    # smaller than one tile: padded by reflection, cropped back
    assert student(sar_db(10, 12), overlap=0).images[0].size == (12, 10)
    with pytest.raises(ValueError, match="overlap"):
        student(sar, overlap=TILE)


def test_an_uncertainty_band_beside_the_image(student, bundles):
    """`uncertainty=K`: the spread of K samples per window, blended like the image, with the nodata kept; its first
    sample is the plain call's image; a re-run reproduces it; the GAN has none."""
    sar = sar_db(40, 37)
    sar[:6, :6] = np.nan
    common = dict(num_inference_steps=2, seed=4)
    as_np = student(sar, output_type="np", uncertainty=3, **common)
    spread = as_np.uncertainty
    assert spread.shape == (1, 40, 37) and spread.dtype == np.float32
    assert np.isnan(spread[0, :6, :6]).all() and np.isfinite(spread[0, 6:, 6:]).all()
    assert (spread[0, 6:, 6:] > 0).mean() > 0.9  # an untrained student spreads almost everywhere
    assert as_np.images.shape == (1, 40, 37, 3)
    as_pil = student(sar, uncertainty=3, **common)
    band = np.asarray(as_pil.uncertainty[0])
    assert as_pil.uncertainty[0].mode == "L" and band.shape == (40, 37)
    assert (band[:6, :6] == 0).all()
    expected = np.clip(np.rint(spread[0] * 255.0), 1, 255)
    np.testing.assert_array_equal(
        band[6:, 6:], expected[6:, 6:]
    )  # one rule: the 8-bit levels of the [0, 1] band
    again = student(sar, uncertainty=3, **common)
    np.testing.assert_array_equal(np.asarray(again.uncertainty[0]), band)
    first = student(sar, uncertainty=3, uncertainty_output="sample", **common).images[0]
    np.testing.assert_array_equal(np.asarray(first), np.asarray(student(sar, **common).images[0]))
    assert not np.array_equal(
        np.asarray(as_pil.images[0]), np.asarray(first)
    )  # the mean of 3 is not the first
    images, spreads = student(sar, uncertainty=2, return_dict=False, **common)
    assert len(images) == len(spreads) == 1
    with pytest.raises(ValueError, match="at least 2 samples"):
        student(sar, uncertainty=1)
    gan = S2OPipeline.from_pretrained(bundles["gan"], device="cpu", dtype="fp32")
    with pytest.raises(BundleError, match="deterministic"):
        gan(sar, uncertainty=2)


def test_teacher_samples_ddim_and_the_gan_needs_no_steps(bundles):
    teacher = S2OPipeline.from_pretrained(bundles["teacher"], device="cpu", torch_dtype=torch.float32)
    sar = sar_db(28, 28)
    ddim50 = teacher(sar, sampler="ddim", num_inference_steps=50, seed=1, output_type="np").images
    assert ddim50.shape == (1, 28, 28, 3) and np.isfinite(ddim50).all()
    again = teacher(
        sar,
        sampler="ddim",
        num_inference_steps=50,
        generator=torch.Generator().manual_seed(1),
        output_type="np",
    ).images
    np.testing.assert_array_equal(again, ddim50)
    assert not np.array_equal(
        teacher(sar, sampler="ddim", num_inference_steps=5, seed=1, output_type="np").images, ddim50
    )
    with pytest.raises(BundleError, match="lcm"):
        teacher(sar, sampler="lcm")
    gan = S2OPipeline.from_pretrained(bundles["gan"], device="cpu", dtype="fp32")
    once = gan(sar, output_type="np").images
    np.testing.assert_array_equal(gan(sar, seed=5, output_type="np").images, once)  # deterministic: no noise


def test_to_moves_the_network_and_returns_the_pipeline(bundles):
    pipe = S2OPipeline.from_pretrained(bundles["student"], device="cpu", dtype="fp32")
    assert pipe.to("cpu") is pipe and pipe.to(torch.float32) is pipe
    sar = sar_db(20, 20)
    fp32 = pipe(sar, output_type="np").images
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            pipe.to("cuda")
    if cpu_supports("bf16"):
        assert pipe.to(torch.bfloat16) is pipe
        assert next(pipe.bundle.model.parameters()).dtype == torch.bfloat16 and pipe.dtype_name == "bf16"
        bf16 = pipe(sar, output_type="np").images  # (an untrained network: not compared with fp32's)
        assert bf16.shape == fp32.shape and np.isfinite(bf16).all()
        assert pipe.to(dtype="fp32") is pipe and next(pipe.bundle.model.parameters()).dtype == torch.float32
    else:
        with pytest.raises(ValueError, match="emulated"):
            pipe.to(torch.bfloat16)


def test_loaded_model_is_the_pipeline(bundles, student):
    """LoadedModel (translate's and eval's actors, Serve's replicas) is a thin subclass: the same loading and the
    same tile call, with its constructor and `translate` as they were."""
    model = LoadedModel(
        bundles["student"], device="cpu", dtype="fp32", steps=2, seed=4, batch_size=4, threads=1
    )
    assert isinstance(model, S2OPipeline) and model.dtype_name == "fp32" and model.device.type == "cpu"
    tiles = np.random.default_rng(0).uniform(-1, 1, (6, 1, TILE, TILE)).astype(np.float32)
    expected = translate_tiles(model.bundle, tiles, None, 2, seed=batch_seed(4, "k"), batch_size=4)
    np.testing.assert_array_equal(model.translate(tiles, "k"), expected)
    keys = [f"t{i}" for i in range(6)]
    keyed = translate_tiles(model.bundle, tiles, None, 2, seed=4, batch_size=4, keys=keys)
    np.testing.assert_array_equal(model.translate(tiles, "", keys=keys), keyed)
    np.testing.assert_array_equal(S2OPipeline.run_tiles(model, tiles, seed=4, keys=keys), keyed)
    # another pipeline on the same bundle: the same network (a batch of 32, not 4: float sums in another order)
    np.testing.assert_allclose(student.run_tiles(tiles, seed=4, keys=keys, steps=2), keyed, atol=1e-3)


def imported_modules(module: str) -> set[str]:
    """The s2o_platform modules `module` imports anywhere in its file (at the top or inside functions), and the
    packages above each."""
    import ast
    import importlib.util

    found = set()
    for node in ast.walk(ast.parse(Path(importlib.util.find_spec(module).origin).read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and (node.module or "").split(".")[0] == "s2o_platform"
        ):
            found.add(node.module)  # and `from PACKAGE import MODULE`
            if importlib.util.find_spec(node.module).submodule_search_locations:
                found |= {
                    f"{node.module}.{a.name}"
                    for a in node.names
                    if importlib.util.find_spec(f"{node.module}.{a.name}")
                }
    ours = {m for m in found if m.split(".")[0] == "s2o_platform"}
    return ours | {".".join(m.split(".")[:k]) for m in ours for k in range(1, m.count(".") + 1)}


def test_the_api_and_serving_import_no_training_code():
    """Everything the Python API, LoadedModel and the Serve application can import, on any branch (imports inside
    functions too), leaves s2o_platform.train (DeepSpeed, Ray Train) alone; and `import s2o_platform` stays light."""
    seen, todo = set(), ["s2o_platform.pipeline", "s2o_platform.inference", "s2o_platform.serving.app"]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += sorted(imported_modules(module) - seen)
    assert (
        "s2o_platform.data.scene" in seen and "s2o_platform.devices" in seen
    )  # the walk follows lazy imports
    assert not [m for m in seen if m.startswith("s2o_platform.train")], sorted(seen)
    light = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, s2o_platform; s2o_platform.__version__; "
            "print(sorted(m for m in ('torch', 'numpy', 'diffusers') if m in sys.modules))",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert light.returncode == 0 and light.stdout.strip() == "[]", light.stderr[-2000:]


@pytest.mark.ray
def test_a_geotiff_is_pixel_identical_to_s2o_translate(ray_cluster, bundles, tmp_path):
    """The same scene, bundle, steps and seed: `s2o translate`'s COG and the pipeline's image are equal pixel for
    pixel (a float dB scene with NaN nodata and a uint16 DN one with nodata 0, each with a nodata corner; 70 px: not
    a tile multiple). Float sums depend on the batch and on torch's thread count, so the pipeline runs with
    translate's (batch size 32; on a CPU the actor's threads: the cores less one kept for the driver, over --actors)."""
    from s2o_platform.cli import app
    from s2o_platform.data.synth_writer import write_scene_geotiffs

    write_scene_geotiffs(str(tmp_path / "scenes"), 3, 70, seed=3)
    (tmp_path / "scenes" / "sar" / "scene_001_linear.tif").unlink()  # two scenes are enough (2-core CI)
    sources = sorted((tmp_path / "scenes" / "sar").glob("*.tif"))
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        [
            "translate",
            str(tmp_path / "scenes" / "sar"),
            "--model",
            bundles["student"],
            "--out",
            str(out),
            "--steps",
            "2",
            "--seed",
            "11",
            "--dtype",
            "fp32",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    try:
        pipe = S2OPipeline.from_pretrained(
            bundles["student"], device="cpu", dtype="fp32", threads=cpu_threads(None, 1, reserve=1)
        )
        for source in sources:
            with rasterio.open(out / source.name) as ds:
                cog = ds.read().transpose(1, 2, 0)
            ours = np.asarray(pipe(source, num_inference_steps=2, seed=11).images[0])
            assert ours.shape == cog.shape
            np.testing.assert_array_equal(ours, cog, err_msg=source.name)
            assert (cog == 0).any() and (cog[-10:, -10:] > 0).all()  # the nodata corner, kept as nodata
        from_generator = pipe(
            sources[0], num_inference_steps=2, generator=torch.Generator().manual_seed(11)
        ).images[0]
        with rasterio.open(out / sources[0].name) as ds:
            np.testing.assert_array_equal(np.asarray(from_generator), ds.read().transpose(1, 2, 0))
    finally:
        torch.set_num_threads(1)
