"""docker-compose.yml, the Dockerfiles and the configuration files they mount: they parse, and they agree
with the repository and with the service's settings.

No Docker engine runs here, so nothing is built or started: this checks what can be checked without one.
Every file they reference exists (and is sent to the build: not in .dockerignore); every LMINDEXER_*
variable is a field of service.settings.ServiceSettings, and the values given validate; the nginx
upstream and the Prometheus targets are the compose replicas; no secret is written down. The
requirement lists that the Dockerfiles compute from pyproject.toml are computed here with the
Dockerfiles' own code. When a compose CLI is on PATH, `compose config` validates the file too.
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib
import json
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from lmindexer.cli import COMMANDS
from service.settings import ENV_PREFIX, ServiceSettings
from tests.integration.conftest import free_port, stop_process

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
COMPOSE_GPU = REPO / "docker" / "compose.gpu.yml"
DOCKERFILES = {
    "service": REPO / "docker" / "service.Dockerfile",
    "service-gpu": REPO / "docker" / "service-gpu.Dockerfile",
    "training": REPO / "docker" / "training.Dockerfile",
}
NGINX_CONF = REPO / "docker" / "nginx" / "nginx.conf"
PROMETHEUS_CONF = REPO / "docker" / "prometheus" / "prometheus.yml"
GRAFANA_DATASOURCES = REPO / "docker" / "grafana" / "provisioning" / "datasources"
GRAFANA_DASHBOARD_PROVIDERS = REPO / "docker" / "grafana" / "provisioning" / "dashboards"
DASHBOARD = REPO / "docker" / "grafana" / "dashboards" / "lmindexer.json"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())

API_REPLICAS = ("api-1", "api-2")
SERVING_STACK = {*API_REPLICAS, "nginx", "redis", "prometheus", "grafana"}
SETTINGS_ENV = {ENV_PREFIX + name.upper(): name for name in ServiceSettings.model_fields}
SERVICE_PORT = ServiceSettings.model_fields["port"].default
# What `compose up` needs from the environment, given dummy values here (never real ones).
REQUIRED_ENV = {"LMINDEXER_API_KEY": "dummy-key-for-the-test", "GRAFANA_ADMIN_PASSWORD": "dummy-password"}

# ------------------------------------------------------------------------------------------ parsing

_INTERPOLATION = re.compile(
    r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}|\$(?P<bare>[A-Za-z_]\w*)")


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error} against ``env``."""
    def one(match: re.Match[str]) -> str:
        name = match.group("name") or match.group("bare")
        op, arg = match.group("op"), match.group("arg")
        present = name in env and (env[name] != "" or not (op or "").startswith(":"))
        if present:
            return env[name]
        if op in (":-", "-"):
            return interpolate(arg, env)
        if op in (":?", "?"):
            raise KeyError(f"required variable {name} is not set: {arg}")
        return ""
    return _INTERPOLATION.sub(one, value.replace("$$", "\0")).replace("\0", "$")


def variables_in(text: str) -> list[tuple[str, str | None, str | None]]:
    """(name, operator, argument) of every ${...} interpolation in ``text``."""
    return [(m.group("name") or m.group("bare"), m.group("op"), m.group("arg")) for m in _INTERPOLATION.finditer(text)]


def walk_strings(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in (*walk_strings(k), *walk_strings(v))]
    if isinstance(node, list):
        return [s for v in node for s in walk_strings(v)]
    return []


