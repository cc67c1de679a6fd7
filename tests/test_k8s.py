"""The Kubernetes manifests, checked offline: they parse, core kinds pass kubernetes-validate, KubeRay
kinds pass their CRD schemas (from ../shared/k8s/crds, with unknown fields refused as the API server
would silently prune them), serveConfigV2 is serve/config.yaml plus the declared differences, and
everything the manifests name (entrypoints, presets, image, Ray version, GPUs) matches the project; and
minimal exposure: restricted pods with a writable /tmp, read-only S3 credentials for serving, and a
NetworkPolicy around every Ray cluster."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

from s2o_platform.config import DistillConfig, GanConfig, TeacherConfig, load_config
from tests.fixtures import REPO_ROOT

ROOT = REPO_ROOT
K8S = ROOT / "k8s"
IMAGE_HOME = "/home/ray/s2o"  # where k8s/Dockerfile puts the repository
CRDS = ROOT.parent / "shared" / "k8s" / "crds"
CRD_FILES = {
    "RayJob": "ray.io_rayjobs.yaml",
    "RayService": "ray.io_rayservices.yaml",
    "RayCluster": "ray.io_rayclusters.yaml",
}
TRAINING = {"train_teacher.py": TeacherConfig, "distill.py": DistillConfig, "train_gan.py": GanConfig}

sys.path.insert(0, str(K8S))
import sync_serve_config  # noqa: E402


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


def documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def base_resources() -> list[dict]:
    kustomization = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    return [d for name in kustomization["resources"] for d in documents(K8S / "base" / name)]


@lru_cache(maxsize=None)
def rendered(overlay: str) -> tuple[dict, ...]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip(
            "kubectl (with its built-in kustomize) is not installed: overlays cannot be rendered here"
        )
    out = subprocess.run(
        [kubectl, "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True, check=True
    )
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def ray_cluster_spec(doc: dict) -> dict:
    return doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]["rayClusterConfig"]


def pod_templates(doc: dict) -> list[dict]:
    """The templates of the Ray pods: head, worker groups."""
    spec = ray_cluster_spec(doc)
    return [g["template"] for g in [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]]


def all_pod_templates(doc: dict) -> list[dict]:
    """Every pod template of a RayJob/RayService: the Ray pods, plus a RayJob's submitter pod."""
    return pod_templates(doc) + (
        [doc["spec"]["submitterPodTemplate"]] if "submitterPodTemplate" in doc["spec"] else []
    )


def containers(doc: dict) -> list[dict]:
    return [c for t in pod_templates(doc) for c in t["spec"]["containers"]]


def gpus(container: dict) -> int:
    limits = container.get("resources", {}).get("limits", {})
    return int(limits.get("nvidia.com/gpu", 0))


def cpus(container: dict) -> float:
    value = str(container.get("resources", {}).get("requests", {}).get("cpu", "0"))
    return float(value[:-1]) / 1000 if value.endswith("m") else float(value)


# ------------------------------------------------------------------------------------------------
# Parsing and schemas
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_every_manifest_parses(path):
    docs = documents(path)
    assert docs and all("kind" in d and "apiVersion" in d for d in docs)


def test_no_secret_values_in_manifests():
    for path in manifest_files():
        text = path.read_text()
        assert "kind: Secret" not in text, (
            f"{path}: credentials come from a Secret created outside the repository"
        )
        for doc in documents(path):
            for key in doc.get("data") or {}:
                assert not re.search(r"SECRET|PASSWORD|TOKEN|ACCESS_KEY", key), (
                    f"{path}: {key} must come from a Secret"
                )


@pytest.mark.parametrize("source", ["base", "dev", "prod"])
def test_core_kinds_pass_kubernetes_validate(source):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    docs = base_resources() if source == "base" else rendered(source)
    core = [d for d in docs if not d["apiVersion"].startswith("ray.io/")]
    assert core, "expected the storage ConfigMap"
    for doc in core:
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


@lru_cache(maxsize=None)
def crd_schema(kind: str) -> dict:
    path = CRDS / CRD_FILES[kind]
    crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # 1 MB each
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return version["schema"]["openAPIV3Schema"]


