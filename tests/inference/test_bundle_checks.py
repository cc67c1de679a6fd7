"""Bundles are validated before anything starts: the metadata's schema, the network's safetensors headers,
never pickles; every command's pre-flight refuses a bad bundle with one line and exit code 2."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from s2o_platform.bundle import BundleError, check_bundle, load_bundle
from s2o_platform.cli import app
from s2o_platform.data.normalization import SarNormalization
from s2o_platform.data.store import StoreMetadata
from s2o_platform.train.untrained import write_untrained_bundles
from tests.fixtures import TINY_CONFIGS

runner = CliRunner()


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    store = StoreMetadata(tile_size=32, sar_channels=1, sar_normalization=SarNormalization())
    return write_untrained_bundles(TINY_CONFIGS, tmp_path_factory.mktemp("bundles"), store)


def damaged(good_bundle: str, tmp_path: Path, name: str) -> Path:
    copy = tmp_path / name
    shutil.copytree(good_bundle, copy)
    return copy


def edit_metadata(bundle: Path, change) -> Path:
    path = bundle / "s2o_bundle.json"
    data = json.loads(path.read_text())
    path.write_text(json.dumps(change(data)))
    return bundle


def test_good_bundles_pass(good):
    for stage, path in good.items():
        assert check_bundle(path).stage == {"teacher": "teacher", "student": "student", "gan": "gan"}[stage]


@pytest.mark.parametrize(
    "change,words",
    [
        (lambda d: [], "holds a list, not an object"),
        (lambda d: {**d, "tile_size": "abc"}, "tile_size: Input should be a valid integer"),
        (lambda d: {**d, "tile_size": 0}, "tile_size: Input should be greater than or equal to 8"),
        (
            lambda d: {**d, "sar_normalization": {**d["sar_normalization"], "clip_db": [0.0, -25.0]}},
            "clip_db must be two finite numbers LO < HI",
        ),
        (lambda d: {**d, "sampler": {**d["sampler"], "name": "euler"}}, "sampler.name"),
        (lambda d: {k: v for k, v in d.items() if k != "sar_channels"}, "sar_channels: Field required"),
        (lambda d: {**d, "stage": "critic"}, "stage: Input should be 'teacher', 'student' or 'gan'"),
    ],
)
def test_bad_metadata_is_one_named_error(good, tmp_path, change, words):
    bundle = edit_metadata(damaged(good["student"], tmp_path, "b"), change)
    with pytest.raises(BundleError) as err:
        check_bundle(str(bundle))
    assert words in str(err.value) and "\n" not in str(err.value)


def test_pickled_weights_are_refused_and_never_loaded(good, tmp_path):
    bundle = damaged(good["student"], tmp_path, "pickled")
    weights = bundle / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_bundle(str(bundle)).model.state_dict()
    weights.unlink()
    torch.save(state, bundle / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(
        BundleError, match=r"only pickled weights \(diffusion_pytorch_model.bin\), which are never loaded"
    ):
        check_bundle(str(bundle))


def test_damaged_safetensors_are_refused(good, tmp_path):
    truncated = damaged(good["gan"], tmp_path, "truncated")
    weights = truncated / "generator" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(BundleError, match="lies outside the file or does not match its shape"):
        check_bundle(str(truncated))
    garbage = damaged(good["gan"], tmp_path, "garbage")
    (garbage / "generator" / "diffusion_pytorch_model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(BundleError, match="not a valid safetensors file"):
        check_bundle(str(garbage))
    no_schedule = damaged(good["student"], tmp_path, "no-schedule")
    shutil.rmtree(no_schedule / "scheduler")
    with pytest.raises(BundleError, match="no scheduler/scheduler_config.json"):
        check_bundle(str(no_schedule))


@pytest.fixture
def pickled(good, tmp_path):
    bundle = damaged(good["student"], tmp_path, "pickled-cli")
    (bundle / "unet" / "diffusion_pytorch_model.safetensors").rename(
        bundle / "unet" / "diffusion_pytorch_model.bin"
    )
    return bundle


def test_every_command_refuses_a_bad_bundle_before_starting(pickled, tmp_path):
    """serve, translate, eval and distillation's --teacher: exit 2, one line naming the problem, no traceback,
    nothing started (each check runs before Ray is touched)."""
    from s2o_platform.data.store import write_metadata

    store = tmp_path / "store"  # metadata only: the bundle is refused before any tile is read
    write_metadata(
        str(store), StoreMetadata(tile_size=32, sar_channels=1, sar_normalization=SarNormalization())
    )
    commands = {
        "serve": ["serve", "--model", str(pickled), "--port", "1"],
        "translate": ["translate", str(tmp_path), "--model", str(pickled), "--out", str(tmp_path / "out")],
        "eval": ["eval", "--data", str(store), "--model", f"s={pickled}", "--out", str(tmp_path / "report")],
        "distill": [
            "train",
            "distill",
            "--config",
            str(TINY_CONFIGS / "distill.yaml"),
            "--data",
            str(store),
            "--teacher",
            str(pickled),
            "--out",
            str(tmp_path / "run"),
        ],
    }
    for name, args in commands.items():
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (name, result.output)
        assert "never loaded" in result.output and "Traceback" not in result.output, (name, result.output)
    assert (
        not (tmp_path / "out").exists()
        and not (tmp_path / "report").exists()
        and not (tmp_path / "run").exists()
    )


def test_a_bundle_written_over_another_is_whole_or_the_old_one(good, tmp_path):
    """write_bundle stages the new bundle beside the old and swaps it in: a failure midway leaves the old bundle
    loadable and no temporary folder; a success replaces it entirely."""
    from s2o_platform.bundle import read_bundle_metadata, write_bundle

    target = damaged(good["gan"], tmp_path, "gan")
    old = load_bundle(str(target))

    class Failing(torch.nn.Module):
        def save_pretrained(self, *args, **kwargs):
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_bundle(target, old.metadata, Failing(), None, "x: 1\n")
    assert check_bundle(str(target)).stage == "gan" and sorted(p.name for p in tmp_path.iterdir()) == ["gan"]
    meta = old.metadata
    meta.model_card = {**meta.model_card, "note": "rewritten"}
    write_bundle(target, meta, old.model, None, "x: 2\n")
    assert (
        read_bundle_metadata(str(target)).model_card["note"] == "rewritten"
        and (target / "config.yaml").read_text() == "x: 2\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gan"]


def test_a_bundle_without_max_steps_gets_its_samplers_range(good, tmp_path):
    """Bundles written before `sampler.max_steps` was recorded still load: the range comes from the sampler's name."""
    from s2o_platform.bundle import read_bundle_metadata

    ranges = {"student": 8, "teacher": None, "gan": 1}
    for stage, expected in ranges.items():
        assert "max_steps" in json.loads((Path(good[stage]) / "s2o_bundle.json").read_text())["sampler"]
        old = edit_metadata(
            damaged(good[stage], tmp_path, f"old-{stage}"),
            lambda d: {**d, "sampler": {k: v for k, v in d["sampler"].items() if k != "max_steps"}},
        )
        assert check_bundle(str(old)).sampler.max_steps == expected, stage
        assert read_bundle_metadata(str(old)).sampler.max_steps == expected, stage


