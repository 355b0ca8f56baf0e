"""Static checks of the production deploy files (no Docker needed): deploy/compose.yaml,
deploy/Dockerfile, .dockerignore, deploy/.env.example and the deploy/local scripts.

Every ``sevo`` command in the compose file is parsed by the real CLI parser after ``${VAR}``
interpolation, so a renamed or removed flag breaks these tests rather than a deployment. The
shell scripts of the Redis Cluster nodes and of the one-shot init services run under ``sh``
against stub ``docker-entrypoint.sh`` / ``redis-cli`` / ``kafka-topics.sh`` programs that record
their arguments and play a cluster or a broker, so their quoting, ``$$`` escapes, branches and
exit codes are exercised (not the real programs: there is no Docker here).
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
# The Redis Cluster's nodes (3 masters + 3 replicas) and the engine's data-parallel ranks.
REDIS_NODES = [f"redis-{i}" for i in range(1, 7)]
WORLD_SIZE = 2


# --- ${VAR} interpolation, as docker compose does it ------------------------------------------

_VAR = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


class MissingVariableError(ValueError):
    """A required variable (``${VAR:?msg}`` / ``${VAR?msg}``) is unset."""


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Substitute ``${VAR}``, ``$VAR``, ``${VAR:-default}``, ``${VAR-default}``,
    ``${VAR:?msg}``, ``${VAR?msg}`` and ``$$`` (a literal ``$``) like docker compose; an unset
    plain ``${VAR}`` / ``$VAR`` becomes the empty string (so a shell variable meant for the
    container must be written ``$$VAR``)."""

    def replace(m: re.Match[str]) -> str:
        if m.group("escaped"):
            return "$"
        if m.group("bare"):
            return env.get(m.group("bare")) or ""
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
    return {
        m.group("name") or m.group("bare")
        for m in _VAR.finditer(text)
        if m.group("name") or m.group("bare")
    }


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
        ("$X/$Y", {"X": "1"}, "1/"),
        ('exec x "$$@" "$${n:-0}" $$((i + 1))', {}, 'exec x "$@" "${n:-0}" $((i + 1))'),
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
    assert {"kafka", "kafka-init", "redis-cluster-init", "engine", *REDIS_NODES} <= set(services)
    assert "redis" not in services  # the single Redis gave way to the cluster


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
    for name in ("kafka", "engine", *REDIS_NODES):
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


def test_engine_depends_on_kafka_and_the_init_services(services):
    depends = services["engine"]["depends_on"]
    assert depends["kafka"]["condition"] == "service_healthy"
    # The topic has its partitions and the Redis Cluster is formed before a rank starts.
    for name in ("kafka-init", "redis-cluster-init"):
        assert depends[name]["condition"] == "service_completed_successfully", name
    assert not set(depends) & set(REDIS_NODES), "the engine waits for the cluster, not a node"


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
    assert args.world_size == WORLD_SIZE  # one model, trained by 2 data-parallel ranks
    assert args.bootstrap == "kafka:9092"
    assert args.topic == "events"
    assert args.group == "sevo-engine"
    assert args.dead_letter_topic == "events.dead"
    # Any one node of the Redis Cluster (the client detects cluster mode and finds the rest).
    assert args.redis_url == f"redis://:{DUMMY_ENV['REDIS_PASSWORD']}@redis-1:6379/0"
    assert args.namespace == DUMMY_ENV["SEVO_NAMESPACE"]
    # Checkpoints (rank 0's, of the whole group) live on the named volume.
    mounts = _named_volumes(engine).values()
    assert any(Path(args.checkpoint_dir).is_relative_to(m) for m in mounts), mounts
    # Metrics: served on all interfaces; rank r on --metrics-port + r, each exposed and
    # published; the healthcheck fetches rank 0's.
    assert args.metrics_host == "0.0.0.0"
    expose = [str(p) for p in engine["expose"]]
    ports = [str(p) for p in engine["ports"]]
    for rank in range(args.world_size):
        port = args.metrics_port + rank
        assert str(port) in expose, port
        assert f"{port}:{port}" in ports, port
    test = " ".join(_as_list(engine["healthcheck"]["test"]))
    assert f"127.0.0.1:{args.metrics_port}/metrics" in test