def environment_of(service: dict[str, Any]) -> dict[str, str | None]:
    """A service's environment (map or list syntax) as a dict; None = passed through from the host."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return {item.split("=", 1)[0]: (item.split("=", 1)[1] if "=" in item else None) for item in env}
    return {k: (None if v is None else str(v)) for k, v in env.items()}


DOCKERFILE_INSTRUCTIONS = {"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME",
                           "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL", "MAINTAINER"}


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse_dockerfile(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages) of a Dockerfile; fails on anything that is not an instruction."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue  # comments and parser directives
        if pending and stripped.startswith("#"):
            continue  # a comment line inside a continued instruction is dropped by the parser
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        logical.append(pending + raw)
        pending = ""
    assert not pending, f"{path}: the file ends inside a continued instruction"
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.strip().partition(" ")
        keyword = keyword.upper()
        assert keyword in DOCKERFILE_INSTRUCTIONS, f"{path}: not a Dockerfile instruction: {line[:60]!r}"
        rest = rest.strip()
        assert rest, f"{path}: {keyword} without arguments"
        if keyword == "FROM":
            words = rest.split()
            base = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), ""), words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            assert len(words) in (1, 3), f"{path}: bad FROM {rest!r}"
            stages.append(Stage(base=base, name=name))
        elif not stages:
            assert keyword == "ARG", f"{path}: only ARG may come before the first FROM, not {keyword}"
            name, _, default = rest.partition("=")
            args[name] = default
        else:
            stages[-1].instructions.append((keyword, rest))
        if keyword in ("CMD", "ENTRYPOINT") and rest.startswith("["):
            assert isinstance(json.loads(rest), list), f"{path}: {keyword} exec form is not a JSON array"
    assert stages, f"{path}: no FROM"
    return args, stages


def env_pairs(env_args: str) -> dict[str, str]:
    """ENV a=1 b=2 (the key=value form) as a dict."""
    pairs = {}
    for token in shlex.split(env_args):
        assert "=" in token, f"ENV {env_args!r}: use the key=value form"
        key, value = token.split("=", 1)
        pairs[key] = value
    return pairs


def dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def is_dockerignored(relative: str) -> bool:
    """Whether .dockerignore keeps ``relative`` (or a parent folder of it) out of the build context."""
    parts = Path(relative).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in dockerignore_patterns():
        if pattern.startswith("!"):
            continue
        for candidate in candidates:
            if fnmatch.fnmatch(candidate, pattern) or (
                    pattern.startswith("**/") and fnmatch.fnmatch(Path(candidate).name, pattern[3:])):
                return True
    return False


def python_snippets(run_args: str) -> list[str]:
    """The code of every `python -c CODE` in a RUN instruction, unquoted as the shell would."""
    tokens = shlex.split(run_args, posix=True)
    return [tokens[i + 2] for i, token in enumerate(tokens[:-2])
            if token in ("python", "python3") and tokens[i + 1] == "-c"]


def requirements_computed_by(dockerfile: Path) -> list[str]:
    """Run the Dockerfile's own pyproject -> requirements snippet against the repo's pyproject.toml."""
    _, stages = parse_dockerfile(dockerfile)
    snippets = [code for stage in stages for run in stage.all("RUN") for code in python_snippets(run)
                if "tomllib" in code]
    assert len(snippets) == 1, f"{dockerfile}: expected one pyproject -> requirements snippet"
    out = subprocess.run([sys.executable, "-c", snippets[0]], cwd=REPO, capture_output=True, text=True,
                         timeout=30, check=True)
    return out.stdout.split()


def requirement_name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower()


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(document, dict) and isinstance(document.get("services"), dict)
    return document


@pytest.fixture(scope="module")
def resolved(compose: dict[str, Any]) -> dict[str, Any]:
    """The compose document with every interpolation resolved (defaults, and dummies for required vars)."""
    def resolve(node: Any) -> Any:
        if isinstance(node, str):
            return interpolate(node, REQUIRED_ENV)
        if isinstance(node, dict):
            return {resolve(k): resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node
    return resolve(compose)


def mounts(service: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(source, target, mode) of a service's short-syntax volumes."""
    result = []
    for volume in service.get("volumes", []):
        assert isinstance(volume, str), f"use the short volume syntax: {volume}"
        source, target, *mode = volume.split(":")
        result.append((source, target, mode[0] if mode else "rw"))
    return result


def upstream_servers() -> list[str]:
    text = NGINX_CONF.read_text()
    block = re.search(r"upstream\s+\w+\s*\{(.*?)\}", text, re.S)
    assert block, f"{NGINX_CONF}: no upstream block"
    return re.findall(r"^\s*server\s+(\S+?)[\s;]", block.group(1), re.M)


