"""`s2o demo` at its smallest setting, end to end on the shared local cluster: every stage runs and
leaves its artefacts, the summary names them, and a second run reuses them instead of redoing them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import rasterio
from PIL import Image

from s2o_platform.demo import PRESETS, Demo, DemoError, choose_preset, summary_text

pytestmark = pytest.mark.ray


def test_presets_and_auto_choice():
    assert choose_preset("tiny").name == "tiny" and not PRESETS["tiny"].use_gpu
    assert PRESETS["gpu-small"].use_gpu
    import torch

    assert choose_preset(None).name == ("gpu-small" if torch.cuda.is_available() else "tiny")
    with pytest.raises(DemoError, match="unknown preset 'huge'"):
        choose_preset("huge")


def test_demo_runs_every_stage_and_reuses_them(ray_cluster, tmp_path):
    logs: list[str] = []
    summary = Demo(tmp_path / "demo", PRESETS["smoke"], log=logs.append).run()
    out = Path(summary["out"])
    for key in ("teacher", "student", "ablation", "pix2pix"):
        assert (Path(summary[key]["bundle"]) / "s2o_bundle.json").is_file(), key
    labels = [row["label"] for row in summary["report"]["rows"]]
    assert labels == ["teacher ddim-50", "acd lcm-1", "ablation lcm-1", "pix2pix (1 step)"]
    student = next(r for r in summary["report"]["rows"] if r["label"] == "acd lcm-1")
    assert student["error"] is None and student["psnr"] > 0 and student["speedup_vs_ddim"] > 1
    for name in ("report.json", "report.md", "tradeoff.png", "samples.png"):
        assert (out / "report" / name).is_file()
    [cog] = summary["translate"]["outputs"]
    with rasterio.open(cog) as ds, rasterio.open(next((out / "scenes" / "sar").rglob("*.tif"))) as src:
        assert (ds.count, ds.crs, ds.transform, ds.width) == (3, src.crs, src.transform, src.width)
    answers = summary["serve"]["answers"]
    assert answers and all(a["status"] == 200 for a in answers)
    with rasterio.open(answers[0]["output"]) as served:  # the GeoTIFF request keeps its georeference
        assert served.crs is not None and served.count == 3
    if summary["real_store"]:
        assert len(answers) == 2 and Image.open(answers[1]["output"]).size == (256, 256)
    text = (out / "summary.md").read_text()
    assert summary_text(summary) in text and "acd lcm-1" in text and cog in text
    assert json.loads((out / "summary.json").read_text())["preset"]["name"] == "smoke"
    assert any("Ray Serve shut down" in line for line in logs)

    again: list[str] = []
    second = Demo(tmp_path / "demo", PRESETS["smoke"], log=again.append).run()
    assert sum("reusing it" in line for line in again) == len(list((out / "stages").glob("*.json")))
    assert second["student"]["bundle"] == summary["student"]["bundle"]
    assert second["seconds"] < summary["seconds"] / 3
