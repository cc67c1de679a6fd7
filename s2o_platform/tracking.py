"""Experiment tracking with MLflow (optional: `pip install 's2o-platform[mlflow]'`).

    tracker = Tracker(resolve_uri(cfg.tracking.uri))   # no URI and no $MLFLOW_TRACKING_URI: every call is a no-op
    tracker.start("s2o-teacher", run_name="run-1", run_id=previous_or_None)
    tracker.log_params({...}); tracker.log_metrics({"loss": 0.1}, step=10)
    tracker.log_artifacts("OUT/bundle", "bundle"); tracker.register_model("s2o-teacher", "bundle")
    tracker.end()

Who calls what in training (train/launcher.py on the driver, train/harness.py in the workers):
  - the driver starts the run, or continues the one recorded in OUT/mlflow_run.json when the launch resumes
    from a checkpoint, and logs the resolved config as params (flattened dotted keys);
  - the rank-0 worker alone logs the progress metrics of every logging step, with the step number;
  - the driver logs the final bundle as the run's `bundle` artefact, registers it as a model version
    with `tracking.register_as`, and ends the run (FINISHED, or FAILED when training raised).
`s2o eval --mlflow-run-id RUN_ID` adds the report's metrics per setting and its files to a run.

Tracking never fails a training or an evaluation: without mlflow installed, or with a server that cannot
be reached, one WARNING is logged and tracking is off for the rest of the process. mlflow is imported
only when a URI is configured. Each client call runs with a short HTTP timeout and one retry
(MLFLOW_HTTP_REQUEST_TIMEOUT / _MAX_RETRIES / _BACKOFF_FACTOR, set around the calls only, and only
where the environment does not set them already).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlparse, urlunparse

logger = logging.getLogger(__name__)

#: Where a run folder records the MLflow run it logs to (so a resumed launch continues that run).
RUN_FILE = "mlflow_run.json"
#: The tracking client's HTTP settings, unless the environment sets them: fail fast, never stall training.
CLIENT_ENV = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
}
#: MLflow's limits (mlflow.utils.validation), used when mlflow's own constants cannot be read.
PARAM_VALUE_LIMIT = 6000
PARAMS_PER_BATCH = 100
_METRIC_NAME = re.compile(r"[^A-Za-z0-9_\-. /]")
#: Config keys not logged as params (where the run logs to is not a property of the experiment).
_UNLOGGED_PARAMS = ("tracking.uri",)


def resolve_uri(uri: str | None = None) -> str | None:
    """The tracking URI: the configured one, else $MLFLOW_TRACKING_URI, else None (tracking off)."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or None


def redact(uri: str | None) -> str:
    """The URI without credentials (http://user:secret@host -> http://***@host), for messages."""
    if not uri:
        return str(uri)
    parsed = urlparse(uri)
    if parsed.username or parsed.password:
        return urlunparse(parsed._replace(netloc="***@" + parsed.netloc.rsplit("@", 1)[-1]))
    return uri


@contextlib.contextmanager
def client_environment() -> Iterator[None]:
    """Short timeouts and few retries for the MLflow calls inside (the environment's own values win)."""
    added = [k for k in CLIENT_ENV if k not in os.environ]
    for key in added:
        os.environ[key] = CLIENT_ENV[key]
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def _param_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def flatten_params(data: dict[str, Any], prefix: str = "", limit: int | None = None) -> dict[str, str]:
    """Nested config -> {dotted.key: string value}; values longer than MLflow's limit end in '...'."""
    limit = limit or _mlflow_limit("MAX_PARAM_VAL_LENGTH", PARAM_VALUE_LIMIT)
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flatten_params(value, name, limit))
            continue
        text = _param_value(value)
        out[name] = text if len(text) <= limit else text[: limit - 3] + "..."
    return out


def metric_name(name: str) -> str:
    """A metric key MLflow accepts (letters, digits, _ - . space /; anything else becomes _)."""
    return _METRIC_NAME.sub("_", name)


def _mlflow_limit(name: str, default: int) -> int:
    try:
        from mlflow.utils import validation

        return int(getattr(validation, name))
    except Exception:  # noqa: BLE001 - mlflow absent or moved: MLflow's documented value
        return default


