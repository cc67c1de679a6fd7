"""What the launcher treats as a storage outage, and how it waits one out (moto's S3 server on loopback)."""

from __future__ import annotations

import pytest
from ray.train import ControllerError, WorkerGroupError

from s2o_platform import storage
from s2o_platform.train.launcher import storage_failure, wait_for_storage


@pytest.fixture
def s3_out(s3_server):
    options = storage.StorageOptions(s3_endpoint=s3_server.endpoint)
    fs, root = storage.resolve("s3://s2o-test/outage-probe", options)
    return fs, root


def test_a_controller_that_could_not_write_is_a_storage_failure(s3_out):
    fs, root = s3_out
    cause = OSError("AWS Error NETWORK_CONNECTION during CreateMultipartUpload")
    assert storage_failure(ControllerError(cause), fs, root) is cause


def test_other_failures_while_storage_answers_are_not(s3_out):
    fs, root = s3_out
    assert storage_failure(ControllerError(ValueError("bad config")), fs, root) is None
    assert storage_failure(WorkerGroupError("rank 0 died", {0: RuntimeError("nan")}), fs, root) is None
    assert storage_failure(KeyboardInterrupt(), fs, root) is None
    assert storage_failure(OSError("not from Ray Train"), fs, root) is None


def test_a_worker_failure_while_storage_is_down_is_a_storage_failure(s3_server, s3_out):
    fs, root = s3_out
    s3_server.stop()
    try:
        failure = storage_failure(WorkerGroupError("uploads failed", {0: RuntimeError("upload")}), fs, root)
        # an interrupt is the user's, whatever the storage does
        assert storage_failure(KeyboardInterrupt(), fs, root) is None
    finally:
        s3_server.start()
    assert isinstance(failure, OSError)


def test_wait_for_storage_returns_once_the_endpoint_is_back(s3_server, s3_out):
    fs, root = s3_out
    failed_probes: list[OSError] = []

    def end_the_outage(err: OSError) -> None:
        failed_probes.append(err)
        if len(failed_probes) == 2:
            s3_server.start()

    s3_server.stop()
    try:
        back = wait_for_storage(fs, root, timeout_s=120, first_delay_s=0.05, on_unreachable=end_the_outage)
    finally:
        if len(failed_probes) < 2:
            s3_server.start()
    assert back
    assert len(failed_probes) == 2 and all(isinstance(e, OSError) for e in failed_probes)


def test_wait_for_storage_gives_up_after_its_bound(s3_server, s3_out):
    fs, root = s3_out
    failed_probes: list[OSError] = []
    s3_server.stop()
    try:
        assert not wait_for_storage(
            fs, root, timeout_s=0.5, first_delay_s=0.1, on_unreachable=failed_probes.append
        )
    finally:
        s3_server.start()
    assert failed_probes  # it did probe, and every probe failed


def test_a_local_out_answers_even_before_it_exists(tmp_path):
    fs, root = storage.resolve(str(tmp_path / "not-yet"))
    assert wait_for_storage(fs, root, timeout_s=1, on_unreachable=pytest.fail)
