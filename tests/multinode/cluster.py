"""A real multi-node Ray cluster on this machine, for the multi-node tests and benchmarks/scaling.py.

A head node and worker nodes, each its own raylet (and object store, and workers) from Ray's own
`ray.cluster_utils.Cluster`, all on 127.0.0.1, with token authentication on (a fresh token per cluster,
given to every process through $RAY_AUTH_TOKEN). The layout is the KubeRay one (k8s/base): the head
runs the GCS, the dashboard, the driver and Serve's controller and proxy, and no tasks (0 CPUs); every
worker node has `worker_cpus` logical CPUs and one unit of the resource WORKER_RESOURCE.

Losing a node is simulated as a crash: the node's Ray processes are killed at once (SIGKILL, no graceful
shutdown; its workers die with their raylet), as when a machine or pod disappears. The GCS health checks
are set to notice within about 2 s (Ray's default is 30 s), so a test waits on Ray's own view of the node,
not on a clock.
"""

from __future__ import annotations

import os
import secrets
import time
from contextlib import contextmanager

#: Logical CPUs of a worker node: a training worker and the Ray Data tasks that feed it fit side by side.
WORKER_CPUS = 3
#: A custom resource every worker node has one unit of, so work can be pinned off the head.
WORKER_RESOURCE = "s2o_worker_node"
#: The object store of each node (Ray's test default of 150 MiB is too small for a model's batches).
OBJECT_STORE_BYTES = 256 * 1024 * 1024
#: GCS health checks of the raylets: a dead node is declared dead after ~4 missed 0.5 s checks.
FAST_FAILURE_DETECTION = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 500,
    "health_check_timeout_ms": 500,
    "health_check_failure_threshold": 4,
}
#: How long to wait for Ray to register a node's birth or death before failing.
NODE_EVENT_TIMEOUT_S = 60.0


@contextmanager
def _env(**values: str | None):
    """Set environment variables for the block (None removes one); restored after."""
    saved = {key: os.environ.get(key) for key in values}
    try:
        for key, value in values.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def reload_ray_auth() -> None:
    """Make this process's Ray read the authentication mode and token from the environment again (Ray
    caches both when it is imported)."""
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


class LocalMultiNodeCluster:
    """Head plus `workers` worker nodes on loopback; the driver (this process) is connected to it.

    Use as a context manager, or call start() and shutdown(). `workers` lists the live worker nodes
    (ray._private.node.Node objects) in the order they were added.
    """

    def __init__(self, workers: int = 2, worker_cpus: int = WORKER_CPUS):
        self.n_workers = workers
        self.worker_cpus = worker_cpus
        self.token = secrets.token_hex(32)
        self.cluster = None
        self.workers: list = []
        self._env = None

    @property
    def address(self) -> str:
        return self.cluster.address

    def start(self) -> LocalMultiNodeCluster:
        import ray
        from ray._private.ray_constants import WORKER_PROCESS_SETUP_HOOK_ENV_VAR

        from s2o_platform import ray_cluster

        if ray.is_initialized():
            raise RuntimeError("this process is already connected to a Ray cluster: ray.shutdown() first")
        # Every node process inherits these: token auth with this cluster's token, Ray on loopback (and
        # Serve's replica gRPC server too, through the worker setup hook), workers at normal priority.
        self._env = _env(
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN=self.token,
            RAY_AUTH_TOKEN_PATH=None,
            RAY_worker_niceness=str(ray_cluster.LOCAL_WORKER_NICENESS),
            **{WORKER_PROCESS_SETUP_HOOK_ENV_VAR: f"{ray_cluster.__name__}.loopback_worker_setup"},
        )
        self._env.__enter__()
        # Ray on loopback (its switch in the environment and its constant: this process imported ray already); it
        # stays so while the process runs, as after ray_cluster.connect()
        ray_cluster._use_loopback(True)
        reload_ray_auth()
        try:
            self._start_nodes()
        except BaseException:
            self.shutdown()  # no half-started cluster, and the environment restored
            raise
        return self

    def _start_nodes(self) -> None:
        import ray
        from ray.cluster_utils import Cluster

        from s2o_platform import ray_cluster

        self.cluster = Cluster(
            initialize_head=True,
            head_node_args=dict(
                num_cpus=0,
                node_ip_address=ray_cluster.LOOPBACK,
                object_store_memory=OBJECT_STORE_BYTES,
                include_dashboard=True,  # Ray Train V2 queries the State API it serves
                dashboard_host=ray_cluster.LOOPBACK,
                _system_config=FAST_FAILURE_DETECTION,
            ),
        )
        for _ in range(self.n_workers):
            self.add_worker()
        self.cluster.wait_for_nodes()
        ray.init(address=self.address, logging_level="WARNING")

    def add_worker(self):
        """Add a worker node (as KubeRay does when it replaces a lost pod); returns it once Ray sees it."""
        from s2o_platform import ray_cluster

        node = self.cluster.add_node(
            num_cpus=self.worker_cpus,
            node_ip_address=ray_cluster.LOOPBACK,
            object_store_memory=OBJECT_STORE_BYTES,
            resources={WORKER_RESOURCE: 1},
        )
        self.workers.append(node)
        return node

    def node_of(self, node_id: str):
        """The live worker node with this Ray node id."""
        for node in self.workers:
            if node.node_id == node_id:
                return node
        raise KeyError(f"no live worker node {node_id}")

    def kill(self, node) -> None:
        """Lose a worker node: SIGKILL its Ray processes at once (raylet, object store, agents; its workers die
        with their raylet), then wait until the GCS has declared it dead (its health checks fail)."""
        self.workers.remove(node)
        self.cluster.remove_node(node, allow_graceful=False)
        wait_for(lambda: not node_alive(node.node_id), f"Ray to declare node {node.node_id} dead")

    def shutdown(self) -> None:
        import ray

        ray.shutdown()
        if self.cluster is not None:
            self.cluster.shutdown()
            self.cluster = None
        if self._env is not None:
            self._env.__exit__(None, None, None)
            self._env = None
            reload_ray_auth()

    def __enter__(self) -> LocalMultiNodeCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.shutdown()


def node_alive(node_id: str) -> bool:
    import ray

    return any(n["NodeID"] == node_id and n["Alive"] for n in ray.nodes())


def wait_for(condition, what: str, timeout: float = NODE_EVENT_TIMEOUT_S, every: float = 0.1):
    """Poll `condition` until it returns something truthy (returned); TimeoutError naming `what` after
    `timeout` seconds: a bound on a hang, not a timing assertion."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def actor_nodes(class_name: str) -> dict[str, str]:
    """Alive actors whose class name contains `class_name`: {actor id: node id}."""
    from ray.util.state import list_actors

    return {
        a.actor_id: a.node_id
        for a in list_actors(filters=[("state", "=", "ALIVE")], limit=10_000)
        if class_name in a.class_name
    }