def test_a_student_refuses_steps_beyond_its_bundles_range(good, tmp_path):
    """A student distilled with distill.max_sampling_steps=4 writes max_steps 4: 4 steps run, 5 are refused."""
    from s2o_platform.config import DistillConfig, load_config
    from s2o_platform.inference import resolve_sampler, translate_tiles
    from s2o_platform.train.stages.distill import DistillStage
    from s2o_platform.train.untrained import CARD

    teacher = load_bundle(good["teacher"])
    cfg = load_config(
        DistillConfig,
        TINY_CONFIGS / "distill.yaml",
        ["distill.max_sampling_steps=4", "distill.default_steps=2"],
    )
    stage = DistillStage()
    store = StoreMetadata(tile_size=32, sar_channels=1, sar_normalization=SarNormalization())
    # what the export reads from the teacher comes in as an argument, never from state left on the stage
    with pytest.raises(ValueError, match="teacher_context"):
        stage.export(str(tmp_path / "no-teacher"), teacher.model, cfg, store, CARD)
    assert not (tmp_path / "no-teacher").exists()
    stage.export(
        str(tmp_path / "student4"),
        teacher.model,
        cfg,
        store,
        CARD,
        DistillStage.teacher_context(teacher.scheduler_config),
    )
    student = load_bundle(str(tmp_path / "student4"))
    assert student.scheduler_config["prediction_type"] == teacher.scheduler_config["prediction_type"]
    assert student.metadata.sampler.max_steps == 4 and student.metadata.model_card["allowed_steps"] == "1..4"
    assert resolve_sampler(student, None, None) == ("lcm", 2) and resolve_sampler(student, "lcm", 4) == (
        "lcm",
        4,
    )
    with pytest.raises(BundleError, match=r"samples with 1\.\.4 steps; 5 was asked for"):
        resolve_sampler(student, None, 5)
    assert translate_tiles(student, torch.zeros(1, 1, 32, 32).numpy(), steps=4).shape == (1, 3, 32, 32)
    # The standard student keeps its 1..8.
    with pytest.raises(BundleError, match=r"1\.\.8"):
        resolve_sampler(load_bundle(good["student"]), None, 9)


@pytest.mark.parametrize(
    "sampler,words",
    [
        ({"default_steps": 6, "max_steps": 4}, "sampler.default_steps: 6 is more than sampler.max_steps (4)"),
        ({"max_steps": 0}, "sampler.max_steps: Input should be greater than or equal to 1"),
        ({"max_steps": "8"}, "sampler.max_steps: Input should be a valid integer"),
    ],
)
def test_a_bad_step_range_is_one_named_error(good, tmp_path, sampler, words):
    bundle = edit_metadata(
        damaged(good["student"], tmp_path, "b"), lambda d: {**d, "sampler": {**d["sampler"], **sampler}}
    )
    with pytest.raises(BundleError) as err:
        check_bundle(str(bundle))
    assert words in str(err.value) and "\n" not in str(err.value)