def test_engine_redis_url_names_a_cluster_node(services):
    url = _env(services["engine"])["SEVO_REDIS_URL"]
    host_port = url.rsplit("@", 1)[1].split("/", 1)[0]
    host, port = host_port.split(":")
    assert host in REDIS_NODES
    assert port == "6379"


def _seconds(duration: str) -> float:
    """A compose duration such as ``60s``, ``1m30s``."""
    units = {"h": 3600, "m": 60, "s": 1}
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


def test_engine_ranks_get_time_for_their_final_checkpoint(services):
    # docker stop -> SIGTERM to the launcher, which forwards it to the ranks and kills them
    # after TORCH_ELASTIC_SHUTDOWN_TIMEOUT; docker kills everything after stop_grace_period.
    engine = services["engine"]
    grace = _seconds(str(engine["stop_grace_period"]))
    shutdown = float(_env(engine)["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"])
    assert 30 <= shutdown < grace


def test_engine_command_default_namespace_is_prod(compose_text, capsys, monkeypatch):
    doc = interpolate_tree(yaml.safe_load(compose_text), {"REDIS_PASSWORD": "pw"})
    args = _parse_with_env(doc["services"]["engine"], monkeypatch, capsys)
    assert args.namespace == "prod"
    assert args.redis_url == "redis://:pw@redis-1:6379/0"


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
    # Should the producer create the topic (kafka-init normally has), one partition per rank.
    assert args.partitions >= WORLD_SIZE


# --- Redis Cluster and the one-shot init services (scripts run under sh against stubs) --------


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


_STUB_PRELUDE = """import json, os, sys
with open(os.environ['STUB_LOG'], 'a') as f:
    f.write(json.dumps(sys.argv[1:]) + '\\n')
"""


def _stub(directory: Path, name: str, body: str = "") -> Path:
    """An executable Python program ``directory/name`` that appends its arguments to
    ``$STUB_LOG`` (one JSON list a line), then runs ``body`` (with sys, os, json)."""
    path = directory / name
    # -IS: isolated, no site-packages (starts in a fraction of the time; stdlib only)
    path.write_text(f"#!{sys.executable} -IS\n{_STUB_PRELUDE}{body}")
    path.chmod(0o755)
    return path


def _run_script(
    argv: list[str], tmp_path: Path, env: Mapping[str, str]
) -> subprocess.CompletedProcess:
    """Run a service's ``command`` (e.g. ``["sh", "-c", SCRIPT]``) with ``tmp_path/bin`` (the
    stubs, and a ``sleep`` that returns at once) first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    sleep = bin_dir / "sleep"
    if not sleep.exists():
        sleep.write_text("#!/bin/sh\nexit 0\n")
        sleep.chmod(0o755)
    full_env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", **env}
    return subprocess.run(
        argv, env=full_env, capture_output=True, text=True, timeout=60, check=False
    )


def _calls(log: Path) -> list[list[str]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def _flag(argv: list[str], name: str) -> str:
    assert argv.count(name) == 1, f"{name} in {argv}"
    return argv[argv.index(name) + 1]


def _node_argv(service: dict, tmp_path: Path) -> list[str]:
    """The argv a cluster node's command hands to the image's entrypoint (recorded by a stub
    ``docker-entrypoint.sh``), with the container's HOSTNAME and environment."""
    log = tmp_path / "entrypoint.jsonl"
    _stub(_mkdir(tmp_path / "bin"), "docker-entrypoint.sh")
    env = {**_env(service), "HOSTNAME": service["hostname"], "STUB_LOG": str(log)}
    proc = _run_script(_as_list(service["command"]), tmp_path, env)
    assert proc.returncode == 0, proc.stderr
    [argv] = _calls(log)
    return argv


