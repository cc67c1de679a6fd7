"""`--compile` (s2o_platform/inference_compile.py): compiled and eager agree for every sampler, a batch size
compiles once (per power-of-two bucket), and the switch is refused where inductor cannot run.

Kept cheap (2-core CI): one tiny UNet compiled once at batch 2 serves DDPM, DDIM and LCM; a tiny pix2pix
generator compiled at batches 1 and 2 serves `direct` and the warm-up; the bucket count uses dynamo's
counting backend (no C++ compile; recompiles are dynamo's guards, the same whatever the backend)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch._dynamo.testing import CompileCounter
from torch._dynamo.utils import counters
from typer.testing import CliRunner

from s2o_platform.bundle import load_bundle
from s2o_platform.inference import LoadedModel, translate_tiles
from s2o_platform.inference_compile import (
    CompiledNetwork,
    CompileError,
    CompilePlan,
    batch_bucket,
    buckets_up_to,
    compile_bundle,
    resolve_compile,
)
from s2o_platform.models.pix2pix import UNetGenerator
from tests.fixtures import write_smallest_bundles

TILE = 8  # the smallest networks that still have every part (compile time grows with the number of kernels)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    return write_smallest_bundles(tmp_path_factory.mktemp("compile"), TILE)


@pytest.fixture
def no_cxx(monkeypatch):
    """A machine without a C++ compiler, as inductor's CPU backend sees it."""
    from torch._inductor import config as inductor_config

    monkeypatch.setattr(inductor_config.cpp, "cxx", (None, "/nonexistent/s2o-test-g++"))
    monkeypatch.delenv("TORCH_INDUCTOR_INSTALL_GXX", raising=False)


def sar(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, 1, TILE, TILE)).astype(np.float32)


def test_buckets_are_powers_of_two_capped_at_the_batch_size():
    assert [batch_bucket(n) for n in range(1, 10)] == [1, 2, 4, 4, 8, 8, 8, 8, 16]
    assert [batch_bucket(n, 6) for n in (5, 6, 7)] == [6, 6, 8]  # a batch beyond the cap is its own bucket
    assert buckets_up_to(64) == [1, 2, 4, 8, 16, 32, 64] and buckets_up_to(48) == [1, 2, 4, 8, 16, 32, 48]


def test_choices_resolve_per_device(monkeypatch):
    assert not resolve_compile("off", "cpu").enabled
    plan = resolve_compile("default", "cpu")
    assert plan.mode == "default" and not plan.freezing and not plan.cuda_graphs
    assert resolve_compile("max", "cpu").mode == "max-autotune-no-cudagraphs"
    monkeypatch.setattr("s2o_platform.inference_compile.backend_problem", lambda device_type: None)
    gpu = resolve_compile("default", "cuda")
    assert gpu.mode == "reduce-overhead" and gpu.cuda_graphs and not gpu.freezing
    assert resolve_compile("max", "cuda").mode == "max-autotune"
    with pytest.raises(CompileError, match="off, auto, default, max"):
        resolve_compile("fast", "cpu")


def test_compiled_matches_eager_for_every_sampler(bundles):
    """DDPM, DDIM (teacher), LCM (student) through one compiled network at batch 2: one compilation in all, and
    the outputs of eager fp32 to float tolerance."""
    teacher, student = load_bundle(bundles["teacher"]), load_bundle(bundles["student"])
    # the same freshly initialised UNet is exported as both: one compiled network serves both samplers
    assert all(
        torch.equal(a, b)
        for a, b in zip(teacher.model.state_dict().values(), student.model.state_dict().values())
    )
    teacher.scheduler_config = {
        **teacher.scheduler_config,
        "num_train_timesteps": 20,
    }  # DDPM walks all of them
    tiles = sar(2)
    cases = [(teacher, "ddpm", None), (teacher, "ddim", 4), (student, "lcm", 4)]
    eager = [translate_tiles(b, tiles, sampler, steps, seed=3) for b, sampler, steps in cases]
    compiled = CompiledNetwork(teacher.model, resolve_compile("default", "cpu"), max_batch=2)
    before = counters["stats"]["unique_graphs"]
    for (bundle, sampler, steps), expected in zip(cases, eager):
        out = translate_tiles(dataclasses.replace(bundle, model=compiled), tiles, sampler, steps, seed=3)
        assert out.shape == expected.shape and np.isfinite(out).all()
        np.testing.assert_allclose(out, expected, atol=2e-3, err_msg=sampler)
    assert counters["stats"]["unique_graphs"] - before == 1  # 1 + 20 + 4 + 4 network calls, one compilation
    assert compiled.stats.compiled_batches == [2] and compiled.stats.fell_back is None


