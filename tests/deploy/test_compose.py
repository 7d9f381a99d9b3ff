"""deploy/docker-compose.yml against the contract (no Docker engine here, so the file is read, not run):
every YAML in deploy/ parses, the services and their wiring, the gateway's variables as settings.py
names them, one litellm_config.yaml for both LiteLLM and the gateway, one secret for LiteLLM's master key
and CREDITGATE_UPSTREAM_KEY, migrations as a one-shot step as the owner, the gateway as a role without
DDL, and images named without a registry host."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from proxy.app import load_config
from proxy.config.settings import Settings
from tests.deploy.conftest import DEPLOY, ROOT, Dockerfile, known_variables, required_variables, yaml_docs

COMPOSE = DEPLOY / "docker-compose.yml"
SERVICES = {"postgres", "redis", "litellm", "migrate", "gateway", "prometheus", "grafana"}
SECRETS = ("CREDITGATE_UPSTREAM_KEY", "CREDITGATE_ADMIN_TOKEN", "CREDITGATE_BYOK_KEYS")


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    compose = yaml.safe_load(COMPOSE.read_text())
    assert set(compose["services"]) == SERVICES
    return dict(compose["services"])


def interpolated(value: str) -> str:
    """The variable a `${NAME...}` value takes from the environment / .env."""
    match = re.fullmatch(r"\$\{([A-Z0-9_]+)(?::?[-?][^}]*)?\}", value)
    assert match, f"{value!r} is not one ${{VARIABLE}}"
    return match.group(1)


def default_path(value: str) -> Path:
    """A bind mount's source with `${VAR:-default}` replaced by its default, relative to deploy/."""
    return DEPLOY / re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def mounts(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """target -> (source, read only) of a service's short-syntax volumes."""
    out = {}
    for volume in service.get("volumes", []):
        parts = volume.rsplit(":", 2) if volume.endswith((":ro", ":rw")) else [*volume.rsplit(":", 1), "rw"]
        out[parts[1]] = (parts[0], parts[2] == "ro")
    return out


def test_every_yaml_file_in_deploy_parses() -> None:
    files = sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yml", ".yaml"))
    assert len(files) >= 15
    for path in files:
        assert yaml_docs(path), f"{path} is empty"


def test_no_image_is_named_by_registry_host(services: dict[str, Any]) -> None:
    images = [s["image"] for s in services.values() if "image" in s]
    images += [rest.split()[0] for path in (ROOT / "Dockerfile", DEPLOY / "litellm" / "Dockerfile")
               for stage in Dockerfile.read(path).stages for word, rest in stage if word == "FROM"]
    for image in images:
        first = image.split("/")[0]
        assert "/" not in image or not ("." in first or ":" in first or first == "localhost"), image


def test_litellm_is_built_from_the_pinned_versions_the_tests_run(services: dict[str, Any]) -> None:
    assert services["litellm"]["build"] == "./litellm"
    dockerfile = Dockerfile.read(DEPLOY / "litellm" / "Dockerfile")
    assert [rest for word, rest in dockerfile.final if word == "FROM"] == ["python:3.11-slim"]
    pins = re.findall(r"'([a-z]+(?:\[proxy\])?==[0-9.]+)'", (DEPLOY / "litellm" / "Dockerfile").read_text())
    assert pins == ["litellm[proxy]==1.106.2", "prisma==0.15.0"]
    makefile = re.findall(r"'([a-z]+(?:\[proxy\])?==[0-9.]+)'", (ROOT / "Makefile").read_text())
    assert set(pins) <= set(makefile), "deploy/litellm/Dockerfile and the Makefile's .venv-litellm must pin the same"
    assert dockerfile.last("USER").split(":")[0] not in ("root", "0")


def test_litellm_and_the_gateway_share_one_config_file_and_one_key(services: dict[str, Any]) -> None:
    litellm, gateway = services["litellm"], services["gateway"]
    config_arg = litellm["command"][litellm["command"].index("--config") + 1]
    source, read_only = mounts(litellm)[config_arg]
    gw_env = gateway["environment"]
    gw_dir = Path(gw_env["CREDITGATE_LITELLM_CONFIG"]).parent
    gw_source, gw_read_only = mounts(gateway)[str(gw_dir)]
    assert read_only and gw_read_only
    assert source == f"{gw_source}/{Path(gw_env['CREDITGATE_LITELLM_CONFIG']).name}"
    assert Path(gw_env["CREDITGATE_POLICY_CONFIG"]).parent == gw_dir
    # LiteLLM's master key is the key the gateway sends: the same variable of .env
    assert litellm["environment"]["LITELLM_MASTER_KEY"] == gw_env["CREDITGATE_UPSTREAM_KEY"]
    assert interpolated(gw_env["CREDITGATE_UPSTREAM_KEY"]) == "CREDITGATE_UPSTREAM_KEY"
    litellm_config = yaml.safe_load(default_path(source).read_text())
    assert litellm_config["general_settings"]["master_key"] == "os.environ/LITELLM_MASTER_KEY"
    assert litellm_config["router_settings"]["disable_cooldowns"] is True
    # LiteLLM is reached by the gateway only: never published on the host
    assert "ports" not in litellm
    port = litellm["command"][litellm["command"].index("--port") + 1]
    assert litellm["expose"] == [port] and gw_env["CREDITGATE_UPSTREAM_URL"] == f"http://litellm:{port}"


def test_the_example_configuration_is_one_the_gateway_accepts(services: dict[str, Any]) -> None:
    directory = default_path(mounts(services["gateway"])["/etc/creditgate"][0])
    env = {"CREDITGATE_DATABASE_URL": "postgresql://u@h/d", "CREDITGATE_REDIS_URL": "redis://h:6379/0",
           "CREDITGATE_UPSTREAM_URL": "http://litellm:4000", "CREDITGATE_UPSTREAM_KEY": "k",
           "CREDITGATE_ADMIN_TOKEN": "a" * 32, "CREDITGATE_BYOK_KEYS": "A" * 43 + "=",
           "CREDITGATE_LITELLM_CONFIG": str(directory / "litellm_config.yaml"),
           "CREDITGATE_POLICY_CONFIG": str(directory / "policy.yaml")}
    policy, catalogue = load_config(Settings.from_env(env))
    assert [level.name for level in policy.power_levels] == ["eco", "balanced", "precision"]


def test_the_gateway_service_matches_the_contract_and_the_image(services: dict[str, Any]) -> None:
    gateway = services["gateway"]
    env: dict[str, str] = gateway["environment"]
    assert set(env) <= known_variables(), set(env) - known_variables()
    assert required_variables() <= set(env)
    for name in SECRETS:
        assert interpolated(env[name]) == name
    image = Dockerfile.read(ROOT / "Dockerfile")
    assert gateway["build"] == ".." and gateway["command"] == image.exec_form("CMD")
    assert gateway["healthcheck"]["test"] == ["CMD", *image.exec_form("HEALTHCHECK")]
    assert env["CREDITGATE_HOST"] == "0.0.0.0"
    published = [p.rsplit(":", 1) for p in gateway["ports"]]
    assert [container for _, container in published] == [env["CREDITGATE_PORT"]]
    assert all(host.startswith("127.0.0.1:") for host, _ in published)
    assert gateway["depends_on"] == {"migrate": {"condition": "service_completed_successfully"},
                                     "redis": {"condition": "service_healthy"},
                                     "litellm": {"condition": "service_healthy"}}
    assert urlsplit(env["CREDITGATE_REDIS_URL"]).hostname == "redis"
    volumes = yaml.safe_load(COMPOSE.read_text())["volumes"]
    assert mounts(gateway)[env["CREDITGATE_SPOOL_DIR"]][0] in volumes, "the settlement spool needs a named volume"
    drain = float(env["CREDITGATE_DRAIN_SECONDS"])
    assert float(gateway["stop_grace_period"].removesuffix("s")) >= drain + 10


def test_migrations_run_once_as_the_owner_and_the_gateway_connects_without_ddl(services: dict[str, Any]) -> None:
    migrate, gateway, postgres = services["migrate"], services["gateway"], services["postgres"]
    assert migrate["image"] == gateway["image"] and migrate["build"] == gateway["build"]
    assert migrate["command"][:3] == ["creditgate", "migrate", "--grant"]
    role = migrate["command"][3]
    assert set(migrate["environment"]) == {"CREDITGATE_DATABASE_URL"}
    owner = urlsplit(migrate["environment"]["CREDITGATE_DATABASE_URL"])
    runtime = urlsplit(gateway["environment"]["CREDITGATE_DATABASE_URL"])
    assert (owner.username, runtime.username) == (postgres["environment"]["POSTGRES_USER"], role)
    assert owner.hostname == runtime.hostname == "postgres" and owner.path == runtime.path
    assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert migrate["restart"] == "no" and migrate["healthcheck"] == {"disable": True}
    init = mounts(postgres)["/docker-entrypoint-initdb.d/10-app-role.sh"][0]
    assert f"CREATE ROLE {role} LOGIN" in default_path(init).read_text()


def test_every_long_running_service_has_a_healthcheck_and_gates_what_needs_it(services: dict[str, Any]) -> None:
    for name, service in services.items():
        if name != "migrate":
            test = service["healthcheck"]["test"]
            assert isinstance(test, list) and test[0] == "CMD", name  # exec form, no shell
    assert services["grafana"]["depends_on"] == {"prometheus": {"condition": "service_healthy"}}


def test_prometheus_and_grafana_are_provisioned_from_deploy(services: dict[str, Any]) -> None:
    prometheus = mounts(services["prometheus"])
    config_path = services["prometheus"]["command"][0].split("=", 1)[1]
    config = yaml.safe_load(default_path(prometheus[config_path][0]).read_text())
    (job,) = config["scrape_configs"]
    port = services["gateway"]["environment"]["CREDITGATE_PORT"]
    assert (job["job_name"], job["metrics_path"], job["static_configs"]) == (
        "creditgate", "/metrics", [{"targets": [f"gateway:{port}"]}])
    for rule_file in config["rule_files"]:
        assert str(Path(config_path).parent / rule_file) in prometheus
    grafana = mounts(services["grafana"])
    provisioning = default_path(grafana["/etc/grafana/provisioning"][0])
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert source["url"] == "http://prometheus:9090" and source["uid"] == "prometheus"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "creditgate.yml").read_text())["providers"]
    dashboards = default_path(grafana[provider["options"]["path"]][0])
    assert (dashboards / "creditgate.json").is_file()


def test_every_variable_compose_reads_is_in_the_env_example() -> None:
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", COMPOSE.read_text()))
    example = {line.split("=", 1)[0] for line in (DEPLOY / ".env.example").read_text().splitlines()
               if line and not line.startswith("#")}
    assert used == example
