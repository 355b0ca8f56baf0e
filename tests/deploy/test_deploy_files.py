"""Static checks of the production deploy files (no Docker needed): deploy/compose.yaml,
deploy/Dockerfile, .dockerignore, deploy/.env.example and the deploy/local scripts.

Every ``sevo`` command in the compose file is parsed by the real CLI parser after ``${VAR}``
interpolation, so a renamed or removed flag breaks these tests rather than a deployment.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest
import yaml

from streaming.cli import build_parser

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest depends on tomli before Python 3.11
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"

# Dummy values for the variables the compose file may reference (what deploy/.env sets).
DUMMY_ENV = {"REDIS_PASSWORD": "dummy-password", "SEVO_NAMESPACE": "test-ns"}


# --- ${VAR} interpolation, as docker compose does it ------------------------------------------

_VAR = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\})"
)


class MissingVariableError(ValueError):
    """A required variable (``${VAR:?msg}`` / ``${VAR?msg}``) is unset."""


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Substitute ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?msg}``,
    ``${VAR?msg}`` and ``$$`` (a literal ``$``) like docker compose; an unset plain ``${VAR}``
    becomes the empty string."""

    def replace(m: re.Match[str]) -> str:
        if m.group("escaped"):
            return "$"
        name, op, arg = m.group("name"), m.group("op"), m.group("arg")
        value = env.get(name)
        unset = value is None or (op is not None and op.startswith(":") and value == "")
        if op in (":-", "-"):
            return arg if unset else value
        if op in (":?", "?"):
            if unset:
                raise MissingVariableError(f"{name}: {arg}")
            return value
        return value or ""

    return _VAR.sub(replace, text)


def interpolate_tree(node, env: Mapping[str, str]):
    """:func:`interpolate` every string in a parsed YAML tree (keys are left alone)."""
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [interpolate_tree(v, env) for v in node]
    if isinstance(node, dict):
        return {k: interpolate_tree(v, env) for k, v in node.items()}
    return node


def variables(text: str) -> set[str]:
    return {m.group("name") for m in _VAR.finditer(text) if m.group("name")}


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("a${X}b", {"X": "1"}, "a1b"),
        ("${X}", {}, ""),
        ("${X:-d}", {}, "d"),
        ("${X:-d}", {"X": ""}, "d"),
        ("${X-d}", {"X": ""}, ""),
        ("${X:-d}", {"X": "v"}, "v"),
        ("${X:?set X}", {"X": "v"}, "v"),
        ("redis://:${P}@redis:6379/0", {"P": "pw"}, "redis://:pw@redis:6379/0"),
        ("$$HOME ${X}", {"X": "1"}, "$HOME 1"),
    ],
)
def test_interpolate(text, env, expected):
    assert interpolate(text, env) == expected


@pytest.mark.parametrize(("text", "env"), [("${X:?set X}", {}), ("${X:?set X}", {"X": ""})])
def test_interpolate_required_variable_missing(text, env):
    with pytest.raises(MissingVariableError, match="set X"):
        interpolate(text, env)


# --- compose.yaml ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose_text() -> str:
    return COMPOSE.read_text()


@pytest.fixture(scope="module")
def compose(compose_text) -> dict:
    doc = yaml.safe_load(compose_text)
    assert isinstance(doc, dict)
    return interpolate_tree(doc, DUMMY_ENV)


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def _as_list(value) -> list[str]:
    """A compose ``command`` / healthcheck ``test``: string (shell words) or list."""
    if isinstance(value, str):
        return shlex.split(value)
    assert isinstance(value, list), value
    return [str(v) for v in value]


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _named_volumes(service: dict) -> dict[str, str]:
    """Named volumes of a service as {volume: container path} (short syntax)."""
    out = {}
    for spec in service.get("volumes") or []:
        source, target = str(spec).split(":")[:2]
        if not source.startswith((".", "/", "~")):
            out[source] = target
    return out


def test_compose_has_the_services(services):
    assert {"kafka", "redis", "engine"} <= set(services)


def test_compose_variables_are_documented_in_env_example(compose_text):
    example = (DEPLOY / ".env.example").read_text()
    defined = {
        line.split("=", 1)[0].strip()
        for line in example.splitlines()
        if "=" in line and not line.lstrip().startswith("#")
    }
    used = variables(compose_text)
    assert {"REDIS_PASSWORD", "SEVO_NAMESPACE"} <= used
    assert used <= defined, f"undocumented in deploy/.env.example: {used - defined}"


def test_compose_refuses_to_start_without_redis_password(compose_text):
    doc = yaml.safe_load(compose_text)
    with pytest.raises(MissingVariableError, match="REDIS_PASSWORD"):
        interpolate_tree(doc, {"SEVO_NAMESPACE": "x"})


