"""Running the Serve application from serve/config.yaml on a local or existing Ray cluster
(`s2o serve`, tests and the serving benchmark): the same application, args and deployment options
that `serve run serve/config.yaml` would use, with the bundle, host and port as given."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from s2o_platform.serving.settings import DEFAULT_CONFIG, ServeConfigError, ServeSettings, load_serve_config


@dataclass
class ServingPlan:
    settings: ServeSettings
    deployment_options: dict[str, dict[str, Any]]  # deployment name -> its options from the config
    app_name: str
    route_prefix: str
    host: str
    port: int
    request_timeout_s: float | None
    proxy_location: str = "HeadOnly"  # where Serve runs its HTTP proxies (the config's proxy_location)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{self.route_prefix.rstrip('/')}"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` right now (for the loopback servers the demo, tests and benchmarks start)."""
    import socket

    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def plan_serving(
    config: str | Path = DEFAULT_CONFIG,
    model: str | None = None,
    host: str | None = None,
    port: int | None = None,
    overrides: dict[str, Any] | None = None,
    sets: list[str] | None = None,
) -> ServingPlan:
    """Read and check everything before Ray starts: the config, the settings and the bundle.

    The application's settings, lowest precedence first: the args of the Serve config < `sets` (`s2o serve
    --set key=value`, values parsed as YAML) < `model` and `overrides` (explicit options: --model, --dtype,
    --compile)."""
    from s2o_platform.bundle import BundleError, check_bundle
    from s2o_platform.serving.app import DEPLOYMENTS

    schema = load_serve_config(config)
    app = schema.applications[0]
    settings = resolve_settings(
        app.args or {},
        sets,
        {**({"model": model} if model else {}), **(overrides or {})},
        f"args of {config}",
    )
    try:
        check_bundle(settings.model)
    except BundleError as err:
        raise ServeConfigError(str(err)) from None
    from s2o_platform.inference_compile import CompileError, check_compile_here

    try:  # default/max where this machine cannot compile for the replicas' device: refused before Ray starts
        check_compile_here(settings.compile, settings.device)
    except CompileError as err:
        raise ServeConfigError(str(err)) from None
    options: dict[str, dict[str, Any]] = {}
    for deployment in app.deployments:
        if deployment.name not in DEPLOYMENTS:
            raise ServeConfigError(
                f"{config}: unknown deployment {deployment.name!r}; the application has {list(DEPLOYMENTS)}"
            )
        options[deployment.name] = deployment.model_dump(exclude_unset=True, exclude={"name"})
    http = schema.http_options
    return ServingPlan(
        settings,
        options,
        app.name,
        app.route_prefix or "/",
        host or http.host or "127.0.0.1",
        int(port if port is not None else http.port),
        http.request_timeout_s,
        getattr(schema.proxy_location, "value", schema.proxy_location) or "HeadOnly",
    )


def resolve_settings(
    args: dict[str, Any],
    sets: list[str] | None = None,
    explicit: dict[str, Any] | None = None,
    where: str = "the Serve config's args",
) -> ServeSettings:
    """ServeSettings from the application's args, `--set key=value` overrides and explicit values, in that
    precedence. An unknown key or a bad value is a ServeConfigError naming the key, the value and its source."""
    from s2o_platform.config import ConfigError, load_config, parse_override

    try:
        set_keys = [".".join(parse_override(text)[0]) for text in sets or []]
        if not ((explicit or {}).get("model") or "model" in set_keys or args.get("model")):
            raise ServeConfigError(
                "no model bundle: pass --model BUNDLE (or set args.model in the Serve config)"
            )
        return load_config(
            ServeSettings,
            None,
            list(sets or []),
            flags=explicit,
            base=args,
            base_source=where,
            flags_source="the explicit settings (--model, --dtype, --compile)",
        )
    except ConfigError as err:
        raise ServeConfigError(f"bad serve application args: {err}") from None


def start_serving(plan: ServingPlan, address: str | None = None) -> str:
    """Start Serve (HTTP on plan.host:plan.port) and deploy the application; returns its base URL once ready."""
    from ray import serve

    from s2o_platform.ray_cluster import connect
    from s2o_platform.serving.app import application

    connect(address)
    http_options: dict[str, Any] = {"host": plan.host, "port": plan.port}
    if plan.request_timeout_s:
        http_options["request_timeout_s"] = plan.request_timeout_s
    # the config's proxy_location, not Serve's default (EveryNode): on a multi-node cluster a proxy on every node
    # would each bind plan.host:plan.port, where the config asks for the head's only
    serve.start(proxy_location=plan.proxy_location, http_options=http_options)
    serve.run(
        application(plan.settings, plan.deployment_options),
        name=plan.app_name,
        route_prefix=plan.route_prefix,
    )
    return plan.url