# ------------------------------------------------------------------------------------------ Dockerfiles


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_parses_and_copies_only_existing_unignored_files(name: str) -> None:
    path = DOCKERFILES[name]
    _, stages = parse_dockerfile(path)
    for stage in stages:
        for copy in stage.all("COPY") + stage.all("ADD"):
            words = copy.split()
            if any(w.startswith("--from=") for w in words):
                continue
            sources = [w for w in words[:-1] if not w.startswith("--")]
            for source in sources:
                assert (REPO / source).exists(), f"{path}: COPY {source}: no such file in the repo"
                assert not is_dockerignored(source), f"{path}: COPY {source}, but .dockerignore excludes it"
                assert not source.startswith(("bundles", "runs", "var")), f"{path}: data baked into the image"
    final = stages[-1]
    for env in final.all("ENV"):
        for key in env_pairs(env):
            if key.startswith(ENV_PREFIX):
                assert key in SETTINGS_ENV, f"{path}: ENV {key} is not a setting of service/settings.py"
    secretish = re.compile(r"(PASSWORD|SECRET|TOKEN|API_KEY)", re.I)
    for stage in stages:
        for keyword in ("ENV", "ARG", "LABEL"):
            for args in stage.all(keyword):
                assert not secretish.search(args), f"{path}: {keyword} {args!r} writes a secret into the image"


@pytest.mark.parametrize("name", ["service", "service-gpu"])
def test_service_images_run_the_service_as_non_root_with_a_stdlib_healthcheck(name: str) -> None:
    path = DOCKERFILES[name]
    _, stages = parse_dockerfile(path)
    final = stages[-1]
    users = final.all("USER")
    assert users and users[-1].split(":")[0] not in ("root", "0"), f"{path}: the service must not run as root"
    healthchecks = final.all("HEALTHCHECK")
    assert len(healthchecks) == 1, f"{path}: one HEALTHCHECK"
    check = healthchecks[0]
    assert "/healthz" in check and "urllib.request" in check, f"{path}: HEALTHCHECK must GET /healthz with Python"
    assert not re.search(r"\b(curl|wget)\b", check), f"{path}: slim images have no curl/wget"
    exec_form = json.loads(check[check.index("CMD") + 3:].strip())
    assert exec_form[:2] == ["python", "-c"]
    compile(exec_form[2], f"{path}:HEALTHCHECK", "exec")  # the check itself is valid Python
    cmd = json.loads(final.all("CMD")[-1])
    assert cmd == ["python", "-m", "service"] or cmd[:2] == ["lmindexer", "serve"], f"{path}: CMD {cmd}"
    env = {k: v for e in final.all("ENV") for k, v in env_pairs(e).items()}
    assert env.get("LMINDEXER_HOST") == "0.0.0.0", f"{path}: listen on all interfaces inside the container"
    port = int(env.get("LMINDEXER_PORT", SERVICE_PORT))
    assert final.all("EXPOSE") == [str(port)]
    # The ENV values are valid settings (types, enums) - with a bundle mounted at run time.
    ServiceSettings(bundle_dir=Path("/bundles/demo"),
                    **{SETTINGS_ENV[k]: v for k, v in env.items() if k in SETTINGS_ENV})
    assert "/bundles" not in " ".join(final.all("COPY")), f"{path}: the bundle is a mounted volume"


def test_cpu_service_image_installs_the_base_dependencies_only() -> None:
    _, stages = parse_dockerfile(DOCKERFILES["service"])
    assert "slim" in stages[-1].base and stages[-1].base.startswith("python:"), stages[-1].base
    requirements = requirements_computed_by(DOCKERFILES["service"])
    assert requirements == PYPROJECT["project"]["dependencies"]
    names = {requirement_name(r) for r in requirements}
    assert "onnxruntime" in names and not names & {"torch", "transformers", "onnxruntime-gpu"}
    text = DOCKERFILES["service"].read_text()
    assert ".[" not in text and "--no-deps ." in text, "only the base dependencies, then the code without deps"