def test_named_volumes_are_declared(compose, services):
    declared = set(compose.get("volumes") or {})
    for name in ("kafka", "redis", "engine"):
        used = set(_named_volumes(services[name]))
        assert used, f"{name} has no named volume"
        assert used <= declared, f"{name}: undeclared volumes {used - declared}"


def test_kafka_is_single_node_kraft(services):
    kafka = services["kafka"]
    assert kafka["image"] == "apache/kafka:3.8.0"
    env = _env(kafka)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "CONTROLLER" in env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert env["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://kafka:9092"
    assert env["CLUSTER_ID"]  # the image refuses to start in KRaft mode without it
    # The data directory is the named volume, so topics and offsets survive a restart.
    assert env["KAFKA_LOG_DIRS"] in _named_volumes(kafka).values()
    test = " ".join(_as_list(kafka["healthcheck"]["test"]))
    assert "/opt/kafka/bin/kafka-topics.sh" in test
    assert "--list" in test


def test_redis_is_persistent_and_password_protected(services):
    redis = services["redis"]
    assert redis["image"].startswith("redis:7")
    command = _as_list(redis["command"])
    assert command[0] == "redis-server"
    i = command.index("--appendonly")
    assert command[i + 1] == "yes"
    j = command.index("--requirepass")
    assert command[j + 1] == DUMMY_ENV["REDIS_PASSWORD"]
    assert "/data" in _named_volumes(redis).values()
    test = " ".join(_as_list(redis["healthcheck"]["test"]))
    assert "redis-cli -a" in test
    assert "ping" in test


def test_engine_depends_on_healthy_kafka_and_redis(services):
    depends = services["engine"]["depends_on"]
    assert set(depends) >= {"kafka", "redis"}
    for name in ("kafka", "redis"):
        assert depends[name]["condition"] == "service_healthy"


def test_engine_is_built_from_the_dockerfile(services):
    build = services["engine"]["build"]
    context = (COMPOSE.parent / build["context"]).resolve()
    assert context == ROOT
    assert (context / build["dockerfile"]).resolve() == DOCKERFILE


def _sevo_services(services: dict) -> dict[str, dict]:
    """Services that run the engine image (so their ``command`` is a ``sevo`` command line)."""
    image = services["engine"].get("image")
    return {
        name: svc
        for name, svc in services.items()
        if "build" in svc or (image is not None and svc.get("image") == image)
    }


def _subcommands(parser: argparse.ArgumentParser) -> set[str]:
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return set(sub.choices)


def _parse(argv: list[str], capsys) -> argparse.Namespace:
    try:
        return build_parser().parse_args(argv)
    except SystemExit:
        err = capsys.readouterr().err
    pytest.fail(f"`sevo {shlex.join(argv)}` does not parse:\n{err}")


def test_sevo_services_are_engine_and_producer(services):
    assert {"engine", "producer"} <= set(_sevo_services(services))


@pytest.mark.parametrize("name", ["engine", "producer"])
def test_sevo_command_parses_with_the_cli(services, name, capsys):
    argv = _as_list(services[name]["command"])
    assert argv[0] in _subcommands(build_parser()), f"{name}: unknown subcommand {argv[0]}"
    _parse(argv, capsys)


def test_every_sevo_command_in_compose_parses(services, capsys):
    for svc in _sevo_services(services).values():
        if "command" in svc:
            _parse(_as_list(svc["command"]), capsys)


def _parse_with_env(service: dict, monkeypatch, capsys) -> argparse.Namespace:
    """Parse the service's command with its environment set (the CLI reads SEVO_* defaults)."""
    for key, value in (service.get("environment") or {}).items():
        monkeypatch.setenv(key, str(value))
    return _parse(_as_list(service["command"]), capsys)


def test_engine_command_matches_the_services(services, capsys, monkeypatch):
    engine = services["engine"]
    assert "--redis-url" not in _as_list(engine["command"])  # the password stays off argv
    args = _parse_with_env(engine, monkeypatch, capsys)
    assert args.command == "run"
    assert args.bootstrap == "kafka:9092"
    assert args.topic == "events"
    assert args.group == "sevo-engine"
    assert args.dead_letter_topic == "events.dead"
    assert args.redis_url == f"redis://:{DUMMY_ENV['REDIS_PASSWORD']}@redis:6379/0"
    assert args.namespace == DUMMY_ENV["SEVO_NAMESPACE"]
    # Checkpoints live on the named volume.
    mounts = _named_volumes(engine).values()
    assert any(Path(args.checkpoint_dir).is_relative_to(m) for m in mounts), mounts
    # Metrics: served on all interfaces, exposed, and what the healthcheck fetches.
    assert args.metrics_host == "0.0.0.0"
    assert str(args.metrics_port) in [str(p) for p in engine["expose"]]
    test = " ".join(_as_list(engine["healthcheck"]["test"]))
    assert f"127.0.0.1:{args.metrics_port}/metrics" in test


def test_engine_command_default_namespace_is_prod(compose_text, capsys, monkeypatch):
    doc = interpolate_tree(yaml.safe_load(compose_text), {"REDIS_PASSWORD": "pw"})
    args = _parse_with_env(doc["services"]["engine"], monkeypatch, capsys)
    assert args.namespace == "prod"
    assert args.redis_url == "redis://:pw@redis:6379/0"


def test_producer_is_a_demo_profile(services, capsys):
    producer = services["producer"]
    assert producer["profiles"] == ["demo"]
    assert set(producer["depends_on"]) == {"kafka"}
    args = _parse(_as_list(producer["command"]), capsys)
    assert args.command == "produce"
    assert args.source == "ml-100k"
    assert args.bootstrap == "kafka:9092"
    assert args.topic == "events"
    assert args.rate == 200


# --- Dockerfile and .dockerignore ------------------------------------------------------------


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs; comments dropped, continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, rest = line.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    assert not pending, "dangling line continuation"
    return out


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return _instructions(DOCKERFILE.read_text())


def _dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [s.strip() for s in lines if s.strip() and not s.strip().startswith("#")]


def _ignored(path: str, patterns: list[str]) -> bool:
    parts = Path(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        if any(fnmatch.fnmatch(p, pattern) for p in prefixes):
            ignored = not negate
    return ignored


def _copy_sources(args: str) -> list[str]:
    words = json.loads(args) if args.startswith("[") else shlex.split(args)
    words = [w for w in words if not w.startswith("--")]
    return words[:-1]


def test_dockerfile_base_image(dockerfile):
    assert dockerfile[0] == ("FROM", "python:3.11-slim")


def test_dockerfile_installs_cpu_torch_before_the_project(dockerfile):
    runs = [args for kw, args in dockerfile if kw == "RUN"]
    torch = [i for i, r in enumerate(runs) if "pip install torch==" in r]
    project = [i for i, r in enumerate(runs) if re.search(r"pip install \.(\s|$)", r)]
    assert torch and project
    assert "--index-url https://download.pytorch.org/whl/cpu" in runs[torch[0]]
    assert torch[0] < project[0]


def test_dockerfile_entrypoint_user_workdir_volume(dockerfile):
    last = {}
    for kw, args in dockerfile:
        last[kw] = args
    assert json.loads(last["ENTRYPOINT"]) == ["sevo"]
    assert json.loads(last["CMD"]) == ["--help"]
    assert last["WORKDIR"] == "/app"
    assert last["USER"] not in ("root", "0")
    assert "/data" in json.loads(last["VOLUME"])
    # A HEALTHCHECK, if any, may only use what the image has (python, not curl/wget).
    if "HEALTHCHECK" in last:
        assert "python" in last["HEALTHCHECK"]


def test_dockerfile_copy_sources_exist_and_are_not_ignored(dockerfile):
    copies = [args for kw, args in dockerfile if kw in ("COPY", "ADD")]
    assert copies
    patterns = _dockerignore()
    for args in copies:
        assert "--from" not in args
        for source in _copy_sources(args):
            assert (ROOT / source).exists(), f"COPY source {source} missing from the repository"
            assert not _ignored(source, patterns), f"COPY source {source} is in .dockerignore"


def test_dockerfile_copies_every_package_the_project_installs(dockerfile):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    includes = project["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.rstrip("*") for p in includes}
    copied = {
        Path(s).as_posix().strip("/")
        for kw, args in dockerfile
        if kw == "COPY"
        for s in _copy_sources(args)
    }
    assert packages <= copied
    assert {"pyproject.toml", project["project"]["readme"]} <= copied


def test_dockerignore_keeps_local_state_and_secrets_out():
    patterns = _dockerignore()
    for path in (".venv", "runs", "results", ".git", "deploy/.env"):
        assert _ignored(path, patterns), path
    assert "benchmarks/results/**/*.npy" in patterns


# --- deploy/local scripts --------------------------------------------------------------------

LOCAL_SCRIPTS = sorted((DEPLOY / "local").glob("*.sh"))


def test_local_scripts_exist():
    assert {p.name for p in LOCAL_SCRIPTS} >= {"start.sh", "stop.sh", "status.sh"}


@pytest.mark.parametrize("script", LOCAL_SCRIPTS, ids=lambda p: p.name)
def test_local_script_is_executable_bash(script):
    assert os.access(script, os.X_OK), f"{script.name} is not executable"
    assert script.read_text().startswith("#!/usr/bin/env bash\n")
    bash = shutil.which("bash")
    assert bash, "bash not found"
    proc = subprocess.run([bash, "-n", str(script)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