@pytest.mark.parametrize("name", REDIS_NODES)
def test_redis_cluster_node(services, name, tmp_path):
    node = services[name]
    assert node["image"].startswith("redis:7")
    assert node["restart"] == "unless-stopped"
    # Its hostname is its service name (a DNS name on the compose network), and it announces
    # it: the cluster then tells clients to reach the node by that name.
    assert node["hostname"] == name
    argv = _node_argv(node, tmp_path)
    assert argv[0] == "redis-server"  # through the image's entrypoint, which drops root
    assert _flag(argv, "--cluster-enabled") == "yes"
    assert _flag(argv, "--cluster-config-file")
    assert "/" not in _flag(argv, "--cluster-config-file")  # in the working dir, /data
    assert _flag(argv, "--cluster-node-timeout") == "5000"
    assert _flag(argv, "--appendonly") == "yes"
    assert _flag(argv, "--requirepass") == DUMMY_ENV["REDIS_PASSWORD"]
    assert _flag(argv, "--masterauth") == DUMMY_ENV["REDIS_PASSWORD"]  # replicas authenticate
    assert _flag(argv, "--cluster-announce-hostname") == name
    assert _flag(argv, "--cluster-preferred-endpoint-type") == "hostname"
    assert _flag(argv, "--port") == "6379"
    # The append-only file and nodes.conf live on the node's own named volume.
    assert list(_named_volumes(node).values()) == ["/data"]
    test = " ".join(_as_list(node["healthcheck"]["test"]))
    assert 'redis-cli -a "$REDIS_PASSWORD"' in test
    assert "ping" in test


def test_redis_cluster_nodes_share_one_definition_and_own_their_volumes(compose_text, services):
    # One YAML anchor for the six nodes (PyYAML resolved the merge keys above).
    assert compose_text.count("<<: *redis-node") == len(REDIS_NODES)
    volumes = [v for name in REDIS_NODES for v in _named_volumes(services[name])]
    assert len(set(volumes)) == len(REDIS_NODES), volumes


_REDIS_CLI_STUB = """
state_path = os.environ['STUB_STATE']
with open(state_path) as f:
    state = json.load(f)
args = sys.argv[1:]
host = args[args.index('-h') + 1] if '-h' in args else '127.0.0.1'
if '--cluster' in args:
    state['created'] = True
    print('>>> Performing hash slots allocation on 6 nodes...')
elif args[-1:] == ['ping']:
    if host in state.get('down', []):
        print('Could not connect to Redis at ' + host + ':6379', file=sys.stderr)
        sys.exit(1)
    print('PONG')
elif args[-2:] == ['cluster', 'info']:
    state['polls'] = state.get('polls', 0) + 1
    ok_after = state.get('ok_after')
    ok = state.get('created') or (ok_after is not None and state['polls'] > ok_after)
    known = 6 if state.get('created') else state['known']
    sys.stdout.write(
        'cluster_enabled:1\\r\\ncluster_state:' + ('ok' if ok else 'fail') + '\\r\\n'
        'cluster_slots_assigned:' + ('16384' if ok else '0') + '\\r\\n'
        'cluster_known_nodes:' + str(known) + '\\r\\n'
    )
else:
    print('unexpected redis-cli call', args, file=sys.stderr)
    sys.exit(2)
with open(state_path, 'w') as f:
    json.dump(state, f)
"""


def _run_cluster_init(services, tmp_path, state: dict) -> tuple[subprocess.CompletedProcess, list]:
    init = services["redis-cluster-init"]
    _stub(_mkdir(tmp_path / "bin"), "redis-cli", _REDIS_CLI_STUB)
    (tmp_path / "state.json").write_text(json.dumps(state))
    env = {
        **_env(init),
        "STUB_STATE": str(tmp_path / "state.json"),
        "STUB_LOG": str(tmp_path / "redis-cli.jsonl"),
    }
    proc = _run_script(_as_list(init["command"]), tmp_path, env)
    return proc, _calls(tmp_path / "redis-cli.jsonl")


