"""The package works installed, not only from a checkout.

The presets and the Serve config ship inside the package (package data), and that is what `s2o demo`
and `s2o serve` read by default. The repository's top-level configs/ and serve/config.yaml are the
SOURCE OF TRUTH (the files users, docs, jobs/ and k8s/ read and edit); s2o_platform/presets/ and
s2o_platform/serving/config.yaml are byte-identical copies, checked here.

The end-to-end test builds the sdist and the wheel (`python -m build`, the wheel built from the sdist),
installs only the wheel into a fresh venv outside the checkout, and runs `s2o` from another directory:
--help, `python -m s2o_platform.cli serve --help`, the packaged defaults, a Ray worker's import, and
`s2o demo --preset smoke`. Dependencies are not reinstalled: a .pth file in the new venv lists this
venv's site-packages as a plain path (that does not run this venv's editable-install hook), so
s2o_platform itself can only come from the wheel; the test asserts it does.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import time
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from s2o_platform.config import PRESETS_DIR, TeacherConfig, load_config
from s2o_platform.serving.settings import DEFAULT_CONFIG
from tests.fixtures import REPO_ROOT

ROOT = REPO_ROOT
PACKAGE_DATA = sorted(str(p.relative_to(ROOT)) for p in [*PRESETS_DIR.rglob("*.yaml"), DEFAULT_CONFIG])
#: what a clean clone would not have (see .gitignore), left out of the copy the dists are built from
NOT_SOURCES = {
    ".git",
    ".venv",
    "runs",
    "build",
    "dist",
    "demo",
    "s2o-demo",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
}


# ------------------------------------------------------------------------------------------------
# The packaged copies and the defaults that read them (fast)
# ------------------------------------------------------------------------------------------------


def test_packaged_copies_match_the_source_of_truth():
    """configs/ and serve/config.yaml are the source of truth; the copies in the package must equal them."""
    problems = []
    pairs = [(ROOT / "serve" / "config.yaml", DEFAULT_CONFIG)]
    truth = {p.relative_to(ROOT / "configs") for p in (ROOT / "configs").rglob("*.yaml")}
    shipped = {p.relative_to(PRESETS_DIR) for p in PRESETS_DIR.rglob("*.yaml")}
    assert truth, "no presets in configs/"
    pairs += [(ROOT / "configs" / rel, PRESETS_DIR / rel) for rel in sorted(truth)]
    for rel in sorted(shipped - truth):
        problems.append(
            f"{(PRESETS_DIR / rel).relative_to(ROOT)} has no source configs/{rel}: "
            f"rm {(PRESETS_DIR / rel).relative_to(ROOT)}"
        )
    for source, copy in pairs:
        if not copy.is_file() or copy.read_bytes() != source.read_bytes():
            problems.append(
                f"{copy.relative_to(ROOT)} differs from {source.relative_to(ROOT)} (the source of truth): "
                f"mkdir -p {copy.parent.relative_to(ROOT)} && cp {source.relative_to(ROOT)} {copy.relative_to(ROOT)}"
            )
    assert not problems, (
        "the package's copies of the presets / Serve config have drifted from the top-level "
        "files, which are the source of truth; run:\n  " + "\n  ".join(problems)
    )


def test_packaged_presets_are_the_default_outside_a_checkout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ here
    assert load_config(TeacherConfig, "configs/tiny/teacher.yaml") == load_config(
        TeacherConfig, PRESETS_DIR / "tiny/teacher.yaml"
    )
    # a file the user gives always wins over the packaged preset of the same name
    from s2o_platform.config import ConfigError

    (tmp_path / "configs" / "tiny").mkdir(parents=True)
    mine = (PRESETS_DIR / "tiny" / "teacher.yaml").read_text().replace("max_steps: 500", "max_steps: 7")
    (tmp_path / "configs" / "tiny" / "teacher.yaml").write_text(mine)
    assert load_config(TeacherConfig, "configs/tiny/teacher.yaml").train.max_steps == 7
    with pytest.raises(ConfigError, match="config file not found: configs/tiny/nothere.yaml"):
        load_config(TeacherConfig, "configs/tiny/nothere.yaml")
    with pytest.raises(ConfigError, match="config file not found: elsewhere/tiny/teacher.yaml"):
        load_config(
            TeacherConfig, "elsewhere/tiny/teacher.yaml"
        )  # only configs/<preset>/<file> has a fallback


def test_serve_default_config_is_a_checkouts_copy_else_the_packaged_one(tmp_path, monkeypatch):
    from s2o_platform.cli import app

    monkeypatch.chdir(tmp_path)
    missing = str(tmp_path / "no-bundle")
    # no serve/config.yaml here: the packaged one is read (the error is about the bundle, checked after it)
    result = CliRunner().invoke(app, ["serve", "--model", missing])
    assert result.exit_code == 2 and "no inference bundle" in result.output, result.output
    # a serve/config.yaml in the current directory (a checkout) is read instead
    (tmp_path / "serve").mkdir()
    (tmp_path / "serve" / "config.yaml").write_text("applications: 3\n")
    result = CliRunner().invoke(app, ["serve", "--model", missing])
    assert result.exit_code == 2 and "serve/config.yaml is not a valid Serve config" in result.output, (
        result.output
    )
    # --config given always wins, and a missing one is an error (no silent fallback)
    result = CliRunner().invoke(app, ["serve", "--model", missing, "--config", str(DEFAULT_CONFIG)])
    assert result.exit_code == 2 and "no inference bundle" in result.output, result.output
    result = CliRunner().invoke(app, ["serve", "--model", missing, "--config", "nothere.yaml"])
    assert result.exit_code == 2 and "no Serve config at nothere.yaml" in result.output, result.output


# ------------------------------------------------------------------------------------------------
# Built, installed in a fresh venv, run from elsewhere (minutes)
# ------------------------------------------------------------------------------------------------


def _run(command: list[str], cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (
        f"{' '.join(map(str, command))} exited {result.returncode}\n"
        f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-8000:]}"
    )
    return result


def _build_command(source: Path, out: Path) -> list[str]:
    """`python -m build` (sdist, then the wheel from the sdist). Without build isolation where this venv's
    setuptools can build (no index needed), else isolated as a user would run it."""
    command = [sys.executable, "-m", "build", "--outdir", str(out), str(source)]
    try:
        import setuptools

        if tuple(int(p) for p in setuptools.__version__.split(".")[:2]) >= (70, 1):
            command.insert(3, "--no-isolation")
    except (ImportError, ValueError):
        pass
    return command


@pytest.mark.wheel
def test_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    pytest.importorskip(
        "build", reason="the test extra's `build` builds the dists (pip install -e '.[test]')"
    )
    began = time.perf_counter()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "RAY_ADDRESS", "VIRTUAL_ENV", "PYTHONHOME")
    }

    # 1. the dists, from a copy of the checkout (the build writes nothing into the checkout itself)
    source, dist = tmp_path / "src", tmp_path / "dist"
    shutil.copytree(
        ROOT,
        source,
        ignore=lambda d, names: [n for n in names if n in NOT_SOURCES or n.endswith(".egg-info")],
    )
    _run(_build_command(source, dist), tmp_path, env, 600)
    [wheel], [sdist] = sorted(dist.glob("*.whl")), sorted(dist.glob("*.tar.gz"))
    in_wheel = set(zipfile.ZipFile(wheel).namelist())
    with tarfile.open(sdist) as archive:
        in_sdist = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert len(PACKAGE_DATA) >= 11 and {
        "s2o_platform/serving/config.yaml",
        "s2o_platform/presets/tiny/teacher.yaml",
    } <= set(PACKAGE_DATA)
    for name in PACKAGE_DATA:
        assert name in in_wheel, f"{name} is not in the wheel (pyproject [tool.setuptools.package-data])"
        assert name in in_sdist, f"{name} is not in the sdist"

    # 2. a fresh venv outside the checkout with only the wheel; the dependencies by a plain-path .pth
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], tmp_path, env, 300)
    python, bin_dir = venv / "bin" / "python", venv / "bin"
    _run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], tmp_path, env, 300
    )
    new_site = Path(
        _run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            tmp_path,
            env,
            60,
        ).stdout.strip()
    )
    ours = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (new_site / "zz_s2o_test_dependencies.pth").write_text("".join(f"{p}\n" for p in ours))
    # the new venv's commands first; then this venv's (tools the dependencies call, e.g. ninja for DeepSpeed)
    env["PATH"] = os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), env.get("PATH", "")])
    work = tmp_path / "work"  # neither the checkout nor the copy of it
    work.mkdir()

    check = f"""
