"""The local cluster that `connect()` starts (the session's shared cluster is one)."""

from __future__ import annotations

import os

import pytest

from s2o_platform.ray_cluster import LOCAL_WORKER_NICENESS, MIN_LOCAL_CPUS, local_cpus


@pytest.mark.parametrize("cores,asked,expected", [(2, None, 4), (1, None, 4), (None, None, 4), (16, None, 16), (2, 6, 6), (16, 3, 3)])
def test_local_cluster_cpus_are_the_cores_but_at_least_the_minimum(monkeypatch, cores, asked, expected):
    monkeypatch.setattr("os.cpu_count", lambda: cores)
    assert MIN_LOCAL_CPUS == 4
    assert local_cpus(asked) == expected


@pytest.mark.ray
def test_local_cluster_workers_run_at_normal_priority(ray_cluster):
    ray = ray_cluster

    @ray.remote(num_cpus=1)
    def niceness() -> int:
        return os.nice(0)

    assert os.environ["RAY_worker_niceness"] == str(LOCAL_WORKER_NICENESS)
    # Ray's default would be 15: a worker that yields the CPU to every Ray background process.
    assert ray.get(niceness.remote()) == LOCAL_WORKER_NICENESS == 0
