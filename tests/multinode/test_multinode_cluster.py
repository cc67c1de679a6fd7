"""The multi-node cluster itself: three raylets with their own resources, and token authentication on."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

from tests.multinode.cluster import WORKER_RESOURCE

pytestmark = pytest.mark.multinode

#: A client that only lists the nodes of the cluster at argv[1].
CLIENT = "import sys, ray; ray.init(address=sys.argv[1], logging_level='ERROR'); print(len(ray.nodes()), flush=True)"


def test_three_nodes_each_its_own_raylet_and_resources(multinode_cluster):
    import ray

    nodes = [n for n in ray.nodes() if n["Alive"]]
    assert len(nodes) == 3 and len({n["NodeManagerPort"] for n in nodes}) == 3
    head = [n for n in nodes if "node:__internal_head__" in n["Resources"]]
    assert (
        len(head) == 1 and head[0]["Resources"].get("CPU", 0) == 0
    )  # the head runs no tasks (KubeRay layout)
    workers = [n for n in nodes if WORKER_RESOURCE in n["Resources"]]
    assert len(workers) == 2 and all(n["Resources"]["CPU"] == multinode_cluster.worker_cpus for n in workers)
    assert {n["NodeManagerAddress"] for n in nodes} == {"127.0.0.1"}  # loopback only
    from s2o_platform.devices import cluster_cpu_hosts

    # its raylets share this one machine's cores, so model actors on them share those cores (not a node each)
    assert cluster_cpu_hosts() == 1


def test_a_client_needs_the_clusters_token(multinode_cluster):
    run = dict(capture_output=True, text=True, timeout=300)
    right = subprocess.run([sys.executable, "-c", CLIENT, multinode_cluster.address], **run)
    assert right.returncode == 0 and right.stdout.strip() == "3", right.stderr[-2000:]
    # A wrong token is refused at once (InvalidAuthToken); Ray's client then retries for 20 s before it gives
    # up, so the test stops it at the refusal, having seen it connect to nothing.
    wrong = subprocess.Popen(
        [sys.executable, "-c", CLIENT, multinode_cluster.address],
        env={**os.environ, "RAY_AUTH_TOKEN": "0" * 64},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # a client that hangs silently is killed: the loop below then ends and the test fails
    watchdog = threading.Timer(120, wrong.kill)
    watchdog.start()
    try:
        said = []
        for line in wrong.stderr:  # ends at the refusal, or when the client exits
            said.append(line)
            if "InvalidAuthToken" in line:
                break
    finally:
        watchdog.cancel()
        wrong.kill()
        out, _ = wrong.communicate(timeout=60)
    assert said and "InvalidAuthToken" in said[-1], "".join(said)[-2000:]
    assert out.strip() == "", out  # it never listed the nodes