@lru_cache(maxsize=None)
def validator(kind: str):
    import jsonschema

    schema = crd_schema(kind)
    return jsonschema.validators.validator_for(schema)(schema)


def unknown_fields(node, schema: dict, where: str = "") -> list[str]:
    """Keys the schema does not declare (the API server would drop them without a word)."""
    if isinstance(node, dict):
        props = schema.get("properties")
        if props is None or schema.get("x-kubernetes-preserve-unknown-fields"):
            return []
        found = []
        for key, value in node.items():
            if key not in props:
                if not schema.get("additionalProperties"):
                    found.append(f"{where}.{key}")
                continue
            found += unknown_fields(value, props[key], f"{where}.{key}")
        return found
    if isinstance(node, list) and "items" in schema:
        return [
            u for i, item in enumerate(node) for u in unknown_fields(item, schema["items"], f"{where}[{i}]")
        ]
    return []


@pytest.mark.parametrize("source", ["base", "dev", "prod"])
def test_kuberay_kinds_pass_their_crd_schemas(source):
    pytest.importorskip("jsonschema")
    if not CRDS.is_dir():
        pytest.skip(f"KubeRay CRD schemas not present at {CRDS} (they are not part of this repository)")
    docs = base_resources() if source == "base" else rendered(source)
    ray_docs = [d for d in docs if d["apiVersion"] == "ray.io/v1"]
    assert {d["kind"] for d in ray_docs} == {"RayJob", "RayService"}
    for doc in ray_docs:
        schema = crd_schema(doc["kind"])
        validator(doc["kind"]).validate(doc)
        assert unknown_fields(doc["spec"], schema["properties"]["spec"], "spec") == [], doc["metadata"][
            "name"
        ]


def test_the_schema_check_catches_a_typo():
    if not CRDS.is_dir():
        pytest.skip(f"KubeRay CRD schemas not present at {CRDS}")
    doc = next(d for d in base_resources() if d["kind"] == "RayJob")
    doc["spec"]["rayClusterSpec"]["enableIntreeAutoscaling"] = True
    assert unknown_fields(doc["spec"], crd_schema("RayJob")["properties"]["spec"], "spec") == [
        "spec.rayClusterSpec.enableIntreeAutoscaling"
    ]


# ------------------------------------------------------------------------------------------------
# Serve config
# ------------------------------------------------------------------------------------------------


def rayservices(docs) -> list[dict]:
    return [d for d in docs if d["kind"] == "RayService"]


