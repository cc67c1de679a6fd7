"""Archive translation's bookkeeping in DEST under the failures seen in practice: a manifest line torn by a
crash, two runs into one DEST, DEST inside SOURCE, a run killed with SIGKILL, and object keys with '..'
or absolute parts (in a SOURCE prefix and in a bundle). The CLI runs for real on the shared Ray cluster;
the manifest, lock and key rules are also checked directly (local files and the moto S3 server)."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from s2o_platform import storage
from s2o_platform.data.synth_writer import write_scene_geotiffs
from s2o_platform.translate.manifest import MANIFEST_FILE, Manifest, SceneRecord
from s2o_platform.translate.publish import is_view_file
from s2o_platform.translate.sources import discover_scenes
from tests.translate.helpers import (
    assert_same_grid_and_nodata,
    held_translate_command,
    translate,
    wait_for,
    wait_for_free_cpus,
)

pytestmark = pytest.mark.ray
# The names users see in DEST, spelled out: what they find there is the contract.
LOCK_FILE = "_s2o_translate.lock"
MANIFEST_RECORDS_FOLDER = "_s2o_manifest"
CONFIG_FILE = "_s2o_config.yaml"  # the resolved settings of the latest run


def manifest_records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / MANIFEST_FILE).read_text().splitlines()]


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped) on this host."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_lock(out: Path, host: str, pid: int) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_FILE
    path.write_text(json.dumps({"host": host, "pid": pid, "started_at": time.time() - 60}))
    return path


# ---------------------------------------------------------------------------------------------
# Pure rules
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key", ["scene.tif", "2024/06/scene.tif", "a..b/c.tif", "..scene.tif", "dir/.hidden.tif"]
)
def test_safe_relative_keys(key):
    assert storage.is_safe_relative_key(key)


@pytest.mark.parametrize(
    "key",
    [
        "",
        "../scene.tif",
        "a/../../scene.tif",
        "a/..",
        "..",
        "/etc/passwd",
        "/abs.tif",
        "\\abs.tif",
        "a\\..\\..\\b.tif",
        "C:/scene.tif",
        "c:scene.tif",
        "a/\0b.tif",
    ],
)
def test_unsafe_relative_keys(key):
    assert not storage.is_safe_relative_key(key)


def test_discovery_leaves_out_dest_inside_source_but_not_source_inside_dest(tmp_path):
    archive = tmp_path / "archive"
    for rel in ("sar/s1.tif", "sar/deep/s2.tif", "optical/s1.tif", "optical/_s2o_work/x.tif"):
        (archive / rel).parent.mkdir(parents=True, exist_ok=True)
        (archive / rel).write_bytes(b"x")
    dest = archive / "optical"
    assert [s.name for s in discover_scenes(str(archive), dest=str(dest))] == ["sar/deep/s2", "sar/s1"]
    # a glob: named from the common folder of what it keeps
    assert [s.uri for s in discover_scenes(str(archive / "**" / "*.tif"), dest=str(dest))] == [
        str(archive / "sar" / "deep" / "s2.tif"),
        str(archive / "sar" / "s1.tif"),
    ]
    # a relative DEST names the same folder
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        assert [s.name for s in discover_scenes("archive", dest="archive/optical/")] == [
            "sar/deep/s2",
            "sar/s1",
        ]
    finally:
        os.chdir(cwd)
    # SOURCE inside DEST: its scenes are the input, not outputs
    assert [s.name for s in discover_scenes(str(archive / "sar"), dest=str(archive))] == ["deep/s2", "s1"]
    assert [s.name for s in discover_scenes(str(archive / "sar" / "*.tif"), dest=str(archive))] == ["s1"]


# ---------------------------------------------------------------------------------------------
# The manifest and the lock, directly
# ---------------------------------------------------------------------------------------------


def test_local_manifest_appends_each_record_without_rewriting_the_file(tmp_path):
    manifest = Manifest(str(tmp_path))
    manifest.record(SceneRecord(scene="/a.tif", status="done", output=str(tmp_path / "a.tif")))
    path = tmp_path / MANIFEST_FILE
    first_inode, first_bytes = path.stat().st_ino, path.read_bytes()
    for k in range(5):
        manifest.record(SceneRecord(scene=f"/s{k}.tif", status="failed", reason="x"))
    assert path.stat().st_ino == first_inode  # the same file, appended to: not replaced per record
    assert path.read_bytes().startswith(first_bytes)
    assert [r["scene"] for r in manifest_records(tmp_path)] == ["/a.tif"] + [f"/s{k}.tif" for k in range(5)]


def test_a_torn_last_line_is_skipped_with_a_warning_and_the_next_record_starts_a_line(tmp_path):
    good = json.dumps({"scene": "/a.tif", "status": "failed", "reason": "x"})
    (tmp_path / MANIFEST_FILE).write_text(
        good + "\n" + good[:25]
    )  # a crash in the middle of the second record
    warnings: list[str] = []
    manifest = Manifest(str(tmp_path), log=warnings.append)
    assert list(manifest.records) == ["/a.tif"]
    assert len(warnings) == 1 and str(tmp_path / MANIFEST_FILE) in warnings[0] and "line 2" in warnings[0], (
        warnings
    )
    manifest.record(SceneRecord(scene="/b.tif", status="failed", reason="y"))
    again: list[str] = []
    assert sorted(Manifest(str(tmp_path), log=again.append).records) == ["/a.tif", "/b.tif"]
    manifest.compact()  # the end of a run folds the file to one valid line per scene
    assert [r["scene"] for r in manifest_records(tmp_path)] == ["/a.tif", "/b.tif"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


def test_s3_manifest_writes_one_object_per_record_and_compacts_at_the_end(s3_endpoint):
    import boto3

    options = storage.StorageOptions(s3_endpoint=s3_endpoint)
    dest = f"s3://s2o-test/manifest-{uuid.uuid4().hex[:8]}"
    prefix = dest.split("/", 3)[3]
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")

    def keys():
        listed = client.list_objects_v2(Bucket="s2o-test", Prefix=prefix + "/").get("Contents", [])
        return sorted(
            k for k in (o["Key"][len(prefix) + 1 :] for o in listed) if k and not k.endswith("/")
        )  # no folder markers

    manifest = Manifest(dest, options)
    manifest.record(SceneRecord(scene="s3://x/a.tif", status="failed", reason="first"))
    manifest.record(SceneRecord(scene="s3://x/b.tif", status="failed", reason="b"))
    manifest.record(SceneRecord(scene="s3://x/a.tif", status="failed", reason="second"))
    assert len(keys()) == 3 and all(k.startswith(MANIFEST_RECORDS_FOLDER + "/") for k in keys())
    # a run killed here: the next one reads the records as they are, latest per scene
    seen = Manifest(dest, options).records
    assert {k: r.reason for k, r in seen.items()} == {"s3://x/a.tif": "second", "s3://x/b.tif": "b"}
    manifest.compact()
    assert keys() == [MANIFEST_FILE]
    seen = Manifest(dest, options).records
    assert {k: r.reason for k, r in seen.items()} == {"s3://x/a.tif": "second", "s3://x/b.tif": "b"}


def test_s3_lock_refuses_a_second_holder_and_is_released(s3_endpoint):
    from s2o_platform.translate.manifest import DestLock, DestLockedError

    options = storage.StorageOptions(s3_endpoint=s3_endpoint)
    dest = f"s3://s2o-test/locked-{uuid.uuid4().hex[:8]}"
    first = DestLock(dest, options)
    first.acquire()
    with pytest.raises(DestLockedError, match=rf"pid {os.getpid()} on {socket.gethostname()}"):
        DestLock(dest, options).acquire()
    first.release()
    second = DestLock(dest, options)
    second.acquire()
    second.release()
    fs, root = storage.resolve(dest, options)
    assert not storage.exists(fs, storage.join(root, LOCK_FILE))


# ---------------------------------------------------------------------------------------------
# End to end through the CLI
# ---------------------------------------------------------------------------------------------


def test_a_torn_manifest_line_is_skipped_and_its_scene_redone(scenes, bundles, tmp_path):
    out = tmp_path / "out"
    result = translate(scenes, "--model", bundles["gan"], "--out", out)
    assert result.exit_code == 0, result.output
    manifest = out / MANIFEST_FILE
    lines = manifest.read_text().splitlines()
    torn_scene = json.loads(lines[2])["scene"]
    manifest.write_text("\n".join(lines[:2]) + "\n" + lines[2][: len(lines[2]) // 2])  # killed mid-write
    again = translate(scenes, "--model", bundles["gan"], "--out", out)
    assert again.exit_code == 0, again.output
    assert f"{manifest} line 3" in again.output, again.output
    assert "1 scene(s) translated, 2 skipped" in again.output, again.output
    assert f"done {torn_scene}" in again.output
    records = manifest_records(out)  # every line parses again
    assert sorted(r["scene"] for r in records) == sorted(str(p) for p in scenes.glob("*.tif"))
    assert {r["status"] for r in records} == {"done"}


def test_a_second_run_into_the_same_dest_exits_2_naming_the_first(ray_cluster, bundles, tmp_path):
    archive = tmp_path / "archive"
    write_scene_geotiffs(str(archive), 6, 160, seed=5)
    out = tmp_path / "out"
    log_path, held, release = tmp_path / "first.log", tmp_path / "held", tmp_path / "release"
    command = held_translate_command(
        held, release, archive / "sar", bundles["student"], out, ray_cluster, "--steps", 4, "--batch-size", 8
    )
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(held.exists, "first scene recorded as done", proc, log_path)  # it holds DEST's lock now
        second = translate(
            archive / "sar", "--model", bundles["student"], "--out", out, "--steps", 4, "--batch-size", 8
        )
        assert second.exit_code == 2, second.output
        assert f"pid {proc.pid} on {socket.gethostname()}" in second.output, second.output
        assert str(out / LOCK_FILE) in second.output and "Wait for it to finish" in second.output
        release.touch()
        assert proc.wait(timeout=400) == 0, log_path.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    records = manifest_records(out)
    assert len(records) == 6 and {r["status"] for r in records} == {"done"}  # each scene translated once
    assert not (out / LOCK_FILE).exists()
    assert len(list(out.glob("*.tif"))) == 6


def test_a_lock_held_on_another_host_is_not_taken_over(scenes, bundles, tmp_path):
    out = tmp_path / "out"
    lock = write_lock(out, "render-node-7", 4242)
    result = translate(scenes, "--model", bundles["gan"], "--out", out)
    assert result.exit_code == 2, result.output
    assert "pid 4242 on render-node-7" in result.output and f"delete {lock}" in result.output, result.output
    assert json.loads(lock.read_text())["host"] == "render-node-7"  # left as it was
    assert not list(out.glob("*.tif")) and not (out / MANIFEST_FILE).exists()


def test_the_lock_is_released_when_the_run_breaks(scenes, bundles, tmp_path):
    out = tmp_path / "out"
    (out / MANIFEST_FILE).mkdir(parents=True)  # the manifest cannot be read: the run stops with an error
    result = translate(scenes, "--model", bundles["gan"], "--out", out)
    assert result.exit_code != 0 and result.exception is not None, result.output
    assert not (out / LOCK_FILE).exists()
    again = translate(scenes, "--model", bundles["gan"], "--out", out)  # not refused as locked
    assert "pid" not in again.output, again.output


def test_a_killed_run_leaves_a_stale_lock_and_work_files_that_the_next_run_clears(
    ray_cluster, bundles, tmp_path, monkeypatch
):
    """SIGKILL once the first scene is written: the lock names a dead pid on this host and a work folder
    holds half-written scenes. The next run takes the lock over with a warning, removes the leftovers
    (saying so), and finishes; nothing of either run is left beside the outputs or in the temp folder."""
    archive = tmp_path / "archive"
    write_scene_geotiffs(str(archive), 6, 160, seed=5)
    out = tmp_path / "out"
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    held, log_path = tmp_path / "held", tmp_path / "first.log"
    free_before = ray_cluster.available_resources().get("CPU", 0)
    command = held_translate_command(
        held,
        tmp_path / "never",
        archive / "sar",
        bundles["student"],
        out,
        ray_cluster,
        "--steps",
        4,
        "--batch-size",
        8,
    )
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "TMPDIR": str(private_tmp)},
        )
    try:
        wait_for(held.exists, "first scene recorded as done", proc, log_path)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done_before = [r for r in manifest_records(out) if r["status"] == "done"]
    assert [r["scene"] for r in done_before] == [held.read_text()]  # killed with one scene done, five to go
    partial = out / f".tmp-{uuid.uuid4().hex}"  # as a copy into DEST cut off by the kill leaves it
    partial.write_bytes(b"half a COG")
    wait_for_free_cpus(ray_cluster, free_before)
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))  # this process's temp folder, as the child's
    result = translate(
        archive / "sar", "--model", bundles["student"], "--out", out, "--steps", 4, "--batch-size", 8
    )
    assert result.exit_code == 0, result.output
    assert f"stale lock {out / LOCK_FILE}" in result.output and f"pid {proc.pid}" in result.output, (
        result.output
    )
    assert "removed leftovers of an earlier run" in result.output, result.output
    assert f"{6 - len(done_before)} scene(s) translated, {len(done_before)} skipped" in result.output
    assert sorted(p.name for p in out.iterdir() if not is_view_file(p.name)) == sorted(
        [MANIFEST_FILE, CONFIG_FILE] + [p.name for p in (archive / "sar").glob("*.tif")]
    )
    work_folders = [p for p in private_tmp.iterdir() if p.name.startswith("s2o-")]
    assert not work_folders  # of either run
    catalog = json.loads(
        (out / "catalog.json").read_text()
    )  # the catalog lists the scenes of both runs, once
    assert sorted(link["href"] for link in catalog["links"] if link["rel"] == "item") == sorted(
        f"./stac/{p.stem}.json" for p in (archive / "sar").glob("*.tif")
    )


def test_dest_inside_source_is_not_read_back_as_scenes(scenes, bundles, tmp_path):
    archive = tmp_path / "archive"
    shutil.copytree(scenes, archive)
    out = archive / "optical"
    first = translate(archive, "--model", bundles["gan"], "--out", out)
    assert first.exit_code == 0, first.output
    again = translate(archive, "--model", bundles["gan"], "--out", out)
    assert again.exit_code == 0, again.output
    assert "0 scene(s) translated, 3 skipped (already done), 0 failed" in again.output, again.output
    assert sorted(p.name for p in out.iterdir() if not is_view_file(p.name)) == sorted(
        [MANIFEST_FILE, CONFIG_FILE] + [p.name for p in scenes.glob("*.tif")]
    )


def test_an_output_that_would_overwrite_its_scene_is_refused(scenes, bundles, tmp_path):
    archive = tmp_path / "archive"
    shutil.copytree(scenes, archive)
    before = {p.name: p.read_bytes() for p in archive.glob("*.tif")}
    result = translate(archive, "--model", bundles["gan"], "--out", archive)
    assert result.exit_code == 1, result.output
    assert "0 scene(s) translated, 0 skipped (already done), 3 failed" in result.output, result.output
    assert "would overwrite the scene itself" in result.output
    assert {p.name: p.read_bytes() for p in archive.glob("*.tif")} == before


def test_a_source_key_with_dot_dot_is_refused_and_the_rest_translated(s3_endpoint, scenes, bundles, tmp_path):
    import boto3

    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    prefix, escape = f"keys-{uuid.uuid4().hex[:8]}", f"escape-{uuid.uuid4().hex[:8]}"
    scene = str(scenes / "scene_001_linear.tif")
    client.upload_file(scene, "s2o-test", f"{prefix}/ok/scene_001_linear.tif")
    client.upload_file(scene, "s2o-test", f"{prefix}/../{escape}.tif")
    client.upload_file(scene, "s2o-test", f"{escape}.tif")  # where a reader normalising '..' would look
    out = tmp_path / "nest" / "out"
    result = translate(
        f"s3://s2o-test/{prefix}/", "--model", bundles["gan"], "--out", out, "--s3-endpoint", s3_endpoint
    )
    assert result.exit_code == 1, result.output
    assert "1 scene(s) translated, 0 skipped (already done), 1 failed" in result.output, result.output
    assert f"'../{escape}.tif'" in result.output, result.output
    assert sorted(p.name for p in (tmp_path / "nest").iterdir()) == ["out"]  # nothing written outside DEST
    assert_same_grid_and_nodata(scenes / "scene_001_linear.tif", out / "ok" / "scene_001_linear.tif")
    failed = [r for r in manifest_records(out) if r["status"] == "failed"]
    assert len(failed) == 1 and f"../{escape}.tif" in failed[0]["reason"]


def test_a_bundle_key_with_dot_dot_is_refused(s3_endpoint, bundles):
    import boto3

    from s2o_platform.bundle import BundleError, load_bundle

    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    prefix, escape = f"bundles/gan-{uuid.uuid4().hex[:8]}", f"escape-{uuid.uuid4().hex[:8]}.txt"
    for path in Path(bundles["gan"]).rglob("*"):
        if path.is_file():
            client.upload_file(
                str(path), "s2o-test", f"{prefix}/{path.relative_to(bundles['gan']).as_posix()}"
            )
    options = storage.StorageOptions(s3_endpoint=s3_endpoint)
    assert (
        load_bundle(f"s3://s2o-test/{prefix}", options=options).metadata.stage == "gan"
    )  # a clean bundle loads
    client.put_object(Bucket="s2o-test", Key=f"{prefix}/../{escape}", Body=b"outside")
    target = Path(tempfile.gettempdir()) / escape
    try:
        with pytest.raises(BundleError, match=rf"'\.\./{escape}'"):
            load_bundle(f"s3://s2o-test/{prefix}", options=options)
        assert not target.exists()  # nothing was written outside the download folder
    finally:
        target.unlink(missing_ok=True)