def test_gpu_service_image_swaps_onnxruntime_for_onnxruntime_gpu() -> None:
    _, stages = parse_dockerfile(DOCKERFILES["service-gpu"])
    assert stages[-1].base.startswith("nvidia/cuda:") and "runtime" in stages[-1].base, stages[-1].base
    names = [requirement_name(r) for r in requirements_computed_by(DOCKERFILES["service-gpu"])]
    gpu_extra = {requirement_name(r) for r in PYPROJECT["project"]["optional-dependencies"]["gpu"]}
    assert gpu_extra <= set(names) and "onnxruntime" not in names and "torch" not in names
    base = {requirement_name(r) for r in PYPROJECT["project"]["dependencies"]} - {"onnxruntime"}
    assert base <= set(names)


def test_training_image_has_torch_the_train_extra_and_the_cli() -> None:
    _, stages = parse_dockerfile(DOCKERFILES["training"])
    assert stages[-1].base.startswith("pytorch/pytorch:") and "cuda" in stages[-1].base, stages[-1].base
    names = {requirement_name(r) for r in requirements_computed_by(DOCKERFILES["training"])}
    train = {requirement_name(r) for r in PYPROJECT["project"]["optional-dependencies"]["train"]}
    assert train <= names and "torch" in names
    entrypoint = json.loads(stages[-1].all("ENTRYPOINT")[-1])
    assert entrypoint == ["lmindexer"] and "lmindexer" in PYPROJECT["project"]["scripts"]
    copied = {c.split()[0] for c in stages[-1].all("COPY")}
    assert {"training", "trie", "bundle", "data"} <= copied, "the readers find data/ next to the code"


def test_dockerignore_keeps_data_and_local_state_out_of_the_build() -> None:
    for path in (".git", ".venv", "bundles", "runs", "var", "service/__pycache__", ".env"):
        assert is_dockerignored(path), f".dockerignore must exclude {path}"
    for path in ("pyproject.toml", "README.md", "service", "trie", "bundle", "lmindexer", "training", "data"):
        assert not is_dockerignored(path), f".dockerignore must keep {path} (the images copy it)"


# ------------------------------------------------------------------------------------------ compose


def test_compose_has_the_serving_stack_and_a_training_profile(compose: dict[str, Any]) -> None:
    services = compose["services"]
    default = {name for name, s in services.items() if not s.get("profiles")}
    assert default == SERVING_STACK, f"`docker compose up` starts {sorted(default)}"
    assert services["trainer"]["profiles"] == ["training"]
    for name in API_REPLICAS:
        assert services[name]["build"]["dockerfile"] == "docker/service.Dockerfile"
    assert services["trainer"]["build"]["dockerfile"] == "docker/training.Dockerfile"
    for name, service in services.items():
        build = service.get("build")
        if build:
            assert (REPO / build["context"] / build["dockerfile"]).is_file(), f"{name}: no {build['dockerfile']}"
        if name in SERVING_STACK:
            assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"


def test_compose_files_and_volumes_exist(resolved: dict[str, Any]) -> None:
    ignored = (REPO / ".gitignore").read_text().split()
    named = set(resolved.get("volumes") or {})
    for name, service in resolved["services"].items():
        for source, target, _mode in mounts(service):
            assert target.startswith("/"), f"{name}: {target}"
            if not source.startswith((".", "/")):
                assert source in named, f"{name}: volume {source} is not declared under volumes:"
                continue
            relative = Path(source).relative_to(".") if source.startswith(".") else Path(source)
            if (REPO / relative).exists():
                continue
            # Data folders (bundles, runs) are made at run time (`make bundle`); they must be git-ignored.
            assert f"/{relative}/" in ignored, f"{name}: bind mount {source} does not exist in the repo"
    for name in API_REPLICAS:
        targets = {target: (source, mode) for source, target, mode in mounts(resolved["services"][name])}
        assert targets["/bundles"][1] == "ro", f"{name}: the bundles are mounted read-only"
        assert targets["/bundles"][0] == "./bundles", "the default bundle folder is the Makefile's (bundles/)"
        assert targets["/app/var"][0] == f"store-{name}", f"{name}: its own store volume"
    demo = re.search(r"^DEMO_BUNDLE \?= (\S+)$", (REPO / "Makefile").read_text(), re.M)
    assert demo and demo.group(1) == "bundles/demo", "make bundle writes what compose serves by default"


