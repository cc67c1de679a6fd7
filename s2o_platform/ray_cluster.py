"""Connecting to Ray: an existing cluster by address, or a local one started here.

The rule: with `--address` (or $RAY_ADDRESS) a command joins that cluster ('auto' finds the one that
`ray start` recorded on this machine); without either it starts its own local cluster, whatever else
runs on the machine. A start-up or connection failure is a `RayStartError` with one line that says
what to do; the CLI prints it without a traceback.

Minimal exposure: a local cluster is a single-machine cluster, so its GCS, raylet, object manager,
dashboard, agents and workers listen on 127.0.0.1 only (S2O_RAY_BIND=0.0.0.0 restores Ray's own
choice: the machine's outward address, servers on every interface), and the token of Ray's token
authentication (~/.ray/auth_token) is readable by its owner only.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from pathlib import Path

from s2o_platform.errors import S2OError

#: Logical CPUs of a local cluster: at least 4 even on a 2-core machine, so that Ray Train workers
#: and the Ray Data tasks feeding them can run side by side (with 2 logical CPUs, 2 training
#: workers starve the reads and `fit()` hangs). Work is still bounded by the physical cores.
MIN_LOCAL_CPUS = 4
#: Process priority of a local cluster's workers (Ray's own default is 15). Overridable by setting
#: RAY_worker_niceness before connecting.
LOCAL_WORKER_NICENESS = 0
#: Where a local cluster's Ray servers listen: 127.0.0.1 (the default), 0.0.0.0 (Ray's own default:
#: the machine's outward address, every interface) or one address of this machine that other nodes
#: use to reach it (Ray then advertises that address and still listens on every interface).
BIND_ENV = "S2O_RAY_BIND"
LOOPBACK = "127.0.0.1"
ANY_INTERFACE = "0.0.0.0"
#: Ray's own switch (meant for laptops) that keeps a node on loopback instead of replacing 127.0.0.1 with
#: the machine's outward address; read by every Ray process of the node when it starts.
RAY_LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def local_cpus(num_cpus: int | None = None) -> int:
    """Logical CPUs of a local cluster: as asked, else the machine's cores but at least MIN_LOCAL_CPUS."""
    return num_cpus or max(MIN_LOCAL_CPUS, os.cpu_count() or 1)


class RayStartError(S2OError, RuntimeError):
    """Ray could not be started or reached; the message says what to do."""


def bind_address(bind: str | None = None) -> str:
    """The address a local cluster listens on: `bind`, else $S2O_RAY_BIND, else 127.0.0.1 (checked)."""
    value = (bind or os.environ.get(BIND_ENV) or LOOPBACK).strip()
    if value == "localhost":
        return LOOPBACK
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise RayStartError(
            f"{BIND_ENV}={value!r} is not an IP address: use {LOOPBACK} (this machine only, the "
            f"default), {ANY_INTERFACE} (every interface) or this machine's address"
        ) from None
    return value


def connect(address: str | None = None, num_cpus: int | None = None, bind: str | None = None) -> str:
    """Initialise Ray once per process; returns a description of the cluster used (with its GCS address).

    Args:
        address: 'auto', 'ray://host:10001' or 'host:6379' of a running cluster; None uses
            $RAY_ADDRESS when set, else starts a local cluster of this process's own, even when
            another cluster (`ray start`) runs on the machine.
        num_cpus: logical CPUs of a local cluster (default max(4, os.cpu_count())).
        bind: where a local cluster's Ray servers listen (see BIND_ENV); default $S2O_RAY_BIND, else
            127.0.0.1. Ignored when joining a cluster.

    Raises:
        RayStartError: the cluster could not be reached or started.
    """
    import ray

    if ray.is_initialized():
        return "the Ray cluster this process is already connected to"
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        if _is_loopback_address(address):
            _use_loopback(
                True
            )  # else Ray swaps 127.0.0.1 for this machine's outward address and misses the cluster
        try:
            ray.init(address=address, logging_level="WARNING")
        except Exception as err:  # noqa: BLE001 - Ray raises ConnectionError, ValueError, RuntimeError... here
            hint = (
                "start one first with `ray start --head`, or leave --address out to run on a local cluster of "
                "this command's own"
                if address == "auto"
                else "check the address and that the cluster is up and reachable"
            )
            raise RayStartError(
                f"cannot connect to the Ray cluster at {address!r}: {_first_line(err)}; {hint}"
            ) from None
        return f"Ray cluster at {address} (GCS {_gcs_address()})"
    cpus = local_cpus(num_cpus)
    bind = bind_address(bind)
    # Ray lowers its workers' priority so that a crowded node's raylet stays responsive. On a
    # machine running one job that backfires: the training worker's torch threads yield to every
    # Ray background process (dashboard, agents, log monitor, all at niceness 0), and one preempted
    # OpenMP thread holds the others at the next barrier. The raylet reads this when it starts.
    os.environ.setdefault("RAY_worker_niceness", str(LOCAL_WORKER_NICENESS))
    # The dashboard stays on (loopback only): Ray Train V2 queries the State API it serves.
    _create_auth_token()  # token authentication is on by default: a token file only we can read
    loopback = ipaddress.ip_address(bind).is_loopback
    _use_loopback(loopback)
    from ray._private.ray_constants import WORKER_PROCESS_SETUP_HOOK_ENV_VAR as HOOK

    saved_hook = os.environ.get(HOOK)
    if loopback and saved_hook is None:
        # The raylet, hence every worker it starts, inherits this; unset again once the node is up.
        os.environ[HOOK] = f"{__name__}.{loopback_worker_setup.__name__}"
    try:
        # address="local": a cluster of our own even where `ray start` recorded one on this machine
        # (plain ray.init() would join that one and then refuse num_cpus).
        ray.init(
            address="local",
            num_cpus=cpus,
            logging_level="WARNING",
            _node_ip_address=LOOPBACK if loopback else None if bind == ANY_INTERFACE else bind,
        )
    except Exception as err:  # noqa: BLE001 - as above
        raise RayStartError(
            f"cannot start a local Ray cluster: {_first_line(err)}; check free disk and memory "
            "(Ray writes to /tmp/ray), or run on a running cluster with --address auto"
        ) from None
    finally:
        if saved_hook is None:
            os.environ.pop(HOOK, None)
    restrict_auth_token()
    return f"local Ray cluster ({cpus} logical CPUs, GCS {_gcs_address()})"


