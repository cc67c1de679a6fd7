"""Connecting to Ray: an existing cluster by address, or a local one started here."""

from __future__ import annotations

import os

#: Logical CPUs of a local cluster: at least 4 even on a 2-core machine, so that Ray Train workers
#: and the Ray Data tasks feeding them can run side by side (with 2 logical CPUs, 2 training
#: workers starve the reads and `fit()` hangs). Work is still bounded by the physical cores.
MIN_LOCAL_CPUS = 4
#: Process priority of a local cluster's workers (Ray's own default is 15). Overridable by setting
#: RAY_worker_niceness before connecting.
LOCAL_WORKER_NICENESS = 0


def local_cpus(num_cpus: int | None = None) -> int:
    """Logical CPUs of a local cluster: as asked, else the machine's cores but at least MIN_LOCAL_CPUS."""
    return num_cpus or max(MIN_LOCAL_CPUS, os.cpu_count() or 1)


def connect(address: str | None = None, num_cpus: int | None = None) -> str:
    """Initialise Ray once per process; returns a description of the cluster used.

    Args:
        address: 'auto', 'ray://host:10001' or 'host:6379' of a running cluster; None uses
            $RAY_ADDRESS when set, else starts a local cluster.
        num_cpus: logical CPUs of a local cluster (default max(4, os.cpu_count())).
    """
    import ray

    if ray.is_initialized():
        return "the Ray cluster this process is already connected to"
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level="WARNING")
        return f"Ray cluster at {address}"
    cpus = local_cpus(num_cpus)
    # Ray lowers its workers' priority so that a crowded node's raylet stays responsive. On a
    # machine running one job that backfires: the training worker's torch threads yield to every
    # Ray background process (dashboard, agents, log monitor, all at niceness 0), and one preempted
    # OpenMP thread holds the others at the next barrier. The raylet reads this when it starts.
    os.environ.setdefault("RAY_worker_niceness", str(LOCAL_WORKER_NICENESS))
    # The dashboard stays on (loopback only): Ray Train V2 queries the State API it serves.
    ray.init(num_cpus=cpus, logging_level="WARNING")
    return f"local Ray cluster ({cpus} logical CPUs)"
