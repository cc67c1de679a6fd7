import pytest

from s2o_platform.config import (
    ConfigError,
    IngestConfig,
    SynthConfig,
    dump_config,
    load_config,
    parse_override,
)
from tests.fixtures import REPO_ROOT


def test_defaults_without_file():
    cfg = load_config(IngestConfig)
    assert cfg.tile_size == 256 and cfg.split.test_fraction == 0.1


def test_file_then_overrides(tmp_path):
    path = tmp_path / "ingest.yaml"
    path.write_text("tile_size: 64\nsplit:\n  seed: 3\n")
    cfg = load_config(IngestConfig, path, ["split.seed=5", "clip_db=[-30, 5]"])
    assert cfg.tile_size == 64 and cfg.split.seed == 5 and cfg.clip_db == (-30.0, 5.0)


def test_unknown_key_names_key_value_and_source(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("tile_sise: 64\n")
    with pytest.raises(ConfigError) as err:
        load_config(IngestConfig, path)
    assert "tile_sise" in str(err.value) and "64" in str(err.value) and str(path) in str(err.value)


def test_unknown_override_names_set():
    with pytest.raises(ConfigError, match=r"unknown key 'split.sed'.*--set split.sed=4"):
        load_config(IngestConfig, None, ["split.sed=4"])


def test_wrong_type_names_key_value_and_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("tile_size: big\n")
    with pytest.raises(ConfigError, match=r"tile_size.*'big'.*bad.yaml"):
        load_config(IngestConfig, path)


def test_constraint_violation_from_override():
    with pytest.raises(ConfigError, match=r"split.test_fraction.*1.5.*--set"):
        load_config(IngestConfig, None, ["split.test_fraction=1.5"])


def test_clip_order_is_checked():
    with pytest.raises(ConfigError, match="clip_db"):
        load_config(IngestConfig, None, ["clip_db=[0, -25]"])


def test_override_syntax():
    assert parse_override("a.b=3") == (["a", "b"], 3)
    assert parse_override("x=true") == (["x"], True)
    assert parse_override("x=hello world") == (["x"], "hello world")
    with pytest.raises(ConfigError, match="dotted.key=value"):
        parse_override("novalue")
    with pytest.raises(ConfigError, match="empty key"):
        parse_override("a..b=1")


def test_override_into_scalar_is_an_error():
    with pytest.raises(ConfigError, match=r"tile_size.*--set tile_size.x=1"):
        load_config(IngestConfig, None, ["tile_size.x=1"])
    with pytest.raises(ConfigError, match="is a value, not a section"):
        load_config(IngestConfig, None, ["tile_size=3", "tile_size.x=1"])


def test_distill_default_steps_lie_within_the_sampling_range():
    """distill.default_steps is one of the student's 1..distill.max_sampling_steps (8 by default, METHOD.md section 5)."""
    from s2o_platform.config import DistillConfig

    cfg = load_config(DistillConfig)
    assert cfg.distill.max_sampling_steps == 8 and cfg.distill.default_steps <= 8
    assert (
        load_config(
            DistillConfig, None, ["distill.max_sampling_steps=16", "distill.default_steps=12"]
        ).distill.default_steps
        == 12
    )
    assert (
        load_config(
            DistillConfig, None, ["distill.max_sampling_steps=2", "distill.default_steps=2"]
        ).distill.max_sampling_steps
        == 2
    )
    with pytest.raises(
        ConfigError, match=r"default_steps \(9\) must be at most max_sampling_steps \(8\).*--set"
    ):
        load_config(DistillConfig, None, ["distill.default_steps=9"])
    with pytest.raises(ConfigError, match=r"default_steps \(4\) must be at most max_sampling_steps \(2\)"):
        load_config(DistillConfig, None, ["distill.max_sampling_steps=2"])
    with pytest.raises(ConfigError, match=r"distill.max_sampling_steps.*less than or equal to 50"):
        load_config(DistillConfig, None, ["distill.max_sampling_steps=64"])


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(IngestConfig, tmp_path / "nope.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(IngestConfig, bad)


def test_dump_roundtrip(tmp_path):
    cfg = load_config(SynthConfig, None, ["pairs=10"])
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(SynthConfig, path) == cfg


@pytest.mark.parametrize("preset", ["tiny", "paper"])
@pytest.mark.parametrize("stage,model", [("ingest", IngestConfig), ("synth", SynthConfig)])
def test_presets_load(preset, stage, model):
    path = REPO_ROOT / "configs" / preset / f"{stage}.yaml"
    load_config(model, path)


@pytest.mark.parametrize("stage", ["teacher", "distill", "gan"])
def test_paper_presets_state_their_effective_batch_truthfully(stage):
    """Each paper preset's comment states its effective batch (per-worker x accumulation x workers): it must be
    what the config computes, and the distillation's must be the published 16."""
    import re

    from s2o_platform.config import DistillConfig, GanConfig, TeacherConfig
    from s2o_platform.train.deepspeed_config import effective_batch

    path = REPO_ROOT / "configs" / "paper" / f"{stage}.yaml"
    model = {"teacher": TeacherConfig, "distill": DistillConfig, "gan": GanConfig}[stage]
    cfg = load_config(model, path)
    stated = [int(n) for n in re.findall(r"[Ee]ffective batch = [^=\n]*= (\d+)", path.read_text())]
    assert stated and set(stated) == {effective_batch(cfg)}, (stated, effective_batch(cfg))
    if stage == "distill":
        assert effective_batch(cfg) == 16