def _creates(calls: list[list[str]]) -> list[list[str]]:
    return [c for c in calls if "--cluster" in c]


def test_redis_cluster_init_service(services):
    init = services["redis-cluster-init"]
    assert init["image"].startswith("redis:7")
    assert str(init["restart"]) == "no"  # one-shot
    assert "build" not in init
    depends = init["depends_on"]
    assert set(depends) == set(REDIS_NODES)
    assert all(d["condition"] == "service_healthy" for d in depends.values())
    assert _env(init)["REDIS_PASSWORD"] == DUMMY_ENV["REDIS_PASSWORD"]


def test_redis_cluster_init_creates_a_new_cluster_over_all_six_nodes(services, tmp_path):
    proc, calls = _run_cluster_init(services, tmp_path, {"known": 1})
    assert proc.returncode == 0, proc.stderr
    [create] = _creates(calls)
    assert create[:2] == ["-a", DUMMY_ENV["REDIS_PASSWORD"]]
    i = create.index("--cluster")
    assert create[i + 1] == "create"
    nodes = [a for a in create[i + 2 :] if not a.startswith("--") and ":" in a]
    assert nodes == [f"{n}:6379" for n in REDIS_NODES]  # by service name, all six
    assert _flag(create, "--cluster-replicas") == "1"  # 3 masters, a replica each
    assert "--cluster-yes" in create  # no prompt in a container
    # It waited for every node first, and for the cluster to be ok after creating it.
    pinged = [c[c.index("-h") + 1] for c in calls if c[-1:] == ["ping"]]
    assert pinged == REDIS_NODES
    assert calls.index(create) > max(i for i, c in enumerate(calls) if c[-1:] == ["ping"])
    assert calls[-1][-2:] == ["cluster", "info"]
    assert "Redis Cluster ok" in proc.stdout


def test_redis_cluster_init_leaves_a_formed_cluster_alone(services, tmp_path):
    proc, calls = _run_cluster_init(services, tmp_path, {"known": 6, "ok_after": 0})
    assert proc.returncode == 0, proc.stderr
    assert not _creates(calls)
    assert "already formed" in proc.stdout


def test_redis_cluster_init_waits_for_a_cluster_formed_before(services, tmp_path):
    # After a restart the nodes know each other (nodes.conf on their volumes) but the cluster
    # is not ok until they have reconnected: wait, never create it again.
    proc, calls = _run_cluster_init(services, tmp_path, {"known": 6, "ok_after": 3})
    assert proc.returncode == 0, proc.stderr
    assert not _creates(calls)
    assert "Redis Cluster ok" in proc.stdout


def test_redis_cluster_init_fails_when_a_formed_cluster_does_not_recover(services, tmp_path):
    proc, calls = _run_cluster_init(services, tmp_path, {"known": 6, "ok_after": None})
    assert proc.returncode != 0
    assert not _creates(calls)
    assert "not ok" in proc.stderr


def test_redis_cluster_init_fails_when_a_node_does_not_answer(services, tmp_path):
    proc, calls = _run_cluster_init(services, tmp_path, {"known": 1, "down": ["redis-4"]})
    assert proc.returncode != 0
    assert not _creates(calls)
    assert "redis-4" in proc.stderr


_KAFKA_TOPICS = "/opt/kafka/bin/kafka-topics.sh"
_KAFKA_TOPICS_STUB = """
state_path = os.environ['STUB_STATE']
with open(state_path) as f:
    state = json.load(f)
args = sys.argv[1:]
topic = args[args.index('--topic') + 1]
count = state.get(topic)
if '--create' in args:
    if count is None:
        state[topic] = int(args[args.index('--partitions') + 1])
        print('Created topic ' + topic + '.')
    elif '--if-not-exists' not in args:
        print('Error: Topic ' + topic + ' already exists.', file=sys.stderr)
        sys.exit(1)
elif '--describe' in args:
    if count is None:
        print('Error: Topic ' + topic + ' does not exist', file=sys.stderr)
        sys.exit(1)
    print('Topic: ' + topic + '\\tTopicId: x\\tPartitionCount: ' + str(count)
          + '\\tReplicationFactor: 1\\tConfigs: ')
    for p in range(count):
        print('\\tTopic: ' + topic + '\\tPartition: ' + str(p)
              + '\\tLeader: 1\\tReplicas: 1\\tIsr: 1')
with open(state_path, 'w') as f:
    json.dump(state, f)
"""


