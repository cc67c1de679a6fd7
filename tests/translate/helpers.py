"""Helpers shared by the `s2o translate` tests: run the CLI in process or held at a known point in a child
process, check an output against its scene."""

import sys
import time
from pathlib import Path

import numpy as np
import rasterio
from typer.testing import CliRunner

from s2o_platform.cli import app

runner = CliRunner()


def valid_mask(path) -> np.ndarray:
    with rasterio.open(path) as ds:
        band = ds.read(1)
        return (ds.read_masks(1) > 0) & (np.isfinite(band) if band.dtype.kind == "f" else True)


def assert_same_grid_and_nodata(source, output):
    from rio_cogeo.cogeo import cog_validate

    with rasterio.open(source) as src, rasterio.open(output) as out:
        assert (out.crs, out.transform, out.width, out.height) == (
            src.crs,
            src.transform,
            src.width,
            src.height,
        )
        assert out.count == 3 and out.dtypes[0] == "uint8" and out.nodata == 0
    np.testing.assert_array_equal(valid_mask(output), valid_mask(source))
    valid, errors, _ = cog_validate(str(output))
    assert valid, errors


def translate(*args):
    return runner.invoke(app, ["translate", *map(str, args), "--no-progress"])


#: `s2o translate` in a child process, held once its manifest has recorded the first scene as done: the child
#: writes the HELD file, then waits until the RELEASE file exists. A test kills it or lets it go at that known
#: point, instead of guessing from timing whether the run is still going.
_HELD_TRANSLATE = """
import sys, time
from pathlib import Path
from s2o_platform.translate.manifest import Manifest
held, release = Path(sys.argv.pop(1)), Path(sys.argv.pop(1))
record = Manifest.record
def hold_after_first_done(self, scene_record):
    record(self, scene_record)
    if scene_record.status == "done" and not held.exists():
        held.write_text(scene_record.scene)
        while not release.exists():
            time.sleep(0.05)
Manifest.record = hold_after_first_done
from s2o_platform.cli import main
sys.argv[0] = "s2o"
main()
"""


def held_translate_command(held: Path, release: Path, source, bundle, out, cluster, *extra) -> list[str]:
    """The command line of `s2o translate SOURCE --model BUNDLE --out OUT` on `cluster`, held after its first
    done scene (see _HELD_TRANSLATE)."""
    return [
        sys.executable,
        "-c",
        _HELD_TRANSLATE,
        str(held),
        str(release),
        "translate",
        str(source),
        "--model",
        str(bundle),
        "--out",
        str(out),
        "--no-progress",
        "--address",
        cluster.get_runtime_context().gcs_address,
        *map(str, extra),
    ]


def wait_for(condition, what: str, proc=None, log: Path | None = None, timeout: float = 300) -> None:
    """Wait until `condition()` holds; fail naming `what` (and the child's log, if it ended) otherwise."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the run ended before {what}:\n" + (log.read_text()[-3000:] if log else ""))
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout:.0f} s")
        time.sleep(0.05)


def wait_for_free_cpus(ray, cpus: float) -> None:
    """A killed driver's actors hold their CPUs until Ray reaps them: wait until `cpus` are free again."""
    wait_for(lambda: ray.available_resources().get("CPU", 0) >= cpus, "release of the killed run's CPUs")
