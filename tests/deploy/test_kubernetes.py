"""deploy/kubernetes/ against the contract (no cluster here: the manifests are read): kustomization lists
them all, the gateway is a sidecar container in LiteLLM's pod with its variables as settings.py names them,
secrets only by reference (the one example file has placeholders and is not applied), probes on /healthz
and /readyz, resources, shutdown that fits the drain, the migration Job as the owner, and the Service,
PodDisruptionBudget, HorizontalPodAutoscaler, ServiceMonitor and PrometheusRule wired to the pod."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.deploy.conftest import ALERTS, DEPLOY, ROOT, Dockerfile, known_variables, required_variables, yaml_docs

K8S = DEPLOY / "kubernetes"
SECRET_VARIABLES = {"CREDITGATE_DATABASE_URL", "CREDITGATE_REDIS_URL", "CREDITGATE_UPSTREAM_KEY",
                    "CREDITGATE_ADMIN_TOKEN", "CREDITGATE_BYOK_KEYS"}


@pytest.fixture(scope="module")
def objects() -> dict[str, Any]:
    """kind -> the one object of that kind that kustomization.yaml applies."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    found: dict[str, Any] = {}
    for name in kustomization["resources"]:
        for doc in yaml_docs(K8S / name):
            assert {"apiVersion", "kind", "metadata"} <= set(doc) and doc["metadata"]["name"], name
            assert doc["kind"] not in found, f"two {doc['kind']} objects"
            found[doc["kind"]] = doc
    return found


def secrets_example() -> dict[str, dict[str, str]]:
    return {d["metadata"]["name"]: d["stringData"] for d in yaml_docs(K8S / "secret.example.yaml")}


def containers(objects: dict[str, Any]) -> dict[str, Any]:
    return {c["name"]: c for c in objects["Deployment"]["spec"]["template"]["spec"]["containers"]}


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e for e in container["env"]}


def test_kustomization_applies_every_manifest_but_the_example_secret(objects: dict[str, Any]) -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert set(kustomization["resources"]) == files
    assert set(objects) == {"Namespace", "ConfigMap", "Job", "Deployment", "Service", "PodDisruptionBudget",
                            "HorizontalPodAutoscaler", "NetworkPolicy", "ServiceMonitor", "PrometheusRule"}
    assert "Secret" not in objects
    for value in (v for data in secrets_example().values() for v in data.values()):
        assert "REPLACE_ME" in value  # placeholders only


def test_the_gateway_is_a_sidecar_in_litellms_pod_and_only_it_is_reachable(objects: dict[str, Any]) -> None:
    pod = containers(objects)
    assert set(pod) == {"litellm", "creditgate"}
    litellm, gateway = pod["litellm"], pod["creditgate"]
    args = litellm["args"]
    assert args[args.index("--host") + 1] == "127.0.0.1"  # the pod's loopback: billing cannot be bypassed
    env = env_of(gateway)
    assert env["CREDITGATE_UPSTREAM_URL"]["value"] == f"http://127.0.0.1:{args[args.index('--port') + 1]}"
    assert [p["containerPort"] for p in gateway["ports"]] == [int(env["CREDITGATE_PORT"]["value"])]
    assert "ports" not in litellm
    assert env["CREDITGATE_HOST"]["value"] == "0.0.0.0"
    assert objects["NetworkPolicy"]["spec"]["ingress"] == [
        {"ports": [{"port": int(env["CREDITGATE_PORT"]["value"]), "protocol": "TCP"}]}]


def test_the_gateway_variables_match_the_contract_and_secrets_are_references(objects: dict[str, Any]) -> None:
    pod = containers(objects)
    env = env_of(pod["creditgate"])
    assert set(env) <= known_variables(), set(env) - known_variables()
    assert required_variables() <= set(env)
    examples = secrets_example()
    for name, entry in env.items():
        if name in SECRET_VARIABLES:
            ref = entry["valueFrom"]["secretKeyRef"]
            assert "value" not in entry and ref["key"] in examples[ref["name"]], name
        else:
            assert isinstance(entry["value"], str), name
    # LiteLLM's master key is the same Secret key as the gateway's CREDITGATE_UPSTREAM_KEY
    master = env_of(pod["litellm"])["LITELLM_MASTER_KEY"]["valueFrom"]["secretKeyRef"]
    assert master == env["CREDITGATE_UPSTREAM_KEY"]["valueFrom"]["secretKeyRef"]
    for container in pod.values():
        for entry in container["env"]:
            assert "value" not in entry or not any(w in entry["name"] for w in ("KEY", "TOKEN", "PASSWORD"))


