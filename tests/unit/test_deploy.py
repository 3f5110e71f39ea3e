"""The deployment files: docker-compose.yml validated by Compose itself (`docker compose config`, or Debian's
`docker-compose`, which implements the same Compose Specification; no Docker engine is needed or runs here),
and checked against the settings, the Dockerfile, nginx and Prometheus configuration."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentloop.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SERVICES = {
    "nginx",
    "api-1",
    "api-2",
    "worker",
    "migrate",
    "postgres",
    "redis",
    "ollama",
    "prometheus",
    "grafana",
}


def compose_command() -> list[str]:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    reason = "neither `docker compose` nor `docker-compose` is installed (scripts/services.sh installs it)"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    result = subprocess.run(
        [*compose_command(), "-f", str(ROOT / "docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env=os.environ | {"POSTGRES_PASSWORD": "s3cret"},
    )
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


def test_compose_file_is_valid_and_has_every_service(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == SERVICES


def test_api_replicas_and_worker_share_postgres_and_redis(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("api-1", "api-2", "worker"):
        env = services[name]["environment"]
        assert env["AGENTLOOP_DATABASE_URL"].startswith(
            "postgresql+asyncpg://agentloop:s3cret@postgres:5432/"
        )
        assert env["AGENTLOOP_REDIS_URL"] == "redis://redis:6379/0"
        assert env["AGENTLOOP_AUTO_MIGRATE"] == "false"  # only `migrate` migrates
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["api-1"]["environment"]["AGENTLOOP_INFERENCE_BACKEND"] == "ollama"
    assert services["worker"]["command"] == ["worker"]
    gpu = services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"]


def test_every_agentloop_variable_in_compose_is_a_real_setting(compose: dict[str, Any]) -> None:
    known = {f"AGENTLOOP_{name.upper()}" for name in Settings.model_fields}
    used = {key for service in compose["services"].values() for key in (service.get("environment") or {})}
    assert {key for key in used if key.startswith("AGENTLOOP_")} <= known


def test_dockerfile_is_multi_stage_and_runs_as_a_non_root_user() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+\S+\s+AS\s+(\w+)", text, flags=re.MULTILINE)
    assert stages == ["build", "runtime"]
    runtime = text.split("AS runtime", 1)[1]
    users = re.findall(r"^USER\s+(\S+)", runtime, flags=re.MULTILINE)
    assert users and users[-1] not in ("root", "0")
    assert "COPY --from=build" in runtime and "build-essential" not in runtime


def test_nginx_balances_both_replicas_and_prometheus_scrapes_them() -> None:
    nginx = (ROOT / "deploy" / "nginx.conf").read_text()
    assert re.findall(r"server (api-\d):8000", nginx) == ["api-1", "api-2"]
    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    job = prometheus["scrape_configs"][0]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["api-1:8000", "api-2:8000"]
