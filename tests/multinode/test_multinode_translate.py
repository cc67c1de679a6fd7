"""`s2o translate` across nodes: model actors on both worker nodes, and one node lost mid-run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from s2o_platform.data.synth_writer import write_scene_geotiffs
from s2o_platform.translate.manifest import MANIFEST_FILE, Manifest
from tests.fixtures import write_smallest_bundles
from tests.multinode.cluster import actor_nodes
from tests.translate.helpers import translate

pytestmark = pytest.mark.multinode

N_SCENES = 6
BUCKET = "s2o-test"


@pytest.fixture(scope="module")
def archive_on_s3(s3_endpoint, tmp_path_factory):
    """Six SAR scenes (float dB, linear and uint16 DN, each with a nodata corner) in the S3 bucket, and the
    smallest untrained student: the nodes share no disk, only the object store."""
    import boto3

    root = tmp_path_factory.mktemp("mn-archive")
    write_scene_geotiffs(str(root), N_SCENES, 128, seed=11)
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    for path in sorted((root / "sar").glob("*.tif")):
        client.upload_file(str(path), BUCKET, f"mn-archive/{path.name}")
    bundles = write_smallest_bundles(root / "models", tile=32)
    return f"s3://{BUCKET}/mn-archive/", bundles["student"], client


def _run(source, bundle, dest, s3_endpoint):
    result = translate(
        source, "--model", bundle, "--out", dest, "--steps", 2, "--actors", 2, "--batch-size", 8,
        "--s3-endpoint", s3_endpoint,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return result


def _restarts_of(class_name: str) -> int:
    """Restarts of the actors (alive or dead) whose class name contains `class_name`, over the session."""
    from ray.util.state import list_actors

    return sum(a.num_restarts for a in list_actors(limit=10_000, detail=True) if class_name in a.class_name)


def _spilled_mib() -> int:
    """MiB the cluster's object stores have spilled to disk since they started (Ray's memory summary)."""
    import re

    from ray._private.internal_api import memory_summary

    found = re.search(r"Spilled (\d+) MiB", memory_summary(stats_only=True))
    return int(found.group(1)) if found else 0


def _outputs(client, prefix: str) -> dict[str, np.ndarray]:
    """Every COG under the prefix, read back: {name: pixels}."""
    from rasterio.io import MemoryFile

    found = {}
    for item in client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", []):
        key = item["Key"]
        if key.endswith(".tif"):
            body = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
            with MemoryFile(body) as memory, memory.open() as ds:
                found[key[len(prefix) :]] = ds.read()
    return found


@pytest.fixture(scope="module")
def clean_outputs(multinode_cluster, archive_on_s3, s3_endpoint):
    """The archive translated on the cluster with nothing going wrong: {name: pixels}."""
    source, bundle, client = archive_on_s3
    _run(source, bundle, f"s3://{BUCKET}/mn-clean", s3_endpoint)
    clean = _outputs(client, "mn-clean/")
    assert len(clean) == N_SCENES
    return clean


def test_translation_survives_losing_a_node_with_every_scene_once_and_identical(
    multinode_cluster, archive_on_s3, clean_outputs, s3_endpoint, monkeypatch
):
    """A worker node that holds a model actor dies (every process SIGKILLed) just after the first scene is
    recorded done. Ray Data restarts the actor on the surviving node and re-runs the lost work; the run ends
    with no user action, every scene written once (one manifest record each, no partial file), pixel for pixel
    what an uninterrupted run writes."""
    source, bundle, client = archive_on_s3
    cluster, clean = multinode_cluster, clean_outputs

    lost = {}
    record = Manifest.record

    def lose_a_node_after_the_first_scene(self, scene_record):
        record(self, scene_record)
        if scene_record.status == "done" and not lost:
            placed = actor_nodes("StripTranslator")
            # both actors run, one on each worker node (spread), when the first scene is complete
            assert len(placed) == 2 and len(set(placed.values())) == 2, placed
            node = cluster.node_of(next(iter(placed.values())))
            lost.update(
                node=node.node_id, done_before=len([r for r in self.records.values() if r.status == "done"])
            )
            cluster.kill(node)

    monkeypatch.setattr(Manifest, "record", lose_a_node_after_the_first_scene)
    try:
        _run(source, bundle, f"s3://{BUCKET}/mn-killed", s3_endpoint)
    finally:
        monkeypatch.undo()
        if len(cluster.workers) < 2:
            cluster.add_worker()  # as KubeRay replaces a lost pod; the next test has two worker nodes again
    assert lost and lost["done_before"] == 1  # the node died with 5 of the 6 scenes still to write
    # Ray restarted the lost actor (on the surviving node: the lost one never came back)
    assert _restarts_of("StripTranslator") >= 1

    killed = _outputs(client, "mn-killed/")
    assert sorted(killed) == sorted(clean)
    for name, pixels in clean.items():
        np.testing.assert_array_equal(killed[name], pixels, err_msg=name)
    manifest = client.get_object(Bucket=BUCKET, Key=f"mn-killed/{MANIFEST_FILE}")["Body"].read().decode()
    records = [json.loads(line) for line in manifest.splitlines() if line.strip()]
    assert sorted(r["scene"] for r in records) == sorted({r["scene"] for r in records})  # once each
    assert [r["status"] for r in records] == ["done"] * N_SCENES
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix="mn-killed/")["Contents"]]
    assert not [k for k in keys if "partial" in k or k.endswith(".tmp")], keys


#: Objects put into the driver's object store to fill it: more than the node's whole store.
FILL_OBJECTS, FILL_OBJECT_BYTES = 6, 64 * 1024 * 1024


def test_translation_with_the_driver_nodes_object_store_full(
    multinode_cluster, archive_on_s3, clean_outputs, s3_endpoint, monkeypatch
):
    """Once the first scene is written, the head's object store (where the driver receives every translated
    block) is filled past its size with objects the driver holds. Ray spills to disk to make room (its spilled
    total grows); the run finishes with the same pixels, and the held objects are intact."""
    import ray

    from tests.multinode.cluster import OBJECT_STORE_BYTES

    assert FILL_OBJECTS * FILL_OBJECT_BYTES > OBJECT_STORE_BYTES
    source, bundle, client = archive_on_s3
    held: list = []
    record = Manifest.record

    def fill_the_store_after_the_first_scene(self, scene_record):
        record(self, scene_record)
        if scene_record.status == "done" and not held:
            held.extend(ray.put(np.full(FILL_OBJECT_BYTES, k, dtype=np.uint8)) for k in range(FILL_OBJECTS))

    spilled_before = _spilled_mib()
    monkeypatch.setattr(Manifest, "record", fill_the_store_after_the_first_scene)
    try:
        _run(source, bundle, f"s3://{BUCKET}/mn-full-store", s3_endpoint)
    finally:
        monkeypatch.undo()
    assert len(held) == FILL_OBJECTS  # filled mid-run
    spilled = _spilled_mib() - spilled_before
    assert ray.get(held[0])[0] == 0 and ray.get(held[-1])[-1] == FILL_OBJECTS - 1  # ours intact too
    del held[:]
    assert spilled * 1024 * 1024 >= FILL_OBJECT_BYTES  # the store really overflowed
    full = _outputs(client, "mn-full-store/")
    assert sorted(full) == sorted(clean_outputs)
    for name, pixels in clean_outputs.items():
        np.testing.assert_array_equal(full[name], pixels, err_msg=name)