@pytest.mark.parametrize("manifest", sorted(sync_serve_config.TARGETS))
def test_serve_config_v2_is_serve_config_yaml_plus_declared_differences(manifest):
    from ray.serve.schema import ServeDeploySchema

    doc = next(d for d in documents(K8S / manifest) if d["kind"] == "RayService")
    actual = yaml.safe_load(doc["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(actual)
    assert actual == sync_serve_config.expected_serve_config(sync_serve_config.TARGETS[manifest]), (
        f"{manifest} has drifted from serve/config.yaml: run python k8s/sync_serve_config.py"
    )


def test_sync_script_check_mode_agrees():
    result = subprocess.run(
        [sys.executable, str(K8S / "sync_serve_config.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout


def test_serve_bundle_is_where_the_distill_job_writes_it():
    storage = next(d for d in base_resources() if d["kind"] == "ConfigMap")["data"]
    distill = next(d for d in base_resources() if d["metadata"]["name"] == "s2o-distill")
    assert "--out ${S2O_RUNS}/acd" in distill["spec"]["entrypoint"]
    assert sync_serve_config.BUNDLE == storage["S2O_RUNS"] + "/acd/bundle"
    dev_storage = next(d for d in documents(K8S / "overlays" / "dev" / "storage-config.yaml"))["data"]
    assert sync_serve_config.DEV_BUNDLE == dev_storage["S2O_RUNS"] + "/acd/bundle"
    for manifest, bundle in (
        ("base/rayservice-student.yaml", sync_serve_config.BUNDLE),
        ("overlays/dev/rayservice-student.yaml", sync_serve_config.DEV_BUNDLE),
    ):
        assert (
            sync_serve_config.expected_serve_config(sync_serve_config.TARGETS[manifest])["applications"][0][
                "args"
            ]["model"]
            == bundle
        )


def test_serve_overrides_name_their_deployments():
    """Overrides address deployments by name: a deployment added or moved in serve/config.yaml cannot
    receive another's settings (SarTranslator gets the GPU, the gateway never)."""
    for manifest, overrides in sync_serve_config.TARGETS.items():
        for dotted in overrides:
            parts = dotted.split(".")
            if "deployments" in parts:
                assert not parts[parts.index("deployments") + 1].isdigit(), (
                    f"{manifest}: {dotted} numbers a deployment"
                )
        config = sync_serve_config.expected_serve_config(overrides)
        gpus_by_name = {
            d["name"]: d.get("ray_actor_options", {}).get("num_gpus", 0)
            for d in config["applications"][0]["deployments"]
        }
        assert gpus_by_name["SarGateway"] == 0
    base = sync_serve_config.expected_serve_config(sync_serve_config.TARGETS["base/rayservice-student.yaml"])
    assert {
        d["name"]: d["ray_actor_options"].get("num_gpus", 0) for d in base["applications"][0]["deployments"]
    }["SarTranslator"] == 1
    with pytest.raises(KeyError, match="no entry named 'Nowhere'"):
        sync_serve_config.expected_serve_config({"applications.s2o.deployments.Nowhere.num_replicas": 1})


@pytest.mark.parametrize("source", ["base", "dev", "prod"])
def test_rayservice_replicas_fit_the_worker_group_and_readiness_uses_healthz(source):
    docs = base_resources() if source == "base" else rendered(source)
    for service in rayservices(docs):
        serve_config = yaml.safe_load(service["spec"]["serveConfigV2"])
        deployments = {d["name"]: d for d in serve_config["applications"][0]["deployments"]}
        assert {"SarTranslator", "SarGateway"} <= set(deployments)

        def most_gpus(deployment: dict) -> float:
            replicas = deployment.get("autoscaling_config", {}).get(
                "max_replicas", deployment.get("num_replicas", 1)
            )
            return deployment.get("ray_actor_options", {}).get("num_gpus", 0) * replicas

        assert most_gpus(deployments["SarGateway"]) == 0, "the HTTP gateway needs no GPU"
        groups = ray_cluster_spec(service)["workerGroupSpecs"]
        group_gpus = sum(g["maxReplicas"] * gpus(g["template"]["spec"]["containers"][0]) for g in groups)
        needed = sum(most_gpus(d) for d in deployments.values())
        assert needed <= group_gpus
        if needed == 0:
            assert group_gpus == 0, "a CPU-only service should not hold GPUs"
        else:
            assert deployments["SarTranslator"]["ray_actor_options"]["num_gpus"] == 1
        port = serve_config["http_options"]["port"]
        for group in groups:
            probe = group["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]
            assert (probe["path"], probe["port"]) == ("/healthz", port)
        assert service["spec"]["upgradeStrategy"]["type"] == "NewCluster"


# ------------------------------------------------------------------------------------------------
# What the manifests name exists and agrees with the project
# ------------------------------------------------------------------------------------------------


def entrypoint_parts(job: dict) -> list[str]:
    return shlex.split(job["spec"]["entrypoint"])


def repo_path(image_path: str) -> Path:
    assert image_path.startswith(IMAGE_HOME + "/"), f"{image_path} is not under {IMAGE_HOME}"
    return ROOT / image_path[len(IMAGE_HOME) + 1 :]


def jobs(docs) -> list[dict]:
    return [d for d in docs if d["kind"] == "RayJob"]


def test_dockerfile_home_ray_version_and_copied_paths():
    dockerfile = (K8S / "Dockerfile").read_text()
    assert f"S2O_HOME={IMAGE_HOME}" in dockerfile
    ray_version = re.search(r"ARG RAY_VERSION=(\S+)", dockerfile).group(1)
    assert f'"ray[train,data,serve]=={ray_version}"' in (ROOT / "pyproject.toml").read_text()
    assert "rayproject/ray:${RAY_VERSION}" in dockerfile and "-gpu" in dockerfile
    for source in re.findall(r"^COPY (?:--\S+ )*(\S+) ", dockerfile, re.M):
        assert (ROOT / source).exists(), f"Dockerfile copies {source}, which is missing"
    for doc in [*base_resources(), *documents(K8S / "overlays" / "dev" / "rayservice-student.yaml")]:
        if doc["apiVersion"] == "ray.io/v1" and "rayVersion" in ray_cluster_spec(doc):
            assert ray_cluster_spec(doc)["rayVersion"] == ray_version


@pytest.mark.parametrize("source,preset", [("base", "paper"), ("dev", "tiny"), ("prod", "paper")])
def test_entrypoints_and_presets_exist(source, preset):
    docs = base_resources() if source == "base" else rendered(source)
    storage = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    if source == "dev":  # the dev overlay's ConfigMap patch merges over the base
        storage = {**next(d for d in base_resources() if d["kind"] == "ConfigMap")["data"], **storage}
    expected = {
        "ingest.py",
        "train_teacher.py",
        "distill.py",
        "train_gan.py",
        "evaluate.py",
        "translate_archive.py",
    }
    seen = set()
    for job in jobs(docs):
        parts = entrypoint_parts(job)
        assert parts[0] == "python" and repo_path(parts[1]).is_file(), parts[:2]
        seen.add(Path(parts[1]).name)
        for part in parts:
            if part.startswith(IMAGE_HOME):
                assert repo_path(part).exists(), part
            if part.startswith(IMAGE_HOME + "/configs/"):
                assert f"/configs/{preset}/" in part, (
                    f"{job['metadata']['name']} should use the {preset} preset: {part}"
                )
        for var in re.findall(r"\$\{(\w+)\}", job["spec"]["entrypoint"]):
            assert var in storage, (
                f"{job['metadata']['name']} uses ${{{var}}}, which the s2o-storage ConfigMap lacks"
            )
    assert seen == expected


@pytest.mark.parametrize("source", ["dev", "prod"])
def test_one_image_everywhere(source):
    images = {
        c["image"]
        for d in rendered(source)
        if d["apiVersion"] == "ray.io/v1"
        for t in all_pod_templates(d)
        for c in t["spec"]["containers"]
    }
    assert len(images) == 1 and "s2o-platform" in images.pop()


def test_base_containers_use_the_kustomize_image_placeholder():
    name = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())["images"][0]["name"]
    for doc in base_resources():
        if doc["apiVersion"] == "ray.io/v1":
            assert {c["image"] for t in all_pod_templates(doc) for c in t["spec"]["containers"]} == {name}


@pytest.mark.parametrize("source,preset", [("base", "paper"), ("dev", "tiny"), ("prod", "paper")])
def test_gpu_requests_match_the_scaling_of_the_configs_they_run(source, preset):
    docs = base_resources() if source == "base" else rendered(source)
    checked = 0
    for job in jobs(docs):
        parts = entrypoint_parts(job)
        script = Path(parts[1]).name
        worker_containers = [
            c for g in ray_cluster_spec(job)["workerGroupSpecs"] for c in g["template"]["spec"]["containers"]
        ]
        groups = ray_cluster_spec(job)["workerGroupSpecs"]
        if script not in TRAINING:
            if preset == "tiny":
                assert all(gpus(c) == 0 for c in worker_containers), job["metadata"]["name"]
            continue
        config = load_config(TRAINING[script], repo_path(parts[parts.index("--config") + 1]), [])
        scaling = config.scaling
        if scaling.use_gpu:
            assert all(gpus(c) == 1 for c in worker_containers), (
                "one GPU per worker pod, one Ray Train worker per GPU"
            )
            assert sum(g["maxReplicas"] for g in groups) >= scaling.num_workers
            assert sum(g["replicas"] for g in groups) >= scaling.num_workers
        else:
            assert all(gpus(c) == 0 for c in worker_containers)
            assert sum(g["maxReplicas"] for g in groups) >= 1
        assert all(cpus(c) >= scaling.cpus_per_worker for c in worker_containers)
        checked += 1
    assert checked == 3


@pytest.mark.parametrize("source", ["base", "dev", "prod"])
def test_jobs_are_bounded_authenticated_and_retry_consistently(source):
    docs = base_resources() if source == "base" else rendered(source)
    for doc in docs:
        if doc["apiVersion"] != "ray.io/v1":
            continue
        spec = ray_cluster_spec(doc)
        assert spec["authOptions"]["mode"] == "token"
        assert spec["enableInTreeAutoscaling"] is True
        secret = "s2o-s3-readonly-credentials" if doc["kind"] == "RayService" else "s2o-s3-credentials"
        for c in containers(doc):
            refs = {(k, v["name"]) for e in c.get("envFrom", []) for k, v in e.items()}
            assert refs == {("configMapRef", "s2o-storage"), ("secretRef", secret)}
    for job in jobs(docs):
        s = job["spec"]
        assert s["shutdownAfterJobFinishes"] is True and s["activeDeadlineSeconds"] > 0
        script = Path(entrypoint_parts(job)[1]).name
        if script in TRAINING or script == "translate_archive.py":  # resumable: retrying continues the work
            assert s["backoffLimit"] >= 2
        else:
            assert s["backoffLimit"] <= 1


# ------------------------------------------------------------------------------------------------
# Minimal exposure: restricted pods, read-only credentials for serving, network policies
# ------------------------------------------------------------------------------------------------

RESTRICTED_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}


def _has_writable_tmp(container: dict, pod_spec: dict) -> bool:
    empty_dirs = {v["name"] for v in pod_spec.get("volumes", []) if "emptyDir" in v}
    return any(
        m["mountPath"] == "/tmp" and m["name"] in empty_dirs for m in container.get("volumeMounts", [])
    )


@pytest.mark.parametrize("source", ["base", "dev", "prod"])
def test_every_ray_pod_runs_restricted_with_a_writable_tmp(source):
    """Every pod of every RayJob and RayService (head, workers, the job's submitter, the autoscaler sidecar):
    non-root as the rayproject images' ray user, no privilege escalation, no capabilities, a read-only
    root filesystem with an emptyDir at /tmp (Ray writes /tmp/ray; the image sends its caches there)."""
    docs = base_resources() if source == "base" else rendered(source)
    checked = 0
    for doc in (d for d in docs if d["apiVersion"] == "ray.io/v1"):
        name = doc["metadata"]["name"]
        for template in all_pod_templates(doc):
            pod = template["spec"]
            context = pod.get("securityContext", {})
            assert context.get("runAsNonRoot") is True and context.get("runAsUser") == 1000, name
            assert context.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
            for container in pod["containers"]:
                assert container.get("securityContext") == RESTRICTED_CONTAINER, f"{name}/{container['name']}"
                assert _has_writable_tmp(container, pod), f"{name}/{container['name']}: no emptyDir at /tmp"
                checked += 1
        spec = ray_cluster_spec(doc)
        if spec.get("enableInTreeAutoscaling"):
            autoscaler = spec["autoscalerOptions"]
            assert autoscaler["securityContext"] == RESTRICTED_CONTAINER, name
            assert _has_writable_tmp(autoscaler, spec["headGroupSpec"]["template"]["spec"]), name
    assert checked >= 3 * 6 + 2
    dockerfile = (K8S / "Dockerfile").read_text()
    for cache in (
        "XDG_CACHE_HOME=/tmp/",
        "TORCH_EXTENSIONS_DIR=/tmp/",
        "TRITON_HOME=/tmp",
        "MPLCONFIGDIR=/tmp/",
    ):
        assert cache in dockerfile, f"the image must keep its caches under /tmp: {cache}"


@pytest.mark.parametrize("source", ["base", "dev", "prod"])
def test_serving_pods_hold_only_the_read_only_s3_credentials(source):
    docs = base_resources() if source == "base" else rendered(source)
    services = rayservices(docs)
    assert services
    for service in services:
        for template in all_pod_templates(service):
            for container in template["spec"]["containers"]:
                secrets = {e["secretRef"]["name"] for e in container.get("envFrom", []) if "secretRef" in e}
                secrets |= {
                    e["valueFrom"]["secretKeyRef"]["name"]
                    for e in container.get("env", [])
                    if "secretKeyRef" in e.get("valueFrom", {})
                }
                assert secrets == {"s2o-s3-readonly-credentials"}, (
                    f"{service['metadata']['name']}/{container['name']}"
                )
        assert "s2o-s3-credentials" not in yaml.safe_dump(service), (
            "the read-write Secret must not reach serving pods"
        )


def _labels(doc: dict) -> dict:
    labels = [t.get("metadata", {}).get("labels", {}) for t in pod_templates(doc)]
    assert labels and all(label == labels[0] for label in labels), (
        f"{doc['metadata']['name']}: head and workers differ"
    )
    return labels[0]


def _selects(selector: dict, labels: dict) -> bool:
    assert set(selector) <= {"matchLabels"}, "only matchLabels selectors are used here"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _ports(rule: dict) -> set[int] | None:
    return None if "ports" not in rule else {p["port"] for p in rule["ports"]}


@pytest.mark.parametrize("source", ["base", "dev", "prod"])
def test_a_network_policy_fences_every_ray_cluster(source):
    """Each Ray cluster's pods are selected by one NetworkPolicy: all ports only between its own pods;
    from elsewhere, Serve's port 8000 (serving) and the dashboard/jobs port 8265, nothing else."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    docs = base_resources() if source == "base" else rendered(source)
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    for policy in policies:
        kubernetes_validate.validate(policy, kubernetes_validate.latest_version(), strict=True)
    for doc in (d for d in docs if d["apiVersion"] == "ray.io/v1"):
        name, labels = doc["metadata"]["name"], _labels(doc)
        serving = doc["kind"] == "RayService"
        assert labels.get("app.kubernetes.io/instance") == name
        assert labels.get("app.kubernetes.io/component") == ("ray-serving" if serving else "ray-job")
        selecting = [p for p in policies if _selects(p["spec"]["podSelector"], labels)]
        assert len(selecting) == 1, f"{name}: {len(selecting)} NetworkPolicies select its pods"
        spec = selecting[0]["spec"]
        assert (
            "Ingress" in spec["policyTypes"]
            and spec["podSelector"]["matchLabels"]["app.kubernetes.io/instance"] == name
        )
        open_ports: set[int] = set()
        for rule in spec["ingress"]:
            peers = rule["from"]
            own = all(
                set(p) == {"podSelector"}
                and p["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/instance") == name
                for p in peers
            )
            if own:
                continue  # the cluster's own pods: every port (Ray picks most of them at start-up)
            ports = _ports(rule)
            assert ports is not None, f"{name}: a rule opens every port to {peers}"
            open_ports |= ports
            for peer in peers:
                assert "ipBlock" not in peer, f"{name}: no address ranges"
                if "namespaceSelector" in peer:
                    assert (
                        peer["namespaceSelector"].get("matchLabels", {}).get("kubernetes.io/metadata.name")
                    ), f"{name}: a namespace is named, never all namespaces"
        assert open_ports == ({8000, 8265} if serving else {8265}), f"{name}: {open_ports}"
        if serving:
            serve_rule = next(r for r in spec["ingress"] if _ports(r) == {8000})
            assert {"podSelector": {}} in serve_rule["from"], (
                "Serve's port must be open to the whole namespace"
            )
        operator = [r for r in spec["ingress"] if _ports(r) == {8265}]
        assert any(
            p.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name")
            == "kuberay"
            for r in operator
            for p in r["from"]
        ), f"{name}: the KubeRay operator must reach the dashboard"
        if not serving:
            assert any({"podSelector": {}} in r["from"] for r in operator), (
                f"{name}: the submitter pod must reach 8265"
            )
