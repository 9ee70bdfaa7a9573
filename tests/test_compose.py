"""docker-compose.yml, the Dockerfiles and prefect.yaml, checked without a Docker engine: the
files parse, every service can start and says when it is healthy, the worker gets every setting
the code reads, the README's ports are the published ones, and every file named exists."""

from __future__ import annotations

import importlib
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tasks.config import Settings, load_settings
from tasks.orchestration import RESULT_STORAGE_BLOCK

REPO = Path(__file__).resolve().parents[1]
COMPOSE: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
PREFECT_YAML: dict[str, Any] = yaml.safe_load((REPO / "prefect.yaml").read_text())
WORKER = "prefect-worker"
UI_PORTS = {
    "prefect-server": 4200, "mlflow": 5000, "minio": 9001, "thingsboard": 8080, "api": 8000,
    "jupyterlab": 8888,
}  # fmt: skip
API = "api"
JUPYTERLAB = "jupyterlab"
INTERPOLATION = re.compile(r"(?<!\$)\$\{(\w+)(?::?-([^}]*))?\}")  # ${VAR:-default}, not $${VAR}


def setting_variables() -> set[str]:
    """The environment variable of every Settings field, as .env.example documents it."""
    names = set()
    for name, field in Settings.model_fields.items():
        aliases = getattr(field.validation_alias, "choices", None) or [f"RECSYS_{name.upper()}"]
        names.add(str(aliases[0]))
    return names


def one_shot_services() -> set[str]:
    return {
        name
        for service in SERVICES.values()
        for name, dependency in (service.get("depends_on") or {}).items()
        if dependency.get("condition") == "service_completed_successfully"
    }


def environment(service: str) -> dict[str, str | None]:
    env = SERVICES[service].get("environment") or {}
    assert isinstance(env, dict), f"{service}: environment as a mapping"
    return {key: None if value is None else str(value) for key, value in env.items()}


def interpolated(value: str) -> str:
    """``value`` as compose resolves it with an empty .env: every ${VAR:-default} -> default."""
    return INTERPOLATION.sub(lambda match: match.group(2) or "", value)