def _run_kafka_init(services, tmp_path, topics: dict) -> tuple[subprocess.CompletedProcess, dict]:
    init = services["kafka-init"]
    argv = _as_list(init["command"])
    assert _KAFKA_TOPICS in argv[-1]
    stub = _stub(_mkdir(tmp_path / "bin"), "kafka-topics.sh", _KAFKA_TOPICS_STUB)
    argv[-1] = argv[-1].replace(_KAFKA_TOPICS, str(stub))
    (tmp_path / "state.json").write_text(json.dumps(topics))
    env = {"STUB_STATE": str(tmp_path / "state.json"), "STUB_LOG": str(tmp_path / "kt.jsonl")}
    proc = _run_script(argv, tmp_path, env)
    for call in _calls(tmp_path / "kt.jsonl"):
        assert _flag(call, "--bootstrap-server") == "kafka:9092"
    return proc, json.loads((tmp_path / "state.json").read_text())


def test_kafka_init_service(services):
    init = services["kafka-init"]
    assert init["image"] == services["kafka"]["image"]  # kafka-topics.sh of the same release
    assert str(init["restart"]) == "no"  # one-shot
    assert init["depends_on"] == {"kafka": {"condition": "service_healthy"}}


def test_kafka_init_creates_the_topic_with_a_partition_per_rank(services, tmp_path, capsys):
    proc, topics = _run_kafka_init(services, tmp_path, {})
    assert proc.returncode == 0, proc.stderr
    engine = _parse(_as_list(services["engine"]["command"]), capsys)
    assert topics[engine.topic] >= engine.world_size == WORLD_SIZE


@pytest.mark.parametrize("existing", [2, 3])
def test_kafka_init_keeps_an_existing_topic_with_enough_partitions(services, tmp_path, existing):
    proc, topics = _run_kafka_init(services, tmp_path, {"events": existing})
    assert proc.returncode == 0, proc.stderr
    assert topics == {"events": existing}


def test_kafka_init_fails_on_a_topic_with_too_few_partitions(services, tmp_path):
    # The engine's ranks would refuse it; say so instead of starting them.
    proc, topics = _run_kafka_init(services, tmp_path, {"events": 1})
    assert proc.returncode != 0
    assert topics == {"events": 1}  # not altered behind the operator's back
    assert "1 partition(s)" in proc.stderr


# --- deploy/README.md's commands -------------------------------------------------------------


def _readme_commands(program: str) -> list[list[str]]:
    """The command lines of ``bash`` blocks in deploy/README.md that start with ``program``
    (backslash continuations joined, comments dropped)."""
    text = (DEPLOY / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] == program:
                commands.append(words)
    return commands


def test_readme_torchrun_command_parses(capsys):
    # Across machines: torch's launcher runs `-m streaming.cli run ...` on every machine.
    from torch.distributed.run import get_args_parser

    [argv] = _readme_commands("torchrun")
    launcher = get_args_parser().parse_args(argv[1:])
    assert launcher.module and launcher.training_script == "streaming.cli"
    assert launcher.rdzv_backend == "c10d"
    assert launcher.rdzv_endpoint and launcher.rdzv_id != "none"
    args = _parse(launcher.training_script_args, capsys)
    assert args.command == "run"
    assert args.world_size == 1  # torchrun sets WORLD_SIZE; --world-size is for one machine
    assert not args.peer_checkpoint_dir


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