def _unreachable(err: BaseException) -> bool:
    """Whether an MLflow client error means the server could not be reached (vs. a request it refused)."""
    try:
        import requests

        # RetryError: only retryable answers (429, 5xx: e.g. a proxy before a server that is down) until
        # mlflow's retries ran out.
        network: tuple[type[BaseException], ...] = (
            requests.exceptions.ConnectionError,
            requests.exceptions.Timeout,
            requests.exceptions.RetryError,
        )
    except ImportError:  # pragma: no cover - mlflow's client needs requests
        network = ()
    seen: set[int] = set()
    # mlflow wraps a requests error in an MlflowException raised inside its `except` (rest_utils.http_request),
    # so the requests error is that exception's __context__ (or __cause__): found by type on the chain.
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, (*network, ConnectionError, TimeoutError)):
            return True
        err = err.__cause__ or err.__context__
    return False


class Tracker:
    """One MLflow run seen from one process; every method is a no-op when tracking is off.

    Off: no URI (mlflow is never imported), or an earlier failure (one WARNING said so).
    """

    def __init__(
        self, uri: str | None, run_id: str | None = None, warn: Callable[[str], None] | None = None
    ) -> None:
        self.uri = uri or None
        self.run_id = run_id
        self._warn = warn or logger.warning
        self._off = self.uri is None
        self._client = None

    @classmethod
    def attach(cls, spec: dict[str, str] | None) -> Tracker:
        """The tracker of a run started elsewhere (`worker_spec()` of the driver's tracker); None: off."""
        if not spec:
            return cls(None)
        return cls(spec.get("uri"), spec.get("run_id"))

    @property
    def enabled(self) -> bool:
        return not self._off

    def worker_spec(self) -> dict[str, str] | None:
        """What a worker needs to log into this run (plain data for Ray), or None when tracking is off."""
        return {"uri": self.uri, "run_id": self.run_id} if self.enabled and self.run_id else None

    # -- the calls ------------------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[[Any], Any], essential: bool = True) -> Any:
        """fn(client) with the short-timeout environment. A failure turns tracking off with one warning
        (an essential call, or any call when the server is unreachable); a refused non-essential call
        (an artefact, a registration) is a warning and tracking goes on."""
        if self._off:
            return None
        try:
            with client_environment():
                if self._client is None:
                    from mlflow.tracking import MlflowClient

                    self._client = MlflowClient(tracking_uri=self.uri)
                return fn(self._client)
        except ImportError as err:
            self._off = True
            self._warn(
                f"MLflow tracking to {redact(self.uri)} is off: mlflow is not installed ({err}); "
                "install it with pip install 's2o-platform[mlflow]'"
            )
        except Exception as err:  # noqa: BLE001 - tracking must never fail the work it records
            text = re.sub(
                r"://[^/@\s]+@", "://***@", str(err).splitlines()[0] if str(err) else ""
            )  # no credentials
            reason = f"{type(err).__name__}: {text[:300]}"
            if _unreachable(err):
                self._off = True
                self._warn(
                    f"MLflow tracking server {redact(self.uri)} is unreachable ({what}: {reason}); "
                    "tracking is off for the rest of this run, the work goes on"
                )
            elif essential:
                self._off = True
                self._warn(
                    f"MLflow tracking at {redact(self.uri)} failed while {what} ({reason}); "
                    "tracking is off for the rest of this run, the work goes on"
                )
            else:
                self._warn(f"MLflow: {what} failed ({reason}); tracking goes on")
        return None

    def start(
        self,
        experiment: str,
        run_name: str | None = None,
        run_id: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> str | None:
        """Continue `run_id` where the server still has it (active), else create a run in `experiment`
        (created when missing). Returns the run id, or None when tracking is off."""

        def start(client) -> str:
            if run_id:
                try:
                    run = client.get_run(run_id)
                except Exception as err:  # noqa: BLE001
                    if _unreachable(err):
                        raise
                    run = None  # not on this server (another URI, deleted for good): a new run
                if run is not None and run.info.lifecycle_stage == "active":
                    client.update_run(run_id, status="RUNNING")
                    if tags:
                        client.log_batch(run_id, tags=_tags(tags))
                    return run_id
            found = client.get_experiment_by_name(experiment)
            if found is None:
                try:
                    experiment_id = client.create_experiment(experiment)
                except Exception:  # noqa: BLE001 - created meanwhile by another launch
                    found = client.get_experiment_by_name(experiment)
                    if found is None:
                        raise
                    experiment_id = found.experiment_id
            else:
                if found.lifecycle_stage != "active":
                    client.restore_experiment(found.experiment_id)
                experiment_id = found.experiment_id
            return client.create_run(experiment_id, run_name=run_name, tags=tags or {}).info.run_id

        self.run_id = self._call(f"starting a run in experiment {experiment!r}", start)
        if self.run_id is None:
            self._off = True
        return self.run_id

    def log_params(self, params: dict[str, Any]) -> None:
        """Log params (string values, MLflow's length limit applied). Params are immutable in MLflow: on a
        continued run, a key already logged with another value is recorded as the tag `s2o.changed.KEY`
        ('old -> new') instead."""

        def log(client) -> None:
            from mlflow.entities import Param, RunTag

            limit = _mlflow_limit("MAX_PARAM_VAL_LENGTH", PARAM_VALUE_LIMIT)
            values = {k: (v if isinstance(v, str) else _param_value(v)) for k, v in params.items()}
            values = {k: v if len(v) <= limit else v[: limit - 3] + "..." for k, v in values.items()}
            logged = client.get_run(self.run_id).data.params
            new = [Param(k, v) for k, v in values.items() if k not in logged]
            changed = [
                RunTag(f"s2o.changed.{k}", f"{logged[k]} -> {v}"[:limit])
                for k, v in values.items()
                if k in logged and logged[k] != v
            ]
            per_batch = _mlflow_limit("MAX_PARAMS_TAGS_PER_BATCH", PARAMS_PER_BATCH)
            for i in range(0, len(new), per_batch):
                client.log_batch(self.run_id, params=new[i : i + per_batch])
            for i in range(0, len(changed), per_batch):
                client.log_batch(self.run_id, tags=changed[i : i + per_batch])

        self._call("logging params", log)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        def log(client) -> None:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            batch = [
                Metric(metric_name(k), float(v), now, int(step))
                for k, v in metrics.items()
                if isinstance(v, (int, float))
            ]
            if batch:
                client.log_batch(self.run_id, metrics=batch)

        self._call(f"logging the metrics of step {step}", log)

    def set_tags(self, tags: dict[str, str]) -> None:
        self._call(
            "setting tags", lambda client: client.log_batch(self.run_id, tags=_tags(tags)), essential=False
        )

    def log_artifacts(self, local_dir: str, artifact_path: str | None = None) -> None:
        self._call(
            f"uploading {local_dir} as artefact {artifact_path or '/'}",
            lambda client: client.log_artifacts(self.run_id, local_dir, artifact_path),
            essential=False,
        )

    def log_text(self, text: str, artifact_file: str) -> None:
        self._call(
            f"uploading {artifact_file}",
            lambda client: client.log_text(self.run_id, text, artifact_file),
            essential=False,
        )

    def register_model(self, name: str, artifact_path: str, tags: dict[str, str] | None = None) -> str | None:
        """A new version of registered model `name` (created when missing) from this run's artefact; a
        version with the same tags from this run already there is reused. Returns the version."""

        def register(client) -> str:
            try:
                client.get_registered_model(name)
            except Exception as err:  # noqa: BLE001 - RESOURCE_DOES_NOT_EXIST
                if _unreachable(err):
                    raise
                client.create_registered_model(
                    name, description="s2o-platform inference bundle (s2o_platform.bundle)"
                )
            for version in client.search_model_versions(f"name='{name}' and run_id='{self.run_id}'"):
                if tags and all(version.tags.get(k) == v for k, v in tags.items()):
                    return version.version
            source = f"runs:/{self.run_id}/{artifact_path}"
            return client.create_model_version(name, source, run_id=self.run_id, tags=tags or {}).version

        return self._call(f"registering model {name!r}", register, essential=False)

    def end(self, status: str = "FINISHED") -> None:
        self._call(
            f"ending the run ({status})", lambda client: client.set_terminated(self.run_id, status=status)
        )
        self._off = True


def _tags(tags: dict[str, str]) -> list:
    from mlflow.entities import RunTag

    return [RunTag(k, str(v)) for k, v in tags.items()]


# -- training: the driver's side (train/launcher.py) ------------------------------------------------


def start_training_run(
    section: Any,
    stage: str,
    out: str,
    fs: Any,
    root: str,
    resumed_from: int | None,
    config: dict[str, Any],
    params: dict[str, Any] | None = None,
) -> Tracker:
    """The run a training launch logs to: the one recorded in the run folder when this launch resumes
    from a checkpoint, else a new one (recorded there). Logs the resolved config as params."""
    from s2o_platform import storage

    tracker = Tracker(resolve_uri(section.uri))
    if not tracker.enabled:
        return tracker
    run_file = storage.join(root, RUN_FILE)
    previous = None
    if resumed_from is not None:
        try:
            previous = json.loads(storage.read_bytes(fs, run_file)).get("run_id")
        except (OSError, ValueError, AttributeError):
            previous = None
    tags = {
        "s2o.stage": stage,
        "s2o.run_folder": out,
        "mlflow.source.name": f"s2o train {stage}",
        "mlflow.source.type": "JOB",
    }
    if resumed_from is not None:
        tags["s2o.resumed_from_step"] = str(resumed_from)
    run_name = section.run_name or os.path.basename(out.rstrip("/")) or None
    run_id = tracker.start(
        section.experiment or f"s2o-{stage}", run_name=run_name, run_id=previous, tags=tags
    )
    if run_id is None:
        return tracker
    record = {
        "run_id": run_id,
        "experiment": section.experiment or f"s2o-{stage}",
        "tracking_uri": redact(tracker.uri),
    }
    storage.write_bytes_atomic(fs, run_file, json.dumps(record, indent=2).encode())
    flat = {k: v for k, v in flatten_params(config).items() if k not in _UNLOGGED_PARAMS}
    tracker.log_params({**flat, **(params or {})})
    import yaml

    tracker.log_text(yaml.safe_dump(config, sort_keys=False), "config.yaml")
    return tracker


def finish_training_run(tracker: Tracker, section: Any, fs: Any, bundle_path: str, step: int) -> None:
    """The final bundle as the run's `bundle` artefact, a model version when `register_as` is set, run FINISHED."""
    if not tracker.enabled:
        return
    with local_folder(fs, bundle_path) as local:
        tracker.log_artifacts(local, "bundle")
    if section.register_as:
        version = tracker.register_model(section.register_as, "bundle", tags={"s2o.step": str(step)})
        if version is not None:
            tracker.set_tags({"s2o.registered_model": f"{section.register_as}/{version}"})
    tracker.end("FINISHED")


@contextlib.contextmanager
def local_folder(fs: Any, path: str) -> Iterator[str]:
    """A local folder with the content of `path` on `fs` (the folder itself when local; else a temporary copy)."""
    import pyarrow.fs as pafs

    if isinstance(fs, pafs.LocalFileSystem):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="s2o-mlflow-") as tmp:
        pafs.copy_files(path, tmp, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        yield tmp


# -- evaluation (s2o eval --mlflow-run-id) ----------------------------------------------------------

#: Report row fields logged as metrics (per setting: eval/<label>/<field>).
EVAL_METRICS = (
    "psnr",
    "ssim",
    "colour_error",
    "sharpness_ratio",
    "identity_ratio",
    "landcover_accuracy",
    "landcover_miou",
    "fid",
    "latency_ms",
    "throughput",
    "speedup_vs_ddpm",
    "speedup_vs_ddim",
)


def log_evaluation(run_id: str, report: Any, files: list, out_name: str, uri: str | None = None) -> bool:
    """The report's metrics per setting (eval/<label>/<metric>, step 0) and its files (artefacts under
    eval/<out_name>/) into an existing run. Returns whether it was logged (False: tracking off, warned)."""
    tracker = Tracker(resolve_uri(uri), run_id)
    metrics: dict[str, float] = {}
    for row in report.rows:
        if row.error:
            continue
        for field in EVAL_METRICS:
            value = getattr(row, field, None)
            if isinstance(value, (int, float)):
                metrics[f"eval/{row.label}/{field}"] = float(value)
        if row.paired and isinstance(row.paired.get("delta_psnr"), (int, float)):
            metrics[f"eval/{row.label}/delta_psnr"] = float(row.paired["delta_psnr"])
    tracker._call(f"checking run {run_id}", lambda client: client.get_run(run_id))
    tracker.log_metrics(metrics, step=0)
    for path in files:
        tracker._call(
            f"uploading {path}",
            lambda client, p=str(path): client.log_artifact(run_id, p, f"eval/{out_name}"),
            essential=False,
        )
    return tracker.enabled