def all_strings(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [s for key, value in node.items() for s in [str(key), *all_strings(value)]]
    if isinstance(node, list):
        return [s for item in node for s in all_strings(item)]
    return [str(node)] if node is not None else []


def published_ports(service: str) -> set[int]:
    return {int(str(port).split(":")[-2]) for port in SERVICES[service].get("ports", [])}


def readme_section(title: str) -> str:
    readme = (REPO / "README.md").read_text()
    start = readme.index(f"## {title}")
    return readme[start : readme.index("\n## ", start + 1)]


def deploy_section() -> str:
    return readme_section("Deployments and the full stack")


# --- the compose file -------------------------------------------------------------------------
def test_compose_has_the_whole_stack() -> None:
    assert set(SERVICES) == {
        "postgres", "minio", "minio-buckets", "mlflow", "prefect-server", WORKER, "thingsboard",
        API, JUPYTERLAB,
    }  # fmt: skip
    assert one_shot_services() == {"minio-buckets"}


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_every_service_has_an_image_or_a_build(service: str) -> None:
    assert "image" in SERVICES[service] or "build" in SERVICES[service]


@pytest.mark.parametrize("service", sorted(set(SERVICES) - one_shot_services()))
def test_every_long_running_service_has_a_healthcheck(service: str) -> None:
    check = SERVICES[service].get("healthcheck") or {}

    assert check.get("test") and check["test"][0] in {"CMD", "CMD-SHELL"}
    assert check.get("interval") and check.get("retries")


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_dependencies_wait_until_healthy_or_done(service: str) -> None:
    for name, dependency in (SERVICES[service].get("depends_on") or {}).items():
        assert name in SERVICES
        expected = (
            "service_completed_successfully" if name in one_shot_services() else "service_healthy"
        )
        assert dependency == {"condition": expected}, f"{service} -> {name}"


def test_worker_waits_for_every_service_it_uses() -> None:
    assert set(SERVICES[WORKER]["depends_on"]) == set(SERVICES) - {WORKER, API, JUPYTERLAB}


def test_api_waits_for_every_service_it_uses_and_checks_its_health() -> None:
    assert set(SERVICES[API]["depends_on"]) == set(SERVICES) - {WORKER, API, JUPYTERLAB}
    assert "/health" in " ".join(SERVICES[API]["healthcheck"]["test"])
    assert SERVICES[API]["command"] == ["python", "-m", "api"]
    assert environment(API)["RECSYS_API_HOST"] == "0.0.0.0"


def test_jupyterlab_waits_for_the_stores_the_notebook_reads() -> None:
    """The warehouse, the lake and MLflow; not the API (healthy only once a champion exists:
    the notebook skips its request when none answers) nor Prefect."""
    assert set(SERVICES[JUPYTERLAB]["depends_on"]) == {"postgres", "minio", "minio-buckets",
                                                       "mlflow"}  # fmt: skip


def test_jupyterlab_serves_the_mounted_notebooks_with_the_stack_settings() -> None:
    service, env = SERVICES[JUPYTERLAB], environment(JUPYTERLAB)
    command = " ".join(service["command"])

    assert service["image"] == SERVICES[WORKER]["image"]  # the project image
    assert service["build"] == SERVICES[WORKER]["build"]
    assert "./notebooks:/app/notebooks" in service["volumes"]
    assert "--ServerApp.root_dir=/app/notebooks" in command and "--port=8888" in command
    assert "['optional-dependencies']['notebook']" in command and "-c constraints.txt" in command
    assert set(environment(API)) <= set(env)  # the stack's settings (*recsys-environment)
    assert env["RECSYS_DATABASE_URL"] == environment(WORKER)["RECSYS_DATABASE_URL"]
    assert env["MLFLOW_TRACKING_URI"] == environment(WORKER)["MLFLOW_TRACKING_URI"]
    assert env["RECSYS_API_HOST"] == API  # where the notebook asks for recommendations


def test_jupyterlab_never_starts_without_a_token() -> None:
    service = SERVICES[JUPYTERLAB]
    command = service["command"][-1]
    guard = interpolated(command).split(" && ")[0].replace("$$", "$")

    assert environment(JUPYTERLAB)["JUPYTER_TOKEN"] == "${JUPYTER_TOKEN:-}"
    assert "JUPYTER_TOKEN" in (REPO / ".env.example").read_text()
    unset = subprocess.run(["sh", "-c", guard + " && echo started"], env={"PATH": "/usr/bin:/bin"},
                           capture_output=True, text=True)  # fmt: skip
    given = subprocess.run(["sh", "-c", guard + " && echo started"],
                           env={"PATH": "/usr/bin:/bin", "JUPYTER_TOKEN": "t"},
                           capture_output=True, text=True)  # fmt: skip
    assert unset.returncode == 1 and "JUPYTER_TOKEN is not set" in unset.stderr
    assert given.returncode == 0 and given.stdout == "started\n"
    assert "JUPYTER_TOKEN" in " ".join(service["healthcheck"]["test"])


def test_notebook_group_holds_what_the_service_and_the_tests_run() -> None:
    import tomllib

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    names = {re.split(r"[<>=\[ ]", spec)[0] for spec in extras["notebook"]}
    pinned = {
        line.split("==")[0].lower() for line in (REPO / "constraints.txt").read_text().split()
    }

    assert {"jupyterlab", "nbclient", "nbformat", "ipykernel"} <= names <= pinned


def test_volumes_are_named_and_declared() -> None:
    declared = set(COMPOSE["volumes"])
    used = {
        str(volume).split(":")[0]
        for service in SERVICES.values()
        for volume in service.get("volumes", [])
        if not str(volume).startswith(".")
    }
    assert used == declared


# --- settings and credentials -----------------------------------------------------------------
def test_worker_sets_every_variable_the_code_reads() -> None:
    missing = setting_variables() - set(environment(WORKER))

    assert missing == set(), f"docker-compose.yml's worker lacks {sorted(missing)}"


def test_worker_settings_point_at_the_compose_services(
    recsys_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in environment(WORKER).items():
        if value is not None:
            monkeypatch.setenv(name, interpolated(value))

    settings = load_settings()

    assert settings.resolved_lake_url == "s3://recsys/lake" and settings.lake_is_s3
    assert settings.s3_endpoint_url == "http://minio:9000"
    assert settings.database_url is not None
    assert "@postgres:5432/recsys" in settings.database_url.get_secret_value()
    assert settings.resolved_mlflow_tracking_uri == "http://mlflow:5000"
    assert settings.prefect_api_url == "http://prefect-server:4200/api"
    assert settings.thingsboard_configured and settings.thingsboard_url == "http://thingsboard:9090"
    assert settings.work_pool == Settings.model_fields["work_pool"].default
    assert (
        str(settings.project_dir)
        == dockerfile_env(REPO / "deployments" / "Dockerfile")["RECSYS_PROJECT_DIR"]
    )


def test_worker_persists_prefect_results_in_the_minio_block() -> None:
    env = environment(WORKER)

    assert env["PREFECT_RESULTS_PERSIST_BY_DEFAULT"] == "true"
    assert env["PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK"] == f"s3-bucket/{RESULT_STORAGE_BLOCK}"
    assert (
        "save_result_storage_block" in (REPO / "deployments" / "worker-entrypoint.sh").read_text()
    )


def test_no_credential_is_written_in_the_compose_file() -> None:
    secrets = re.compile(r"(PASSWORD|SECRET|TOKEN|ACCESS_KEY)")
    for service in SERVICES:
        for name, value in environment(service).items():
            if secrets.search(name) and value:
                assert INTERPOLATION.fullmatch(value), f"{service}: {name} must come from .env"
    for text in all_strings(SERVICES):
        for password in re.findall(r"://[^:/@\s]+:([^@\s]+)@", text):
            assert INTERPOLATION.fullmatch(password), f"a password in {text!r}"


def test_compose_only_variables_are_in_env_example() -> None:
    """The credentials compose reads besides the settings (those test_config checks)."""
    example = (REPO / ".env.example").read_text()
    read = {m.group(1) for text in all_strings(COMPOSE) for m in INTERPOLATION.finditer(text)}

    assert {"POSTGRES_PASSWORD", "DB_PASSWORD_WAREHOUSE"} <= read - setting_variables()
    assert {name for name in read - setting_variables() if name not in example} == set()


def test_postgres_init_creates_the_databases_the_services_use() -> None:
    script = (REPO / "deployments" / "postgres" / "init-databases.sh").read_text()
    created = set(re.findall(r"^create_database (\w+) ", script, re.MULTILINE))
    used = {
        match
        for text in all_strings(SERVICES)
        for match in re.findall(r"@postgres:5432/(\w+)", text)
    }
    assert created == used == {"recsys", "prefect", "mlflow"}


# --- ports ------------------------------------------------------------------------------------
def test_ui_ports_are_published() -> None:
    for service, port in UI_PORTS.items():
        assert port in published_ports(service), service


def test_readme_ports_match_the_compose_file() -> None:
    documented = deploy_section() + readme_section("The analysis notebook")
    in_readme = {int(port) for port in re.findall(r"localhost:(\d+)", documented)}
    published = {port for service in SERVICES for port in published_ports(service)}

    assert in_readme == published
    assert set(UI_PORTS.values()) <= in_readme


# --- files named by the compose file and the Dockerfiles --------------------------------------
def builds() -> list[tuple[Path, Path]]:
    """(context, Dockerfile) of every service that builds an image."""
    found = set()
    for service in SERVICES.values():
        if "build" in service:
            context = REPO / service["build"]["context"]
            found.add((context.resolve(), (context / service["build"]["dockerfile"]).resolve()))
    return sorted(found)


def dockerfile_instructions(path: Path) -> list[list[str]]:
    """Instructions as token lists, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [shlex.split(line) for line in lines if line and not line.startswith("#")]


def dockerfile_env(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in dockerfile_instructions(path):
        if instruction[0] == "ENV":
            env.update(item.split("=", 1) for item in instruction[1:])
    return env


def test_both_dockerfiles_are_built() -> None:
    assert [dockerfile.relative_to(REPO) for _, dockerfile in builds()] == [
        Path("deployments/Dockerfile"),
        Path("deployments/mlflow/Dockerfile"),
    ]


@pytest.mark.parametrize(("context", "dockerfile"), builds(), ids=lambda p: str(p))
def test_dockerfiles_copy_files_that_exist_and_are_not_ignored(
    context: Path, dockerfile: Path
) -> None:
    ignored = {
        line.strip()
        for line in (context / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    copies = [i for i in dockerfile_instructions(dockerfile) if i[0] in {"COPY", "ADD"}]
    assert copies
    for instruction in copies:
        sources = [arg for arg in instruction[1:-1] if not arg.startswith("--")]
        for source in sources:
            assert (context / source).exists(), f"{dockerfile.name}: COPY {source}"
            assert Path(source).parts[0] not in ignored, f"{source} is in .dockerignore"


def test_project_image_installs_from_the_lock() -> None:
    runs = " ".join(
        " ".join(i)
        for i in dockerfile_instructions(REPO / "deployments" / "Dockerfile")
        if i[0] == "RUN"
    )
    assert "-c constraints.txt" in runs


def test_files_mounted_or_run_by_compose_exist() -> None:
    mounted = [
        str(volume).split(":")[0]
        for service in SERVICES.values()
        for volume in service.get("volumes", [])
        if str(volume).startswith(".")
    ]
    scripts = [arg for arg in SERVICES[WORKER]["command"] if arg.endswith(".sh")]
    assert mounted and scripts
    for path in [*mounted, *scripts]:
        assert (REPO / path).exists(), path  # ./notebooks is a folder


# --- prefect.yaml -----------------------------------------------------------------------------
@pytest.mark.parametrize("deployment", PREFECT_YAML["deployments"], ids=lambda d: d["entrypoint"])
def test_prefect_yaml_entrypoints_are_flows(deployment: dict[str, Any]) -> None:
    from prefect import Flow

    path, function = deployment["entrypoint"].split(":")
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    flow = getattr(module, function)

    assert isinstance(flow, Flow) and flow.name == Path(path).stem
    assert set(deployment["parameters"]) <= set(flow.parameters.properties)


def test_prefect_yaml_deploys_every_flow_file() -> None:
    deployed = {d["entrypoint"].split(":")[0] for d in PREFECT_YAML["deployments"]}
    files = {f"flows/{p.name}" for p in (REPO / "flows").glob("*.py") if p.name != "__init__.py"}

    assert deployed == files


def test_prefect_yaml_pool_and_pull_step_come_from_the_settings() -> None:
    pool = PREFECT_YAML["definitions"]["work_pool"]["name"]
    (step,) = PREFECT_YAML["pull"]

    assert pool == "{{ $RECSYS_WORK_POOL }}" and "RECSYS_WORK_POOL" in setting_variables()
    assert step == {
        "prefect.deployments.steps.set_working_directory": {
            "directory": "{{ $RECSYS_PROJECT_DIR }}"
        }
    }
    assert "RECSYS_PROJECT_DIR" in setting_variables()
    workdir = [
        i[1]
        for i in dockerfile_instructions(REPO / "deployments" / "Dockerfile")
        if i[0] == "WORKDIR"
    ]
    assert workdir == [dockerfile_env(REPO / "deployments" / "Dockerfile")["RECSYS_PROJECT_DIR"]]


def test_postgres_init_script_runs_on_a_real_server(postgres_server: str) -> None:
    """The first-start script, run as the postgres image would (psql over the local socket)."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    from tasks.warehouse.connection import import_pgserver

    pgserver = import_pgserver()

    socket_dir = str(conninfo_to_dict(postgres_server)["host"])
    psql_bin = Path(pgserver.__file__).parent / "pginstall" / "bin"
    env = {
        "PATH": f"{psql_bin}:/usr/bin:/bin", "PGHOST": socket_dir,
        "POSTGRES_USER": "postgres", "DB_PASSWORD_WAREHOUSE": "w-pass",
        "DB_PASSWORD_PREFECT": "p-pass", "DB_PASSWORD_MLFLOW": "m-pass",
    }  # fmt: skip
    script = REPO / "deployments" / "postgres" / "init-databases.sh"

    done = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    with psycopg.connect(postgres_server) as conn:
        owners = dict(
            conn.execute(
                "SELECT datname, pg_get_userbyid(datdba) FROM pg_database"
                " WHERE datname IN ('recsys', 'prefect', 'mlflow')"
            ).fetchall()
        )
    assert owners == {"recsys": "recsys", "prefect": "prefect", "mlflow": "mlflow"}
