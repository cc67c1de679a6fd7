"""Connecting to Ray: an existing cluster by address, or a local one started here.

The rule: with `--address` (or $RAY_ADDRESS) a command joins that cluster ('auto' finds the one that
`ray start` recorded on this machine); without either it starts its own local cluster, whatever else
runs on the machine. A start-up or connection failure is a `RayStartError` with one line that says
what to do; the CLI prints it without a traceback.
"""

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


class RayStartError(RuntimeError):
    """Ray could not be started or reached; the message says what to do."""


def connect(address: str | None = None, num_cpus: int | None = None) -> str:
    """Initialise Ray once per process; returns a description of the cluster used (with its GCS address).

    Args:
        address: 'auto', 'ray://host:10001' or 'host:6379' of a running cluster; None uses
            $RAY_ADDRESS when set, else starts a local cluster of this process's own, even when
            another cluster (`ray start`) runs on the machine.
        num_cpus: logical CPUs of a local cluster (default max(4, os.cpu_count())).

    Raises:
        RayStartError: the cluster could not be reached or started.
    """
    import ray

    if ray.is_initialized():
        return "the Ray cluster this process is already connected to"
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        try:
            ray.init(address=address, logging_level="WARNING")
        except Exception as err:  # noqa: BLE001 - Ray raises ConnectionError, ValueError, RuntimeError... here
            hint = ("start one first with `ray start --head`, or leave --address out to run on a local cluster of "
                    "this command's own" if address == "auto" else "check the address and that the cluster is up and reachable")
            raise RayStartError(f"cannot connect to the Ray cluster at {address!r}: {_first_line(err)}; {hint}") from None
        return f"Ray cluster at {address} (GCS {_gcs_address()})"
    cpus = local_cpus(num_cpus)
    # Ray lowers its workers' priority so that a crowded node's raylet stays responsive. On a
    # machine running one job that backfires: the training worker's torch threads yield to every
    # Ray background process (dashboard, agents, log monitor, all at niceness 0), and one preempted
    # OpenMP thread holds the others at the next barrier. The raylet reads this when it starts.
    os.environ.setdefault("RAY_worker_niceness", str(LOCAL_WORKER_NICENESS))
    # The dashboard stays on (loopback only): Ray Train V2 queries the State API it serves.
    try:
        # address="local": a cluster of our own even where `ray start` recorded one on this machine
        # (plain ray.init() would join that one and then refuse num_cpus).
        ray.init(address="local", num_cpus=cpus, logging_level="WARNING")
    except Exception as err:  # noqa: BLE001 - as above
        raise RayStartError(f"cannot start a local Ray cluster: {_first_line(err)}; check free disk and memory "
                            "(Ray writes to /tmp/ray), or run on a running cluster with --address auto") from None
    return f"local Ray cluster ({cpus} logical CPUs, GCS {_gcs_address()})"


def _gcs_address() -> str:
    import ray

    return ray.get_runtime_context().gcs_address


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
