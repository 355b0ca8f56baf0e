"""Local service management: the fixtures' services and the deploy/local command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from devtools import services
from devtools.services import ServiceStartError, free_port

ROOT = Path(__file__).resolve().parents[2]


def test_redis_service_restart_keeps_data_with_appendonly(make_redis_service):
    service = make_redis_service(appendonly=True)
    client = redis.Redis.from_url(service.url)
    client.set("k", b"v")
    client.close()
    service.kill()  # crash, like kill -9
    assert not service.running
    service.start()
    client = redis.Redis.from_url(service.url)
    assert client.get("k") == b"v"
    client.close()


def test_tansu_restart_loses_topics(make_kafka_service):
    from kafka import KafkaConsumer

    from streaming.kafka_client import ensure_topic

    broker = make_kafka_service()
    assert ensure_topic(broker.bootstrap, "kept-in-memory") is True
    broker.restart()

    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False)
    try:
        assert "kept-in-memory" not in consumer.topics()
    finally:
        consumer.close()


def test_a_service_that_cannot_start_reports_its_log(make_redis_service):
    first = make_redis_service()
    clash = make_redis_service(start=False, port=first.port)  # same port: bind fails
    with pytest.raises(ServiceStartError, match=f"127.0.0.1:{first.port} is already in use"):
        clash.start(timeout_s=10)
    assert not clash.running


def test_a_service_that_exits_early_reports_its_log(tmp_path):
    bad = services.RedisService(free_port(), tmp_path / "bad", binary="/bin/false")
    with pytest.raises(ServiceStartError, match="redis-server exited with status 1"):
        bad.start(timeout_s=10)


def test_local_services_command_line(tmp_path):
    state = tmp_path / "state"
    kafka_port, redis_port = free_port(), free_port()

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "devtools.services", *args, "--state-dir", str(state)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )

    started = cli("start", "--kafka-port", str(kafka_port), "--redis-port", str(redis_port))
    try:
        assert started.returncode == 0, started.stderr
        assert f"kafka started on 127.0.0.1:{kafka_port}" in started.stderr
        status = cli("status", "--json")
        assert status.returncode == 0, status.stderr
        info = json.loads(status.stdout)
        assert info["kafka"]["running"] and info["redis"]["running"]
        assert info["redis"]["address"] == f"redis://127.0.0.1:{redis_port}/0"
        services.wait_for_kafka(f"127.0.0.1:{kafka_port}", 10)
        services.wait_for_redis(info["redis"]["address"], 10)
        again = cli("start", "--kafka-port", str(kafka_port), "--redis-port", str(redis_port))
        assert again.returncode == 0 and "already running" in again.stderr
    finally:
        stopped = cli("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert "kafka stopped" in stopped.stderr and "redis stopped" in stopped.stderr
    for name in ("kafka", "redis"):
        pid = info[name]["pid"]
        assert (
            not Path(f"/proc/{pid}").exists()
            or b"zombie" in Path(f"/proc/{pid}/status").read_bytes().lower()
        )
    status = cli("status", "--json")
    assert status.returncode == 3 and not json.loads(status.stdout)["kafka"]["running"]