def test_compose_environment_is_made_of_service_settings(compose: dict[str, Any], resolved: dict[str, Any]) -> None:
    for text in walk_strings(compose):
        for name, _, _ in variables_in(text):
            if name.startswith(ENV_PREFIX):
                assert name in SETTINGS_ENV, f"${{{name}}} is not a service setting"
    for name, service in resolved["services"].items():
        for key in environment_of(service):
            if key.startswith(ENV_PREFIX):
                assert key in SETTINGS_ENV, f"{name}: {key} is not a field of service/settings.py"
    for name in API_REPLICAS:
        env = environment_of(resolved["services"][name])
        settings = ServiceSettings(**{SETTINGS_ENV[k]: v for k, v in env.items() if k in SETTINGS_ENV})
        assert settings.bundle_dir == Path("/bundles/demo")
        assert settings.replica_id == name
        assert settings.api_key is not None and settings.api_key.get_secret_value() == REQUIRED_ENV["LMINDEXER_API_KEY"]
        assert settings.store_path is None, "default: var/store-<bundle fingerprint>.sqlite3 in the volume"
        redis_host, redis_port = re.fullmatch(r"redis://([\w-]+):(\d+)/\d+", settings.redis_url).groups()
        assert redis_host == "redis" and redis_host in resolved["services"]
        assert "6379" in resolved["services"]["redis"].get("expose", []) and redis_port == "6379"


def test_compose_ports_agree_with_the_settings_nginx_and_prometheus(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    for name in API_REPLICAS:
        assert services[name]["expose"] == [str(SERVICE_PORT)], f"{name} listens on LMINDEXER_PORT's default"
        assert f":{SERVICE_PORT}/readyz" in " ".join(services[name]["healthcheck"]["test"])
    # nginx: one upstream server per replica, on the service port; published on its listen port.
    assert sorted(upstream_servers()) == sorted(f"{name}:{SERVICE_PORT}" for name in API_REPLICAS)
    # Statuses listed in proxy_next_upstream count as failures (max_fails): a 503 for a write during a
    # Redis outage, or a 429, must not mark a healthy replica down.
    next_upstream = re.search(r"proxy_next_upstream\s+([^;]+);", NGINX_CONF.read_text())
    assert next_upstream and not re.search(r"http_(503|429)|non_idempotent", next_upstream.group(1))
    listen = re.findall(r"^\s*listen\s+(\d+);", NGINX_CONF.read_text(), re.M)
    published = [p.rsplit(":", 1) for p in services["nginx"]["ports"]]
    assert [container for _, container in published] == listen
    assert services["nginx"]["volumes"] == ["./docker/nginx/nginx.conf:/etc/nginx/nginx.conf:ro"]
    assert set(services["nginx"]["depends_on"]) == set(API_REPLICAS)
    # Prometheus: the lmindexer job scrapes every replica by its compose name.
    prometheus = yaml.safe_load(PROMETHEUS_CONF.read_text())
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    targets = [t for group in jobs["lmindexer"]["static_configs"] for t in group["targets"]]
    assert sorted(targets) == sorted(f"{name}:{SERVICE_PORT}" for name in API_REPLICAS)
    assert jobs["lmindexer"].get("metrics_path", "/metrics") == "/metrics"
    assert ("./docker/prometheus/prometheus.yml", "/etc/prometheus/prometheus.yml", "ro") in mounts(
        services["prometheus"])
    config_flag = next(a for a in services["prometheus"]["command"] if a.startswith("--config.file="))
    assert config_flag == "--config.file=/etc/prometheus/prometheus.yml"
    # Unauthenticated UIs are published on the host's loopback only.
    for name in ("prometheus", "grafana"):
        assert all(p.startswith("127.0.0.1:") for p in services[name]["ports"]), f"{name}: {services[name]['ports']}"


def test_redis_persists_with_aof_and_never_evicts_the_update_stream(resolved: dict[str, Any]) -> None:
    redis_service = resolved["services"]["redis"]
    command = redis_service["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--appendfsync") + 1] in ("everysec", "always")
    assert command[command.index("--maxmemory-policy") + 1].startswith("volatile-"), (
        "only keys with a TTL (the cache) may be evicted, never the stream of index updates")
    assert ("redis-data", "/data", "rw") in mounts(redis_service)