#: What _use_loopback replaced (Ray's switch in the environment and Ray's constant), to put back.
_SAVED_SWITCH: dict[str, object] = {}


def _use_loopback(on: bool) -> None:
    """Keep Ray on loopback in this process and the processes it starts (on), or undo that (off).

    Ray 2.60 binds the GCS, raylet, object manager, agents and workers to the node's IP address when that
    is a loopback address, and to every interface otherwise; but on Linux it replaces 127.0.0.1 with the
    machine's outward address (for a node it starts and for an address it is given) unless
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0. Each Ray process reads that variable when it imports `ray`:
    the node's processes inherit it from this one (the raylet starts the agents and the workers), and
    so do the commands this process runs, e.g. `ray job submit --address 127.0.0.1:PORT` or an `s2o`
    command joining this cluster; this process imported `ray` already, so Ray's constant is set too.
    It stays so while the process runs.
    """
    from ray._private import ray_constants

    if on:
        if not _SAVED_SWITCH:
            _SAVED_SWITCH.update(
                env=os.environ.get(RAY_LOOPBACK_SWITCH), constant=ray_constants.ENABLE_RAY_CLUSTER
            )
        os.environ[RAY_LOOPBACK_SWITCH] = "0"
        ray_constants.ENABLE_RAY_CLUSTER = False
    elif _SAVED_SWITCH:
        ray_constants.ENABLE_RAY_CLUSTER = _SAVED_SWITCH["constant"]
        if _SAVED_SWITCH["env"] is None:
            os.environ.pop(RAY_LOOPBACK_SWITCH, None)
        else:
            os.environ[RAY_LOOPBACK_SWITCH] = _SAVED_SWITCH["env"]
        _SAVED_SWITCH.clear()


def loopback_worker_setup() -> None:
    """Worker process setup hook of a loopback local cluster: a gRPC server that a worker opens on every
    interface opens on 127.0.0.1 instead.

    Ray 2.60 binds its own servers to the node's address, but Ray Serve's replicas open their
    inter-deployment gRPC server on '[::]:0' unconditionally (ray/serve/_private/replica.py), through
    `ray._common.tls_utils.add_port_to_grpc_server`, which this wraps. Workers run the hook before their
    first task (default_worker.py reads it from the environment they inherit from the raylet). A node
    that is not on loopback is left as Ray makes it.
    """
    import sys

    import ray
    from ray._common import tls_utils

    add_port = tls_utils.add_port_to_grpc_server
    if (
        getattr(add_port, "s2o_loopback", False)
        or not ipaddress.ip_address(ray.util.get_node_ip_address()).is_loopback
    ):
        return

    def add_port_on_loopback(server, address: str):
        host, _, port = address.rpartition(":")
        if host in ("[::]", "0.0.0.0", ""):
            address = f"{LOOPBACK}:{port}"
        return add_port(server, address)

    add_port_on_loopback.s2o_loopback = True  # type: ignore[attr-defined]
    tls_utils.add_port_to_grpc_server = add_port_on_loopback
    for name in (
        "ray.serve._private.replica",
        "ray.util.client.server.server",
        "ray.util.client.server.proxier",
    ):
        module = sys.modules.get(name)  # imported before the hook ran: they hold the function by name
        if module is not None and hasattr(module, "add_port_to_grpc_server"):
            module.add_port_to_grpc_server = add_port_on_loopback


def _is_loopback_address(address: str) -> bool:
    """Whether a cluster address ('auto', 'host:port') points at a GCS on loopback ('ray://' never does)."""
    if "://" in address:
        return False
    if address == "auto":
        try:
            from ray._private.services import get_ray_address_from_environment

            address = get_ray_address_from_environment("auto", None) or ""
        except Exception:  # noqa: BLE001 - none or several clusters recorded: ray.init says so
            return False
    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def auth_token_path() -> Path | None:
    """The file Ray reads its authentication token from (None when it comes from $RAY_AUTH_TOKEN)."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return None
    return Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")


def _create_auth_token() -> None:
    """Before a local cluster starts: where Ray would create its token (token authentication on, the
    default, and no token anywhere yet), create it here, readable by its owner only from the start
    (Ray itself writes it with the process's umask, 0644 as a rule). Ray reads it as its own."""
    mode = os.environ.get("RAY_AUTH_MODE")
    if (mode is not None and mode.lower() != "token") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return
    path = auth_token_path()
    if path is None or path.exists():
        return
    import secrets

    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError:  # another process made it first, or no writable home: Ray deals with it as usual
        return
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(32))  # what Ray generates: 256 random bits, hex


def restrict_auth_token() -> bool:
    """Make Ray's token file readable by its owner only, when it is ours; True when it is (now) 0600."""
    path = auth_token_path()
    try:
        info = path.stat() if path is not None else None
        if info is None or info.st_uid != os.getuid():
            return False
        if stat.S_IMODE(info.st_mode) & 0o077:
            os.chmod(path, stat.S_IMODE(info.st_mode) & 0o700)
        return True
    except OSError:
        return False


def _gcs_address() -> str:
    import ray

    return ray.get_runtime_context().gcs_address


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
