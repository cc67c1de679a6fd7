"""Running the Serve application from serve/config.yaml on a local or existing Ray cluster
(`s2o serve`, tests and the serving benchmark): the same application, args and deployment options
that `serve run serve/config.yaml` would use, with the bundle, host and port as given."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from s2o_platform.serving.settings import DEFAULT_CONFIG, ServeConfigError, ServeSettings, load_serve_config, settings_from_args


@dataclass
class ServingPlan:
    settings: ServeSettings
    deployment_options: dict[str, dict[str, Any]]  # deployment name -> its options from the config
    app_name: str
    route_prefix: str
    host: str
    port: int
    request_timeout_s: float | None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{self.route_prefix.rstrip('/')}"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` right now (for the loopback servers the demo, tests and benchmarks start)."""
    import socket

    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def plan_serving(config: str | Path = DEFAULT_CONFIG, model: str | None = None, host: str | None = None,
                 port: int | None = None, overrides: dict[str, Any] | None = None) -> ServingPlan:
    """Read and check everything before Ray starts: the config, the settings and the bundle."""
    from s2o_platform.bundle import BundleError, check_bundle
    from s2o_platform.serving.app import DEPLOYMENTS

    schema = load_serve_config(config)
    app = schema.applications[0]
    args = {**(app.args or {}), **({"model": model} if model else {}), **(overrides or {})}
    if not args.get("model"):
        raise ServeConfigError("no model bundle: pass --model BUNDLE (or set args.model in the Serve config)")
    settings = settings_from_args(args)
    try:
        check_bundle(settings.model)
    except BundleError as err:
        raise ServeConfigError(str(err)) from None
    check_compile_backend(settings)
    options: dict[str, dict[str, Any]] = {}
    for deployment in app.deployments:
        if deployment.name not in DEPLOYMENTS:
            raise ServeConfigError(f"{config}: unknown deployment {deployment.name!r}; the application has {list(DEPLOYMENTS)}")
        options[deployment.name] = deployment.model_dump(exclude_unset=True, exclude={"name"})
    http = schema.http_options
    return ServingPlan(settings, options, app.name, app.route_prefix or "/", host or http.host or "127.0.0.1",
                       int(port if port is not None else http.port), http.request_timeout_s)


def check_compile_backend(settings: ServeSettings) -> None:
    """`compile` default/max where this machine cannot compile for the replicas' device: refused before Ray
    starts (auto falls back to eager in the replica, which logs why)."""
    if settings.compile in ("off", "auto"):
        return
    import torch

    from s2o_platform.inference_compile import CompileError, resolve_compile

    target = "cuda" if settings.device == "cuda" or (settings.device == "auto" and torch.cuda.is_available()) else "cpu"
    try:
        resolve_compile(settings.compile, target)
    except CompileError as err:
        raise ServeConfigError(str(err)) from None


def start_serving(plan: ServingPlan, address: str | None = None) -> str:
    """Start Serve (HTTP on plan.host:plan.port) and deploy the application; returns its base URL once ready."""
    from ray import serve

    from s2o_platform.ray_cluster import connect
    from s2o_platform.serving.app import application

    connect(address)
    http_options: dict[str, Any] = {"host": plan.host, "port": plan.port}
    if plan.request_timeout_s:
        http_options["request_timeout_s"] = plan.request_timeout_s
    serve.start(http_options=http_options)
    serve.run(application(plan.settings, plan.deployment_options), name=plan.app_name, route_prefix=plan.route_prefix)
    return plan.url