import sys
from pathlib import Path
import s2o_platform
from s2o_platform.config import PRESETS_DIR, TeacherConfig, load_config
from s2o_platform.serving.runner import plan_serving
from s2o_platform.serving.settings import DEFAULT_CONFIG, load_serve_config
site = Path({str(new_site)!r}).resolve()
for path in (Path(s2o_platform.__file__), DEFAULT_CONFIG, PRESETS_DIR):
    assert site in path.resolve().parents, f"{{path}} is not from the wheel in {{site}}"
assert DEFAULT_CONFIG.is_file() and load_serve_config(DEFAULT_CONFIG).applications[0].name == "s2o"
assert (PRESETS_DIR / "tiny" / "teacher.yaml").is_file()
load_config(TeacherConfig, "configs/tiny/teacher.yaml")  # the README's path, resolved to the packaged preset
print(s2o_platform.__file__)
"""
    out = _run([str(python), "-c", check], work, env, 120).stdout
    assert str(venv) in out

    # 3. the commands, from another directory
    top = _run([str(bin_dir / "s2o"), "--help"], work, env, 120).stdout
    assert "demo" in top and "serve" in top
    serve_help = _run([str(python), "-m", "s2o_platform.cli", "serve", "--help"], work, env, 120).stdout
    assert "--config" in serve_help and "--model" in serve_help
    assert (
        "--preset" in _run([str(python), "-m", "s2o_platform.cli", "demo", "--help"], work, env, 120).stdout
    )
    # `s2o serve` with no --config and no serve/ here finds the packaged config (it fails later, on the bundle)
    result = subprocess.run(
        [str(bin_dir / "s2o"), "serve", "--model", str(work / "no-bundle")],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "no inference bundle" in result.stderr, result.stderr

    # 4. Ray workers (the same python) import the package from the wheel
    worker = """
