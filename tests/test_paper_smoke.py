"""The paper scale end to end through the real CLI on this CPU (benchmarks/paper_smoke.py): 256 px real
SEN1-2 pairs, the configs/paper/ networks (teacher ~114 M parameters), every training stage for 2
optimizer steps in bf16, eval, translation of a real Sentinel-1 GeoTIFF and one HTTP request to
`s2o serve`, all with the student in bf16. About 6 minutes on the 2-core CI machine."""

import json
import subprocess
import sys

import pytest

from tests.fixtures import REPO_ROOT

pytestmark = pytest.mark.ray
REPO = REPO_ROOT


def test_paper_scale_pipeline_runs_in_bf16(real_data, ray_cluster, tmp_path):
    out = tmp_path / "smoke"
    # On the suite's shared Ray cluster (each command connects with --address instead of starting its own);
    # `s2o serve` still starts and stops its own.
    address = ray_cluster.get_runtime_context().gcs_address
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "paper_smoke.py"),
            "--out",
            str(out),
            "--real",
            str(real_data),
            "--steps",
            "2",
            "--port",
            "0",
            "--address",
            address,
        ],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    results = json.loads((out / "smoke.json").read_text())["results"]
    assert [r["stage"] for r in results] == [
        "ingest",
        "train teacher",
        "train distill",
        "train gan",
        "eval",
        "translate",
        "serve",
    ]
    assert all(r["rc"] == 0 for r in results)
    for stage in ("teacher", "distill", "gan"):
        card = json.loads((out / stage / "bundle" / "s2o_bundle.json").read_text())["model_card"]
        assert card["trained_steps"] == 2 and card["precision"] == "bf16", card
    report = json.loads((out / "eval" / "report.json").read_text())
    assert report["dtype"] == "bf16"
    translated = list((out / "translated").glob("*.tif"))
    assert len(translated) == 1