def test_loaded_model_compiles_every_batch_size_before_its_first_call(bundles):
    """LoadedModel (Serve's replicas, translate's and eval's actors) with --compile default: the warm-up compiles
    buckets 1 and 2 of batch size 2; translating 1 or 2 tiles afterwards compiles nothing; `direct` (pix2pix)
    agrees with eager."""
    eager = LoadedModel(
        bundles["gan"], device="cpu", dtype="fp32", batch_size=2, threads=torch.get_num_threads()
    )
    before = counters["stats"]["unique_graphs"]
    model = LoadedModel(
        bundles["gan"],
        device="cpu",
        dtype="fp32",
        batch_size=2,
        threads=torch.get_num_threads(),
        compile="default",
    )
    assert counters["stats"]["unique_graphs"] - before == 2
    assert isinstance(model.bundle.model, CompiledNetwork) and model.bundle.model.stats.compiled_batches == [
        1,
        2,
    ]
    after_warm_up = counters["stats"]["unique_graphs"]
    for n in (2, 1, 2):
        np.testing.assert_allclose(
            model.translate(sar(n, n), "k"), eager.translate(sar(n, n), "k"), atol=1e-4
        )
    assert counters["stats"]["unique_graphs"] == after_warm_up
    # another network of the same architecture in the same process (eval's teacher and student): its own weights
    other = UNetGenerator(sample_size=TILE, in_channels=1, base_channels=8).eval()
    compiled_other = CompiledNetwork(other, resolve_compile("default", "cpu"), max_batch=2)
    x = torch.from_numpy(sar(2, 9))
    with torch.no_grad():
        torch.testing.assert_close(compiled_other(x), other(x), atol=1e-4, rtol=1e-4)
        assert not torch.allclose(compiled_other(x), model.bundle.model(x), atol=1e-3)


def test_a_changed_batch_size_compiles_once_per_bucket():
    """Sizes 1..8 in any order and repeated: four compilations (buckets 1, 2, 4, 8), never one per request;
    padded rows never leak into the output."""
    gen = UNetGenerator(sample_size=TILE, in_channels=1, base_channels=8).eval()
    counter = CompileCounter()
    net = CompiledNetwork(gen, CompilePlan("default", "default"), max_batch=8, backend=counter)
    x = torch.from_numpy(sar(8))
    with torch.no_grad():
        for n in (2, 3, 4, 1, 3, 2, 5, 8, 7, 1, 6):
            out = net(x[:n])
            assert out.shape[0] == n
            torch.testing.assert_close(out, gen(x[:n]), atol=1e-5, rtol=1e-4)
    assert counter.frame_count == 4 and net.stats.compiled_batches == [1, 2, 4, 8]


def test_a_failed_compile_falls_back_only_under_auto():
    gen = UNetGenerator(sample_size=TILE, in_channels=1, base_channels=8).eval()

    def broken_backend(graph, example_inputs):
        raise RuntimeError("the C++ compiler crashed")

    x = torch.from_numpy(sar(2))
    with torch.no_grad():
        auto = CompiledNetwork(gen, CompilePlan("auto", "default"), backend=broken_backend)
        torch.testing.assert_close(auto(x), gen(x))
        assert not auto.compiled and "C++ compiler crashed" in auto.stats.fell_back
        asked = CompiledNetwork(gen, CompilePlan("default", "default"), backend=broken_backend)
        with pytest.raises(CompileError, match="--compile default.*--compile off"):
            asked(x)


def test_refused_without_a_cpp_compiler_unless_auto(no_cxx, bundles, tmp_path):
    """No C++ compiler: default/max refused with the reason and the way out, in every command, before anything
    starts; auto runs eager and says why."""
    from s2o_platform.cli import app
    from s2o_platform.serving.runner import plan_serving
    from s2o_platform.serving.settings import DEFAULT_CONFIG, ServeConfigError

    for choice in ("default", "max"):
        with pytest.raises(CompileError, match="no working C\\+\\+ compiler.*--compile off"):
            resolve_compile(choice, "cpu")
    messages = []
    plan = resolve_compile("auto", "cpu", messages.append)
    assert not plan.enabled and "fell back to eager" in messages[0] and "C++ compiler" in messages[0]
    with pytest.raises(CompileError, match="C\\+\\+ compiler"):
        LoadedModel(bundles["gan"], device="cpu", compile="default")
    model = LoadedModel(bundles["gan"], device="cpu", batch_size=2, compile="auto")
    assert not isinstance(model.bundle.model, CompiledNetwork) and model.compile_plan.reason
    assert compile_bundle(load_bundle(bundles["gan"]), plan).model.__class__ is UNetGenerator

    with pytest.raises(ServeConfigError, match="C\\+\\+ compiler"):
        plan_serving(DEFAULT_CONFIG, model=bundles["gan"], overrides={"compile": "default"})
    assert (
        plan_serving(DEFAULT_CONFIG, model=bundles["gan"], overrides={"compile": "auto"}).settings.compile
        == "auto"
    )
    with pytest.raises(ServeConfigError, match="compile"):
        plan_serving(DEFAULT_CONFIG, model=bundles["gan"], overrides={"compile": "fast"})
    result = CliRunner().invoke(
        app,
        [
            "translate",
            str(tmp_path),
            "--model",
            bundles["gan"],
            "--out",
            str(tmp_path / "out"),
            "--compile",
            "default",
        ],
    )
    assert result.exit_code == 2 and "C++ compiler" in result.output and "Traceback" not in result.output, (
        result.output
    )
    assert not (tmp_path / "out").exists()
