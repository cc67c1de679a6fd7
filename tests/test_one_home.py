"""One home per rule: whether a bundle fits a store (bundle.check_fits), how model actors are placed on Ray Data
(devices.inference_actors) and Ray Data settings scoped to the work that needs them
(data/ray_context.scoped_data_context). Ray-free but for the one test of what a dataset captures."""

from __future__ import annotations

from dataclasses import replace

import pytest

from s2o_platform.bundle import BundleError, BundleMetadata, SamplerSpec, check_fits
from s2o_platform.data.normalization import OpticalNormalization, SarNormalization
from s2o_platform.data.store import StoreMetadata, write_metadata
from s2o_platform.devices import inference_actors

STORE = StoreMetadata(tile_size=16, sar_channels=1, sar_normalization=SarNormalization())
OTHER_OPTICAL = OpticalNormalization(display_max_reflectance=0.4)


def bundle_for(store: StoreMetadata, tile_size: int | None = None) -> BundleMetadata:
    return BundleMetadata.for_store(
        "student", store, tile_size or store.tile_size, SamplerSpec("lcm", 4, ["lcm"]), {}
    )


# -- bundle.check_fits ------------------------------------------------------------------------------------


def test_a_bundle_made_for_the_store_fits():
    check_fits(bundle_for(STORE), STORE, "runs/b", "stores/s")


@pytest.mark.parametrize(
    "field, label, other",
    [
        ("tile_size", "tile size", 32),
        ("sar_channels", "SAR channels", 2),
        ("sar_normalization", "SAR normalisation", SarNormalization(clip_db=(-30.0, 5.0))),
        ("optical_normalization", "optical normalisation", OTHER_OPTICAL),
    ],
)
def test_each_field_that_differs_is_named_with_both_paths(field, label, other):
    store = replace(STORE, **{field: other})
    with pytest.raises(BundleError) as err:
        check_fits(bundle_for(STORE), store, "runs/b", "stores/s")
    message = str(err.value)
    assert "runs/b" in message and "stores/s" in message
    assert label in message and field in message
    for value in (getattr(STORE, field), other):
        shown = value.to_dict() if hasattr(value, "to_dict") else value
        assert str(shown) in message
    assert message.count(" but the store ") == 1  # only the field that differs


def test_every_differing_field_is_named_at_once():
    store = replace(STORE, tile_size=32, optical_normalization=OTHER_OPTICAL)
    with pytest.raises(
        BundleError, match="tile size 16 but the store s has 32 .*optical normalisation"
    ) as err:
        check_fits(bundle_for(STORE), store, "b", "s", role="teacher", advice="distil on the teacher's store")
    assert str(err.value).startswith("the teacher b ") and str(err.value).endswith(
        "Distil on the teacher's store"
    )
    assert "SAR" not in str(err.value)


@pytest.fixture(scope="module")
def small_bundles(tmp_path_factory):
    from tests.fixtures import write_smallest_bundles

    return write_smallest_bundles(tmp_path_factory.mktemp("one_home"), 16)


def store_dir(tmp_path, metadata: StoreMetadata) -> str:
    path = tmp_path / "store"
    path.mkdir()
    write_metadata(str(path), metadata)
    return str(path)


def test_callers_refuse_a_store_normalised_otherwise_in_their_own_error(small_bundles, tmp_path):
    """Evaluation, translating a store and distilling from a teacher all use the one rule, optical
    normalisation included, each raising its own error type."""
    from s2o_platform.evaluation.runner import EvalError, EvalRun, plan
    from s2o_platform.train.launcher import TrainingSetupError, check_teacher_bundle
    from s2o_platform.translate.pipeline import TranslateError, TranslateRun, run_translate_store

    other = replace(STORE, optical_normalization=OTHER_OPTICAL)
    data = store_dir(tmp_path, other)
    with pytest.raises(EvalError, match="optical normalisation"):
        plan(EvalRun(data=data, models=[f"s={small_bundles['student']}@lcm:1"], out=str(tmp_path / "report")))
    with pytest.raises(TranslateError, match="optical normalisation"):
        run_translate_store(
            TranslateRun(source=data, model=small_bundles["student"], dest=str(tmp_path / "out")),
            log=lambda m: None,
        )
    with pytest.raises(
        TrainingSetupError, match=f"the teacher {small_bundles['teacher']} .*optical normalisation"
    ):
        check_teacher_bundle(small_bundles["teacher"], other, data, None)
    check_teacher_bundle(small_bundles["teacher"], STORE, data, None)  # the store it was made for
    assert not (tmp_path / "out").exists() and not (tmp_path / "report").exists()


# -- devices.inference_actors -----------------------------------------------------------------------------


def test_actors_take_a_gpu_each_where_the_cluster_has_gpus():
    plan = inference_actors(3, cluster_gpus=2)
    assert (plan.device, plan.actors, plan.gpus_per_actor, plan.cpu_share) == ("cuda", 3, 1, 3)
    assert inference_actors(1, cluster_gpus=1, device="cpu").device == "cuda"  # as before: GPUs win


