from collections import Counter

import pytest

from s2o_platform.data.splits import assign_splits, scene_uniform
from s2o_platform.errors import SettingsError


def test_deterministic_and_order_independent():
    scenes = [f"scene_{i}" for i in range(50)]
    a = assign_splits(scenes, 0.2, 0.1, seed=7)
    b = assign_splits(list(reversed(scenes)), 0.2, 0.1, seed=7)
    assert a == b


def test_quotas_follow_fractions():
    counts = Counter(assign_splits([f"s{i}" for i in range(100)], 0.2, 0.1, seed=0).values())
    assert counts == {"train": 70, "test": 20, "val": 10}


def test_seed_changes_assignment():
    scenes = [f"s{i}" for i in range(40)]
    assert assign_splits(scenes, 0.25, 0.0, 1) != assign_splits(scenes, 0.25, 0.0, 2)


def test_small_sets_keep_a_training_scene():
    assert sorted(assign_splits(["a"], 0.1, 0.1, 0).values()) == ["train"]
    assert sorted(assign_splits(["a", "b"], 0.1, 0.1, 0).values()) == ["test", "train"]
    assert sorted(assign_splits(["a", "b", "c"], 0.1, 0.1, 0).values()) == ["test", "train", "val"]


def test_existing_scenes_keep_their_split():
    existing = {"a": "test", "b": "train"}
    out = assign_splits(["a", "b", "c", "d"], 0.5, 0.0, 0, existing=existing)
    assert out["a"] == "test" and out["b"] == "train"
    assert set(out) == {"a", "b", "c", "d"}


def test_uniform_in_unit_interval_and_stable():
    u = scene_uniform("ROIs1158_spring_90", 0)
    assert 0 <= u < 1 and u == scene_uniform("ROIs1158_spring_90", 0)


@pytest.mark.parametrize("test,val", [(1.0, 0.0), (0.6, 0.5), (-0.1, 0.1)])
def test_bad_fractions(test, val):
    with pytest.raises(SettingsError, match="fraction") as err:  # an S2OError: the CLI prints it, exit 2
        assign_splits(["a"], test, val, 0)
    assert err.value.exit_code == 2
