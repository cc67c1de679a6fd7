"""One config story for the commands beyond training: `s2o translate`, `s2o eval`, `s2o serve` and `s2o demo`
take --config FILE and repeated --set key=value over one typed model (unknown keys refused), explicit options
win over both, and each run saves its resolved config with its outputs.

The precedence checks call the functions the commands build their settings with; one real translate run
(a small scene, an untrained pix2pix bundle, on the shared Ray cluster) checks DEST/_s2o_config.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from s2o_platform.cli import app, demo_preset, eval_config, serve_plan, translate_config
from s2o_platform.config import EvalConfig, TranslateConfig, load_config
from tests.fixtures import TINY_CONFIGS

runner = CliRunner()


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def assert_refused(args: list[str], *words: str) -> None:
    """Exit code 2, one line naming the problem, no traceback."""
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # not an uncaught error
    assert "Traceback" not in result.output and "error: " in result.output, result.output
    for word in words:
        assert word in result.output, result.output


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """Untrained bundles for 32 px single-band tiles (no store, no Ray needed to write them)."""
    from s2o_platform.data.normalization import SarNormalization
    from s2o_platform.data.store import StoreMetadata
    from s2o_platform.train.untrained import write_untrained_bundles

    store = StoreMetadata(tile_size=32, sar_channels=1, sar_normalization=SarNormalization())
    return write_untrained_bundles(TINY_CONFIGS, tmp_path_factory.mktemp("config-bundles"), store)


# -- translate --------------------------------------------------------------------------------------------


def test_translate_file_then_set_then_explicit_options(tmp_path):
    path = write_yaml(
        tmp_path / "translate.yaml",
        {"model": "runs/a/bundle", "batch_size": 8, "steps": 2, "band": "VH", "seed": 5, "compile": False},
    )  # unquoted `off` in YAML
    cfg = translate_config(
        path, ["steps=3", "seed=6", "band=2", "sar_scale=db"], steps=4, model=None, batch_size=None
    )
    assert (cfg.model, cfg.batch_size, cfg.steps, cfg.seed, cfg.band, cfg.sar_scale.value) == (
        "runs/a/bundle",
        8,
        4,
        6,
        "2",
        "db",
    )
    assert (cfg.actors, cfg.overlap, cfg.output_dtype, cfg.dtype, cfg.compile, cfg.split) == (
        1,
        None,
        "uint8",
        "auto",
        "off",
        "test",
    )
    assert translate_config() == TranslateConfig()  # no file, no --set, no option: the defaults the flags had

    from s2o_platform.translate.pipeline import TranslateRun

    options = TranslateRun.from_config(cfg, "scenes/", "out/", progress=False)
    assert (
        options.source,
        options.dest,
        options.model,
        options.steps,
        options.sar_scale,
        options.progress,
    ) == ("scenes/", "out/", "runs/a/bundle", 4, "db", False)
    assert options.to_config() == cfg


def test_translate_refuses_unknown_keys_and_bad_values(tmp_path):
    bad = write_yaml(tmp_path / "bad.yaml", {"batch_sise": 8})
    assert_refused(
        ["translate", str(tmp_path), "--out", str(tmp_path / "o"), "--config", str(bad)],
        "unknown key 'batch_sise'",
        str(bad),
    )
    assert_refused(
        ["translate", str(tmp_path), "--out", str(tmp_path / "o"), "--model", "m", "--set", "overlapp=4"],
        "unknown key 'overlapp'",
        "--set overlapp=4",
    )
    assert_refused(
        ["translate", str(tmp_path), "--out", str(tmp_path / "o"), "--model", "m", "--batch-size", "0"],
        "batch_size",
        "--batch-size",
    )
    assert_refused(["translate", str(tmp_path), "--out", str(tmp_path / "o")], "no model bundle")
    assert not (tmp_path / "o").exists()


# -- data ingest / data synth -------------------------------------------------------------------------------


def test_ingest_and_synth_name_the_option_of_a_bad_value_before_any_work(tmp_path, monkeypatch):
    import s2o_platform.ray_cluster as ray_cluster

    def no_cluster(*args, **kwargs):  # a refusal must come before a Ray cluster is started or joined
        raise AssertionError("connected to Ray before the settings were checked")

    monkeypatch.setattr(ray_cluster, "connect", no_cluster)
    out = str(tmp_path / "store")
    assert_refused(
        ["data", "ingest", str(tmp_path), "--out", out, "--test-fraction", "1.5"], "--test-fraction"
    )
    assert_refused(
        ["data", "ingest", str(tmp_path), "--out", out, "--tile-size", "4"], "tile_size", "--tile-size"
    )
    assert_refused(
        ["data", "ingest", str(tmp_path), "--out", out, "--set", "stridee=3"], "unknown key 'stridee'"
    )
    assert_refused(["data", "synth", "--out", out, "--pairs", "0"], "pairs", "--pairs")
    assert_refused(["data", "synth", "--out", out, "--seed", "-1", "--size", "4"], "size", "--size")
    assert not (tmp_path / "store").exists()


# -- eval -------------------------------------------------------------------------------------------------


def test_eval_file_then_set_then_explicit_options(tmp_path):
    path = write_yaml(
        tmp_path / "eval.yaml",
        {
            "models": ["a=runs/a/bundle@lcm:1,2"],
            "batch_size": 4,
            "repeats": 2,
            "speed_references": False,
            "sample_tiles": 2,
        },
    )
    cfg = eval_config(path, ["repeats=5", "limit=8", "dtype=fp32"], models=None, dtype="bf16", seed=3)
    assert cfg.models == ["a=runs/a/bundle@lcm:1,2"]  # the file's list: no --model given
    assert (
        cfg.batch_size,
        cfg.repeats,
        cfg.limit,
        cfg.dtype,
        cfg.seed,
        cfg.speed_references,
        cfg.sample_tiles,
    ) == (4, 5, 8, "bf16", 3, False, 2)
    assert eval_config(path, [], models=["b=x", "c=y"]).models == ["b=x", "c=y"]  # --model replaces the list
    assert eval_config() == EvalConfig()

    from s2o_platform.evaluation.runner import EvalRun

    options = EvalRun.from_config(cfg, "store", "report")
    assert (options.data, options.out, options.models, options.references, options.limit) == (
        "store",
        "report",
        ["a=runs/a/bundle@lcm:1,2"],
        False,
        8,
    )
    assert options.to_config() == cfg


def test_eval_refuses_unknown_keys(tmp_path):
    bad = write_yaml(tmp_path / "bad.yaml", {"model": ["a=b"]})  # the key is `models`
    assert_refused(
        ["eval", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--config", str(bad)],
        "unknown key 'model'",
        str(bad),
    )
    assert_refused(
        [
            "eval",
            "--data",
            str(tmp_path),
            "--out",
            str(tmp_path / "r"),
            "--model",
            "a=b",
            "--set",
            "repeat=2",
        ],
        "unknown key 'repeat'",
        "--set repeat=2",
    )
    assert not (tmp_path / "r").exists()


def test_eval_saves_its_resolved_config_with_the_report(tmp_path, monkeypatch):
    """evaluate() writes REPORT_DIR/config.yaml beside the report (the evaluation itself stubbed: its end-to-end
    runs are in tests/evaluation/test_eval_e2e.py), and that file is a valid --config for the next run."""
    from s2o_platform.evaluation import report as report_module
    from s2o_platform.evaluation import runner as runner_module
    from s2o_platform.evaluation.report import Report

    def fake_write_report(report, out, samples=None):
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text("{}")
        return [out / "report.json"]

    monkeypatch.setattr(
        runner_module, "run_evaluation", lambda options, log: (Report(rows=[], context={}), {})
    )
    monkeypatch.setattr(report_module, "write_report", fake_write_report)
    cfg = eval_config(None, ["models=['t=teacher@ddim:50']", "limit=8"], repeats=1, speed_references=False)
    out = tmp_path / "report"
    _, written = runner_module.evaluate(
        runner_module.EvalRun.from_config(cfg, "store", str(out)), log=lambda m: None
    )
    assert out / "config.yaml" in written
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["models"] == ["t=teacher@ddim:50"] and saved["limit"] == 8 and saved["repeats"] == 1
    assert saved["speed_references"] is False
    assert load_config(EvalConfig, out / "config.yaml") == cfg


# -- serve ------------------------------------------------------------------------------------------------


def test_serve_config_args_then_set_then_explicit_options(bundles, tmp_path):
    from s2o_platform.serving.settings import DEFAULT_CONFIG

    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    args = raw["applications"][0]["args"]
    args.update(
        model=str(tmp_path / "not-this-one"), dtype="fp16", max_request_model_s=25, max_image_side=512
    )
    path = write_yaml(tmp_path / "serve.yaml", raw)
    plan, used = serve_plan(
        path,
        model=bundles["student"],
        dtype="fp32",
        set_=["dtype=bf16", "max_request_model_s=30", "compile=off", f"model={bundles['gan']}"],
    )
    s = plan.settings
    assert used == path
    assert s.model == bundles["student"] and s.dtype == "fp32"  # explicit options win over --set
    assert s.max_request_model_s == 30 and s.compile == "off"  # --set over the file's args (`off` unquoted)
    assert s.max_image_side == 512 and s.max_body_mb == args["max_body_mb"]  # the file's args
    plan, _ = serve_plan(path, set_=[f"model={bundles['gan']}"])
    assert plan.settings.model == bundles["gan"] and plan.settings.dtype == "fp16"


def test_serve_refuses_unknown_keys_before_starting(tmp_path):
    assert_refused(
        ["serve", "--set", "max_request_s=30"], "unknown key 'max_request_s'", "--set max_request_s=30"
    )
    assert_refused(["serve", "--set", "dtype=fp8"], "dtype", "fp8")


# -- demo -------------------------------------------------------------------------------------------------


def test_demo_preset_then_file_then_set(tmp_path):
    from s2o_platform.demo import PRESETS, Demo, DemoPreset

    path = write_yaml(tmp_path / "demo.yaml", {"teacher_steps": 20, "pairs": 128, "student_steps": [1, 4]})
    preset = demo_preset("smoke", path, ["teacher_steps=30", "student_steps=[1,2]"])
    smoke = PRESETS["smoke"]
    assert (preset.name, preset.pairs, preset.teacher_steps, preset.student_steps) == (
        "smoke",
        128,
        30,
        (1, 2),
    )
    assert (preset.batch_size, preset.gan_steps, preset.speed_references) == (
        smoke.batch_size,
        smoke.gan_steps,
        False,
    )
    assert demo_preset("tiny") == PRESETS["tiny"]
    out = tmp_path / "demo"
    Demo(out, preset, log=lambda m: None)  # writes OUT/config.yaml; nothing runs until .run()
    assert load_config(DemoPreset, out / "config.yaml") == preset


def test_demo_refuses_unknown_keys_before_any_stage(tmp_path):
    bad = write_yaml(tmp_path / "bad.yaml", {"teacher_step": 5})
    assert_refused(
        ["demo", "--out", str(tmp_path / "d"), "--config", str(bad)], "unknown key 'teacher_step'", str(bad)
    )
    assert_refused(
        ["demo", "--out", str(tmp_path / "d"), "--preset", "smoke", "--set", "student_steps=[9]"],
        "student_steps",
    )
    assert not (tmp_path / "d").exists()


# -- one real translate run -------------------------------------------------------------------------------


@pytest.mark.ray
def test_translate_saves_its_resolved_config_in_dest(ray_cluster, bundles, tmp_path):
    from s2o_platform.data.synth_writer import write_scene_geotiffs
    from s2o_platform.translate.pipeline import CONFIG_FILE

    write_scene_geotiffs(str(tmp_path / "archive"), 1, 64, seed=2)
    path = write_yaml(
        tmp_path / "translate.yaml", {"model": bundles["gan"], "batch_size": 4, "seed": 3, "overlap": 0}
    )
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        [
            "translate",
            str(tmp_path / "archive" / "sar"),
            "--out",
            str(out),
            "--config",
            str(path),
            "--set",
            "seed=4",
            "--set",
            "batch_size=8",
            "--batch-size",
            "16",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "1 scene(s) translated" in result.output
    saved = load_config(TranslateConfig, out / CONFIG_FILE)
    assert (saved.model, saved.batch_size, saved.seed, saved.overlap, saved.steps) == (
        bundles["gan"],
        16,
        4,
        0,
        None,
    )
    assert yaml.safe_load((out / CONFIG_FILE).read_text())["sar_scale"] == "auto"