def test_actors_run_on_the_cpu_without_gpus():
    assert (inference_actors(2, 0).device, inference_actors(2, 0).gpus_per_actor) == ("cpu", 0)
    assert inference_actors(2, 0, device="cuda").device == "cuda"  # refused in the actor (resolve_device)
    assert inference_actors(0, 0).actors == 1


def test_cpu_actors_share_the_cores_of_their_machine_only():
    """Ray Data spreads the pool over the nodes: N actors on N machines get a machine's cores each."""
    assert inference_actors(4, 0).cpu_share == 4  # one machine: its cores among all four
    assert inference_actors(2, 0, cpu_hosts=2).cpu_share == 1  # a machine each
    assert inference_actors(3, 0, cpu_hosts=2).cpu_share == 2  # one machine holds two
    assert inference_actors(2, 0, cpu_hosts=5).cpu_share == 1
    assert inference_actors(2, 0, cpu_hosts=0).cpu_share == 2  # (an unknown count: one machine)


def test_actor_pool_arguments():
    import ray.data

    args = inference_actors(4, 1).map_batches_args()
    assert set(args) == {"compute", "num_gpus"} and args["num_gpus"] == 1
    assert isinstance(args["compute"], ray.data.ActorPoolStrategy)
    assert (args["compute"].min_size, args["compute"].max_size) == (4, 4)  # the actors asked for, all of them


# -- data.ray_context.scoped_data_context -----------------------------------------------------------------


def test_settings_hold_in_the_block_and_are_restored_after_it():
    from ray.data import DataContext

    from s2o_platform.data.ray_context import scoped_data_context

    before = DataContext.get_current()
    bars, order = before.enable_progress_bars, before.execution_options.preserve_order
    with scoped_data_context(preserve_order=not order, enable_progress_bars=not bars) as scoped:
        current = DataContext.get_current()
        assert current is scoped and current is not before
        assert current.enable_progress_bars is (not bars) and current.execution_options.preserve_order is (
            not order
        )
        current.target_max_block_size = 12345  # a change made in the block goes with it
    after = DataContext.get_current()
    assert after is before
    assert (after.enable_progress_bars, after.execution_options.preserve_order) == (bars, order)
    assert after.target_max_block_size != 12345


def test_settings_are_restored_after_an_error():
    from ray.data import DataContext

    from s2o_platform.data.ray_context import scoped_data_context

    before = DataContext.get_current()
    bars = before.enable_progress_bars
    with pytest.raises(RuntimeError, match="boom"), scoped_data_context(enable_progress_bars=not bars):
        raise RuntimeError("boom")
    assert DataContext.get_current() is before and before.enable_progress_bars is bars


def test_an_unknown_setting_is_refused_before_anything_changes():
    from ray.data import DataContext

    from s2o_platform.data.ray_context import scoped_data_context

    before = DataContext.get_current()
    with (
        pytest.raises(AttributeError, match="enable_progress_barz"),
        scoped_data_context(enable_progress_barz=False),
    ):
        pass
    assert DataContext.get_current() is before


def test_a_dataset_keeps_the_settings_it_was_created_under(ray_cluster):
    """Ray Data copies the current context into a dataset when its source is created: the settings of the block
    stay with a dataset made in it (and its transformations), and do not reach one made after it."""
    import ray.data
    from ray.data import DataContext

    from s2o_platform.data.ray_context import scoped_data_context

    bars = DataContext.get_current().enable_progress_bars
    with scoped_data_context(preserve_order=True, enable_progress_bars=not bars):
        inside = ray.data.range(8)
    mapped = inside.map_batches(lambda b: b)
    later = ray.data.range(8)
    assert (
        inside.context.enable_progress_bars is (not bars) and inside.context.execution_options.preserve_order
    )
    assert mapped.context is inside.context
    assert later.context.enable_progress_bars is bars


# -- the SAR scale resolver and the nodata fill ---------------------------------------------------------------


def _calls_outside(names: set[str], allowed: set[str]) -> list[str]:
    """Calls of functions or methods named in `names` in package modules other than `allowed`."""
    import ast

    from tests.fixtures import REPO_ROOT

    found = []
    for path in sorted((REPO_ROOT / "s2o_platform").rglob("*.py")):
        relative = path.relative_to(REPO_ROOT).as_posix()
        if relative in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
                if name in names:
                    found.append(f"{relative}:{node.lineno} calls {name}")
    return found


def test_sar_scale_is_resolved_in_one_place():
    # ingest, archive translation, serving and the Python API all go through SarPixels.resolve_scale
    assert _calls_outside({"detect_sar_scale", "detect_scale"}, {"s2o_platform/data/normalization.py"}) == []


def test_sar_pixels_reach_the_model_range_through_one_fill_rule():
    # model_pixels owns "nodata, NaN and inf -> -1"; only the synthetic writer (dB, no nodata) converts directly
    allowed = {"s2o_platform/data/normalization.py", "s2o_platform/data/synth_writer.py"}
    assert _calls_outside({"to_model"}, allowed) == []
