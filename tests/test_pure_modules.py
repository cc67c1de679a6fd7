"""The math stays pure: these modules import no Ray, DeepSpeed, rasterio or web framework."""

import ast
from pathlib import Path

import pytest

from tests.fixtures import REPO_ROOT

PACKAGE = REPO_ROOT / "s2o_platform"
PURE_MODULES = [
    "data/normalization.py",
    "data/splits.py",
    "data/synth.py",
    "geo/tiling.py",
    "geo/blending.py",
    "serving/coalescing.py",
    "train/data_order.py",
    "train/schedule.py",
    "train/progress.py",
    "config.py",
    "errors.py",
    "evaluation/uncertainty.py",
]
FORBIDDEN = {"ray", "deepspeed", "rasterio", "fastapi", "starlette", "boto3", "pyarrow"}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_module_imports(module):
    assert not imported_roots(PACKAGE / module) & FORBIDDEN