import ray
ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
print("WORKER", ray.get(ray.remote(lambda: __import__("s2o_platform").__file__).remote()))
ray.shutdown()
"""
    line = next(
        s
        for s in _run([str(python), "-c", worker], work, env, 300).stdout.splitlines()
        if s.startswith("WORKER")
    )
    assert str(new_site) in line, line

    # 5. the smoke demo, end to end on its own local Ray cluster: every stage runs and leaves its artefacts,
    #    the summary names them, and a second run reuses them instead of redoing them (the suite's only
    #    run of the whole demo: run from the installed wheel, as a user would)
    demo_began = time.perf_counter()
    first = _run(
        [str(bin_dir / "s2o"), "demo", "--preset", "smoke", "--out", str(work / "demo")], work, env, 2400
    )
    summary = json.loads((work / "demo" / "summary.json").read_text())
    assert summary["preset"]["name"] == "smoke" and "# s2o demo (smoke preset)" in first.stdout
    _check_demo_summary(summary, first.stderr)
    second = _run(
        [str(bin_dir / "s2o"), "demo", "--preset", "smoke", "--out", str(work / "demo")], work, env, 600
    )
    again = json.loads((work / "demo" / "summary.json").read_text())
    reused = sum("reusing it" in line for line in second.stderr.splitlines())
    assert reused == len(list((work / "demo" / "stages").glob("*.json"))), second.stderr[-4000:]
    assert again["student"]["bundle"] == summary["student"]["bundle"]
    assert again["seconds"] < summary["seconds"] / 3
    print(
        f"\nwheel test: demo {time.perf_counter() - demo_began:.0f} s, all {time.perf_counter() - began:.0f} s"
    )


def _check_demo_summary(summary: dict, log: str) -> None:
    """What a finished demo must have left: every bundle, the report's rows and files, a georeferenced COG,
    the served answers (a GeoTIFF request keeps its georeference) and the summary naming them."""
    import rasterio
    from PIL import Image

    from s2o_platform.demo import summary_text

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
    with rasterio.open(answers[0]["output"]) as served:
        assert served.crs is not None and served.count == 3
    if summary["real_store"]:
        assert len(answers) == 2 and Image.open(answers[1]["output"]).size == (256, 256)
    text = (out / "summary.md").read_text()
    assert summary_text(summary) in text and "acd lcm-1" in text and cog in text
    assert "Ray Serve shut down" in log