def test_grafana_is_provisioned_with_the_prometheus_datasource_and_the_dashboard(resolved: dict[str, Any]) -> None:
    grafana = resolved["services"]["grafana"]
    grafana_mounts = {target: source for source, target, _ in mounts(grafana)}
    assert grafana_mounts["/etc/grafana/provisioning"] == "./docker/grafana/provisioning"
    datasources = [d for f in sorted(GRAFANA_DATASOURCES.glob("*.yml"))
                   for d in yaml.safe_load(f.read_text())["datasources"]]
    assert len(datasources) == 1 and datasources[0]["type"] == "prometheus"
    assert datasources[0]["url"] == "http://prometheus:9090" and "prometheus" in resolved["services"]
    providers = [p for f in sorted(GRAFANA_DASHBOARD_PROVIDERS.glob("*.yml"))
                 for p in yaml.safe_load(f.read_text())["providers"]]
    assert len(providers) == 1
    dashboards_dir = providers[0]["options"]["path"]
    assert grafana_mounts[dashboards_dir] == "./docker/grafana/dashboards"
    home = environment_of(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{dashboards_dir}/{DASHBOARD.name}" and DASHBOARD.is_file()
    dashboard = json.loads(DASHBOARD.read_text())
    uids = {d["uid"] for d in datasources}
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] in uids, f"panel {panel['title']}: unknown datasource"


def test_no_secret_is_written_down(compose: dict[str, Any]) -> None:
    services = compose["services"]
    password = environment_of(services["grafana"])["GF_SECURITY_ADMIN_PASSWORD"]
    assert re.fullmatch(r"\$\{GRAFANA_ADMIN_PASSWORD:\?[^}]+\}", password), password
    for name in API_REPLICAS:
        key = interpolate_raw_env(compose, name, "LMINDEXER_API_KEY")
        assert key is None or re.fullmatch(r"\$\{LMINDEXER_API_KEY(:\?[^}]*)?\}", key), (
            f"{name}: the API key must come from the environment, without a default: {key}")
    secretish = re.compile(r"(password|secret|token|api[_-]?key)", re.I)
    for path in (COMPOSE, COMPOSE_GPU, NGINX_CONF, PROMETHEUS_CONF, *GRAFANA_DATASOURCES.glob("*.yml"),
                 *DOCKERFILES.values()):
        for line in path.read_text().splitlines():
            code = line.split("#", 1)[0]
            match = re.search(r"(\w*(?:password|secret|token|api[_-]?key)\w*)\s*[:=]\s*(\S+)", code, re.I)
            if match and secretish.search(match.group(1)):
                assert match.group(2).startswith("${"), f"{path.name}: a literal secret? {line.strip()!r}"
    for name in ("LMINDEXER_API_KEY", "GRAFANA_ADMIN_PASSWORD"):
        with pytest.raises(KeyError):  # compose refuses to start without them
            interpolate(COMPOSE.read_text(), {k: v for k, v in REQUIRED_ENV.items() if k != name})


def interpolate_raw_env(compose: dict[str, Any], service: str, key: str) -> str | None:
    return environment_of(compose["services"][service]).get(key)


