from s2o_platform.data.sources import discover, discover_all, scene_of
from tests.fixtures import write_paired_folders, write_sen12


def test_scene_of_sen12_names():
    assert scene_of("ROIs1158_spring_s1_90_p33") == "ROIs1158_spring_90"
    assert scene_of("ROIs1158_spring_90_p33") == "ROIs1158_spring_90"
    assert scene_of("my_tile") == "my_tile"


def test_paired_folders_and_orphans(tmp_path):
    write_paired_folders(tmp_path, n=3)
    (tmp_path / "sar" / "lonely.png").write_bytes(b"x")
    (tmp_path / "optical" / "alone.png").write_bytes(b"x")
    pairs, skipped = discover(str(tmp_path))
    assert [p.sar.rsplit("/", 1)[-1] for p in pairs] == ["pair_0.png", "pair_1.png", "pair_2.png"]
    assert all(p.source_kind == "folders" for p in pairs)
    reasons = {s.path.rsplit("/", 1)[-1]: s.reason for s in skipped}
    assert reasons == {
        "lonely.png": "SAR file without its optical partner",
        "alone.png": "optical file without its SAR partner",
    }


def test_sen12_layout(tmp_path):
    write_sen12(tmp_path, {"ROIs1158_spring_90": 2, "ROIs1868_summer_59": 1})
    (tmp_path / "ROIs1158_spring" / "s1_90" / "ROIs1158_spring_s1_90_p77.png").write_bytes(b"x")
    pairs, skipped = discover(str(tmp_path))
    assert sorted({p.scene_id for p in pairs}) == ["ROIs1158_spring_90", "ROIs1868_summer_59"]
    assert len(pairs) == 3
    assert len(skipped) == 1 and "p77" in skipped[0].path and "optical partner" in skipped[0].reason


def test_csv_two_lists_and_columns(tmp_path):
    write_paired_folders(tmp_path, n=3)
    (tmp_path / "sar.csv").write_text("sar/pair_0.png\nsar/pair_1.png\nsar/pair_2.png\n")
    (tmp_path / "opt.csv").write_text("optical/pair_0.png\noptical/pair_1.png\n")
    pairs, skipped = discover_all([str(tmp_path / "sar.csv"), str(tmp_path / "opt.csv")])
    assert len(pairs) == 2 and pairs[0].optical.endswith("optical/pair_0.png")
    assert len(skipped) == 1 and "pair_2" in skipped[0].path
    (tmp_path / "pairs.csv").write_text(
        "sar,optical\nsar/pair_0.png,optical/pair_0.png\n,optical/pair_1.png\n"
    )
    pairs, skipped = discover_all([str(tmp_path / "pairs.csv")])
    assert len(pairs) == 1 and pairs[0].source_kind == "csv"
    assert len(skipped) == 1 and "both" in skipped[0].reason


def test_unreadable_and_unrecognised(tmp_path):
    pairs, skipped = discover(str(tmp_path / "does-not-exist"))
    assert not pairs and "unreadable source" in skipped[0].reason
    (tmp_path / "empty").mkdir()
    pairs, skipped = discover(str(tmp_path / "empty"))
    assert not pairs and "unrecognised layout" in skipped[0].reason
    pairs, skipped = discover("ftp://example/x")
    assert not pairs and "unsupported URI scheme" in skipped[0].reason
