"""Shared fixtures: one local Ray cluster and one S3 server (moto) on loopback for the whole session."""

from __future__ import annotations

import os
import time

import pytest

from s2o_platform.serving.runner import free_port
from tests.fixtures import shared_real_data

# Helper modules with assertions get pytest's assertion messages, as test modules and conftest.py files do.
pytest.register_assert_rewrite("tests.translate.helpers")

# Dummy credentials for the loopback S3 server, set before any Ray worker starts so workers inherit them.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "s2o-test")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "s2o-test-secret")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray cluster shared by every end-to-end test (4 logical CPUs, as the CLI uses)."""
    import ray

    from s2o_platform.ray_cluster import connect

    if _MULTINODE_STARTED:  # connect() would quietly use the multi-node cluster (a head with no CPUs)
        pytest.fail("a single-node Ray test ran after the multi-node tests: they must run last")
    connect(num_cpus=4)
    yield ray
    ray.shutdown()


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(config, items):
    """Multi-node tests run last: their cluster replaces the session's single-node one, which Ray allows only
    one of per process. Sorted after every other hook has ordered the items (--ff, --nf), so it holds."""
    result = yield
    # a stable sort: the order is kept otherwise
    items.sort(key=lambda item: item.get_closest_marker("multinode") is not None)
    return result


#: Set once the multi-node cluster has replaced the session's single-node one.
_MULTINODE_STARTED = []


@pytest.fixture(scope="session")
def multinode_cluster():
    """A head and two worker nodes (tests/multinode/cluster.py), token authentication on, this process its driver.
    It shuts the session's single-node cluster down first; the multi-node tests run after every other test."""
    import ray

    from tests.multinode.cluster import LocalMultiNodeCluster

    ray.shutdown()
    _MULTINODE_STARTED.append(True)
    with LocalMultiNodeCluster(workers=2) as cluster:
        yield cluster


class LoopbackS3:
    """moto's S3 server on 127.0.0.1 (its buckets live in this process, so they outlast a restart)."""

    def __init__(self):
        from moto.server import ThreadedMotoServer

        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._server_class = ThreadedMotoServer
        self.server = None

    def start(self) -> None:
        self.server = self._server_class(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()

    def stop(self) -> None:
        """Stop serving and close the listening socket: connections are refused until start()."""
        self.server.stop()
        self.server._server.server_close()  # moto's stop() leaves the socket open: connections would hang


@pytest.fixture(scope="session")
def s3_server():
    """The loopback S3 server; a fault test may stop it and start it again (an endpoint outage)."""
    boto3 = pytest.importorskip("boto3")
    server = LoopbackS3()
    server.start()
    client = boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1")
    for _ in range(50):
        try:
            client.create_bucket(Bucket="s2o-test")
            break
        except Exception:  # noqa: BLE001 - server still starting
            time.sleep(0.1)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_endpoint(s3_server):
    """moto's S3 server on 127.0.0.1: its endpoint URL, with a bucket 's2o-test' created."""
    return s3_server.endpoint


@pytest.fixture(scope="session")
def real_data():
    path = shared_real_data()
    if path is None:
        pytest.skip(
            "real samples not present: ../shared/data/real is absent (a user's clone has no ../shared)"
        )
    return path


@pytest.fixture(scope="session")
def synth_store_32(ray_cluster, tmp_path_factory):
    """A small synthetic store of 32 px tiles shared by the training tests."""
    from s2o_platform.data.synth_writer import run_synth

    path = tmp_path_factory.mktemp("synth32") / "store"
    run_synth(str(path), pairs=256, size=32, seed=1, progress=False)
    return str(path)


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium driven by Selenium (tests/browser.py); skipped, with the reason, where it cannot run."""
    from tests.browser import start_browser

    driver = start_browser()
    yield driver
    driver.quit()