def test_one_configmap_feeds_both_containers_with_the_example_configuration(objects: dict[str, Any]) -> None:
    data = objects["ConfigMap"]["data"]
    assert data == {"litellm_config.yaml": (DEPLOY / "config" / "litellm_config.yaml").read_text(),
                    "policy.yaml": (DEPLOY / "config" / "policy.yaml").read_text()}
    spec = objects["Deployment"]["spec"]["template"]["spec"]
    (volume,) = [v for v in spec["volumes"] if "configMap" in v]
    assert volume["configMap"]["name"] == objects["ConfigMap"]["metadata"]["name"]
    pod = containers(objects)

    def mounted(container: dict[str, Any], path: str) -> str:
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
        assert mount["readOnly"] is True and Path(path).parent == Path(mount["mountPath"])
        assert Path(path).name in data
        return Path(path).name

    args = pod["litellm"]["args"]
    env = env_of(pod["creditgate"])
    assert mounted(pod["litellm"], args[args.index("--config") + 1]) == "litellm_config.yaml"
    assert mounted(pod["creditgate"], env["CREDITGATE_LITELLM_CONFIG"]["value"]) == "litellm_config.yaml"
    assert mounted(pod["creditgate"], env["CREDITGATE_POLICY_CONFIG"]["value"]) == "policy.yaml"


def test_probes_resources_and_the_image_command(objects: dict[str, Any]) -> None:
    pod = containers(objects)
    gateway = pod["creditgate"]
    assert gateway["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert gateway["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert [p["name"] for p in gateway["ports"]] == ["http"]
    assert gateway["args"] == Dockerfile.read(ROOT / "Dockerfile").exec_form("CMD")
    for container in pod.values():
        assert {"cpu", "memory"} <= set(container["resources"]["requests"]), container["name"]
        assert {"cpu", "memory"} <= set(container["resources"]["limits"]), container["name"]
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        first = container["image"].split("/")[0]
        assert "/" not in container["image"] or "." not in first, container["image"]
    assert gateway["securityContext"]["readOnlyRootFilesystem"] is True
    mounted = {m["mountPath"] for m in gateway["volumeMounts"]}
    assert {env_of(gateway)["CREDITGATE_SPOOL_DIR"]["value"], "/tmp"} <= mounted
    assert "exec" in pod["litellm"]["livenessProbe"]  # it listens on the pod's loopback, out of the kubelet's reach


def test_shutdown_fits_the_drain(objects: dict[str, Any]) -> None:
    spec = objects["Deployment"]["spec"]["template"]["spec"]
    pod = containers(objects)

    def pre_stop(name: str) -> int:
        command = pod[name]["lifecycle"]["preStop"]["exec"]["command"]
        assert command[0] == "sleep"
        return int(command[1])

    drain = float(env_of(pod["creditgate"])["CREDITGATE_DRAIN_SECONDS"]["value"])
    grace = spec["terminationGracePeriodSeconds"]
    # the gateway: sleep while endpoints drop the pod, drain, settle and exit, all inside the grace period
    assert pre_stop("creditgate") + drain + 15 <= grace
    # LiteLLM outlives every request the gateway still relays
    assert pre_stop("litellm") >= pre_stop("creditgate") + drain and pre_stop("litellm") < grace
    assert objects["Deployment"]["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_the_migration_job_runs_as_the_owner_and_grants_the_runtime_role(objects: dict[str, Any]) -> None:
    job = objects["Job"]["spec"]["template"]["spec"]
    (container,) = job["containers"]
    assert container["args"][:3] == ["creditgate", "migrate", "--grant"]
    role = container["args"][3]
    assert job["restartPolicy"] == "Never"
    (entry,) = container["env"]
    assert entry["name"] == "CREDITGATE_DATABASE_URL"
    owner_ref = entry["valueFrom"]["secretKeyRef"]
    runtime_ref = env_of(containers(objects)["creditgate"])["CREDITGATE_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    assert owner_ref["name"] != runtime_ref["name"]
    examples = secrets_example()
    assert urlsplit(examples[runtime_ref["name"]][runtime_ref["key"]]).username == role
    assert urlsplit(examples[owner_ref["name"]][owner_ref["key"]]).username != role
    assert container["image"].split(":")[0] == containers(objects)["creditgate"]["image"].split(":")[0]


def test_service_pdb_hpa_and_servicemonitor_select_the_pod(objects: dict[str, Any]) -> None:
    deployment = objects["Deployment"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = objects["Service"]
    assert service["spec"]["selector"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == "http" and port["port"] == 8080
    assert objects["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = objects["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                     "name": deployment["metadata"]["name"]}
    assert 2 <= hpa["minReplicas"] < hpa["maxReplicas"]
    monitor = objects["ServiceMonitor"]["spec"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == (port["name"], "/metrics")
    # the alerts select job="creditgate": the Prometheus Operator names the job after the Service
    assert service["metadata"]["name"] == "creditgate"


def test_the_prometheusrule_is_alerts_yml(objects: dict[str, Any]) -> None:
    assert objects["PrometheusRule"]["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"]