def test_training_profile_runs_a_real_lmindexer_command(resolved: dict[str, Any]) -> None:
    for name in ("trainer", "trainer-gpu"):
        trainer = resolved["services"][name]
        command = trainer["command"]
        assert command[0] in COMMANDS, f"{name}: `lmindexer {command[0]}` is not a command"
        module = importlib.import_module(COMMANDS[command[0]][0])  # argparse only: no torch at import
        parser = argparse.ArgumentParser(prog=f"lmindexer {command[0]}")
        module.add_arguments(parser)
        parser.parse_args(command[1:])  # the command line is one the command accepts
        out = command[command.index("--out") + 1]
        targets = {target: source for source, target, _ in mounts(trainer)}
        assert out.startswith("/app/bundles/") and targets["/app/bundles"] == "./bundles", (
            f"{name} writes the bundle where the API replicas read it")
    devices = resolved["services"]["trainer-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"]


def test_gpu_override_switches_the_replicas_to_the_gpu_image() -> None:
    override = yaml.safe_load(COMPOSE_GPU.read_text())
    assert set(override["services"]) == set(API_REPLICAS)
    for name, service in override["services"].items():
        assert (REPO / service["build"]["context"] / service["build"]["dockerfile"]) == DOCKERFILES["service-gpu"]
        env = environment_of(service)
        assert set(env) <= set(SETTINGS_ENV), f"{name}: {set(env) - set(SETTINGS_ENV)}"
        ServiceSettings(bundle_dir=Path("/bundles/demo"), **{SETTINGS_ENV[k]: v for k, v in env.items()})
        assert service["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"


def compose_cli() -> list[str] | None:
    """`docker compose` (the plugin) or `docker-compose` (v2 standalone), when one is installed."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return ["docker", "compose"]
    standalone = shutil.which("docker-compose")
    if standalone:
        probe = subprocess.run([standalone, "version"], capture_output=True, text=True, timeout=30)
        if probe.returncode == 0 and re.search(r"v?[2-9]\.\d+", probe.stdout):
            return [standalone]
    return None


def test_compose_cli_validates_the_files(tmp_path: Path) -> None:
    """The reference parser (needs only the compose CLI, no engine): skipped when none is installed."""
    cli = compose_cli()
    if cli is None:
        pytest.skip("no compose CLI v2 (docker compose / docker-compose) to validate with; Debian 12 packages "
                    "only v1, so .ci/prepare cannot install it")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **REQUIRED_ENV}
    for files in (["-f", "docker-compose.yml"], ["-f", "docker-compose.yml", "-f", "docker/compose.gpu.yml"]):
        result = subprocess.run([*cli, *files, "--profile", "training", "--profile", "training-gpu", "config", "-q"],
                                cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
    result = subprocess.run([*cli, "config", "-q"], cwd=REPO, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "LMINDEXER_API_KEY" in result.stderr, "required variables must be enforced"


def test_prometheus_config_passes_promtool() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("no `promtool` (Debian's package `prometheus` ships it; .ci/prepare installs it)")
    result = subprocess.run([promtool, "check", "config", str(PROMETHEUS_CONF)], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


def test_redis_server_accepts_the_compose_command(resolved: dict[str, Any], tmp_path: Path) -> None:
    """The compose service's redis-server arguments, run for real on a free loopback port."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("no `redis-server` binary (.ci/prepare installs it)")
    command = resolved["services"]["redis"]["command"]
    assert command[0] == "redis-server"
    port = free_port()
    proc = subprocess.Popen([binary, *command[1:], "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path),
                             "--save", ""], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, socket_connect_timeout=2)
    try:
        for _ in range(50):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert proc.poll() is None, f"redis-server refused {command[1:]} (exit {proc.returncode})"
                time.sleep(0.1)
        config = {key: client.config_get(key)[key] for key in ("appendonly", "appendfsync", "maxmemory-policy")}
        assert config == {"appendonly": "yes", "appendfsync": command[command.index("--appendfsync") + 1],
                          "maxmemory-policy": "volatile-lru"}
        client.xadd("stream", {"update": "1"})  # the AOF is written where the volume is mounted (/data)
        client.execute_command("BGREWRITEAOF")
    finally:
        client.close()
        stop_process(proc)
    assert any(tmp_path.rglob("*.aof*")), "no append-only file written"
