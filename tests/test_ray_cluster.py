"""The local cluster that `connect()` starts (the session's shared cluster is one)."""

from __future__ import annotations

import os

import pytest

from s2o_platform.ray_cluster import LOCAL_WORKER_NICENESS, MIN_LOCAL_CPUS

pytestmark = pytest.mark.ray


def test_local_cluster_workers_run_at_normal_priority(ray_cluster):
    ray = ray_cluster

    @ray.remote(num_cpus=1)
    def niceness() -> int:
        return os.nice(0)

    assert os.environ["RAY_worker_niceness"] == str(LOCAL_WORKER_NICENESS)
    # Ray's default would be 15: a worker that yields the CPU to every Ray background process.
    assert ray.get(niceness.remote()) == LOCAL_WORKER_NICENESS == 0


def test_local_cluster_has_room_for_workers_and_their_data_tasks(ray_cluster):
    assert ray_cluster.cluster_resources()["CPU"] >= MIN_LOCAL_CPUS
