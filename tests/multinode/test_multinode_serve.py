"""Serving across nodes: two model replicas on two worker nodes under a closed-loop load, one node lost."""

from __future__ import annotations

import time

import numpy as np
import pytest

from s2o_platform.serving.runner import DEFAULT_CONFIG, free_port, plan_serving, start_serving
from tests.fixtures import png_bytes, write_smallest_bundles
from tests.multinode.cluster import actor_nodes, wait_for
from tests.multinode.load import ClosedLoopClients

pytestmark = pytest.mark.multinode

#: Answers before the node is lost, and after the application is back to two replicas.
ANSWERS_BEFORE, ANSWERS_AFTER = 24, 24


def _translator_replicas_running(app: str) -> int:
    from ray import serve

    deployments = serve.status().applications[app].deployments
    return deployments["SarTranslator"].replica_states.get("RUNNING", 0)


def test_serving_loses_a_replica_node_and_no_request_is_lost(multinode_cluster, tmp_path, record_property):
    """Two SarTranslator replicas, one per worker node (max_replicas_per_node 1), the HTTP proxy on the head.
    Under 4 closed-loop clients the node of a replica (not the gateway's) dies; a replacement node joins. Every
    failed attempt is a 503 with Retry-After or a connection reset, never a hang or a bare 500; with the retry
    rule no request is lost; the application is back to two running replicas. The share of failed attempts,
    their statuses and the time to two replicas are recorded (record_property) and printed."""
    from ray import serve

    cluster = multinode_cluster
    student = write_smallest_bundles(tmp_path, tile=32)["student"]
    plan = plan_serving(DEFAULT_CONFIG, model=student, port=free_port(), overrides={"dtype": "bf16"})
    translator = plan.deployment_options["SarTranslator"]
    # two replicas, not one to two by load: both nodes serve from the start
    translator["autoscaling_config"] = {
        **translator["autoscaling_config"],
        "min_replicas": 2,
        "max_replicas": 2,
    }
    translator["max_replicas_per_node"] = 1
    url = start_serving(plan)
    body = png_bytes(np.random.default_rng(0).integers(0, 255, (32, 32), dtype=np.uint8))
    try:
        replicas = wait_for(
            lambda: len(nodes := actor_nodes("SarTranslator")) == 2 and nodes, "the two replicas' actors"
        )
        assert len(replicas) == 2 and set(replicas.values()) == {n.node_id for n in cluster.workers}
        gateway_node = next(iter(actor_nodes("SarGateway").values()))
        victim = cluster.node_of(next(n for n in replicas.values() if n != gateway_node))
        with ClosedLoopClients(url, body) as clients:
            wait_for(lambda: clients.answered >= ANSWERS_BEFORE or clients.lost, "answers before the loss")
            killed_at = time.monotonic()
            cluster.kill(victim)
            cluster.add_worker()  # as KubeRay replaces a lost pod
            live_workers = {n.node_id for n in cluster.workers}  # the survivor and the replacement
            wait_for(
                lambda: _translator_replicas_running(plan.app_name) == 2
                and set(actor_nodes("SarTranslator").values()) == live_workers,
                "two running replicas again, one on the replacement node", timeout=120,
            )  # fmt: skip
            recovered_s = time.monotonic() - killed_at
            answered_at_recovery = clients.answered
            wait_for(
                lambda: clients.answered >= answered_at_recovery + ANSWERS_AFTER or clients.lost,
                "answers after recovery",
                timeout=120,
            )
    finally:
        serve.shutdown()

    attempts = sum(clients.attempts.values())
    failed = {k: v for k, v in clients.attempts.items() if k != "200"}
    summary = {
        "attempts": attempts,
        "failed_attempt_share": round(sum(failed.values()) / attempts, 4),
        "failed_attempts": failed,
        "requests_lost": len(clients.lost),
        "seconds_to_two_replicas": round(recovered_s, 1),
    }
    print(f"\nserving, one replica's node lost: {summary}")
    for key, value in summary.items():
        record_property(key, value)
    assert clients.lost == [] and clients.hung == []
    assert set(failed) <= {"503 (Retry-After 1)", "ConnectionError"}, failed
