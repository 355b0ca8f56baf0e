"""A broker lost mid-run: kill -9 of the broker and a restart with its log intact.

The broker keeps its log in S3 (``moto_server`` on loopback), so after SIGKILL and a restart it
serves the same topic, records and group offsets, as a real Kafka cluster would after a broker
restart. The engine must wait for it with backoff (no spinning), show the outage in the
``sevo_broker_up`` gauge and in one WARNING line, then go on: every event applied exactly once,
the same state as a run that saw no outage.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from devtools.services import S3Service, TansuService, free_port
from streaming.cli import main
from streaming.kafka_client import ensure_topic, produce_events
from tests.streaming.test_consumer import (
    TINY_ARGS,
    assert_same_state,
    inspect,
    ml100k_events,
    newest_sidecar,
    run_cli,
    scrape,
    wait_for,
)

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("one_torch_thread")
# Object storage answers a fetch in tens of ms: a 10 ms fetch wait would come back empty.
FETCH_WAIT = ["--fetch-max-wait-ms", "500"]


@pytest.fixture
def durable_broker(tmp_path):
    """A Tansu broker whose log lives in an S3 server on loopback (both stopped after)."""
    s3 = S3Service(free_port(), tmp_path / "s3")
    s3.start()
    broker = TansuService(free_port(), tmp_path / "tansu", s3=s3)
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()
        s3.stop()


def test_broker_kill_9_and_restart_loses_and_doubles_nothing(
    durable_broker, unique_name, tmp_path, capsys
):
    events = ml100k_events(3000)
    topic = unique_name("outage")
    bootstrap = durable_broker.bootstrap
    ensure_topic(bootstrap, topic, partitions=1)  # one order of events: states compare exactly
    produce_events(bootstrap, topic, events[:1500])
    crashed, metrics_port = tmp_path / "crashed", free_port()
    argv = [
        "--bootstrap",
        bootstrap,
        "--topic",
        topic,
        "--group",
        unique_name("g"),
        "--checkpoint-dir",
        str(crashed),
        "--checkpoint-every",
        "300",
        "--max-batch",
        "100",
        *FETCH_WAIT,
        *TINY_ARGS,
    ]
    log_path = tmp_path / "run.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streaming.cli",
                "run",
                *argv,
                "--metrics-port",
                str(metrics_port),
                "--idle-exit",
                "10",
            ],
            cwd=REPO,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(
            lambda: newest_sidecar(crashed) is not None or proc.poll() is not None,
            "the first checkpoint",
        )
        assert proc.poll() is None, log_path.read_text()[-3000:]
        assert scrape(metrics_port).get("sevo_broker_up") == 1.0

        durable_broker.kill()  # SIGKILL: no clean shutdown of the broker
        wait_for(
            lambda: scrape(metrics_port).get("sevo_broker_up") == 0.0,
            "the broker_up gauge to drop",
            timeout_s=20,
        )
        # Waiting, not spinning: the engine's CPU while the broker is away.
        pid_stat = Path(f"/proc/{proc.pid}/stat")

        def cpu_s() -> float:
            fields = pid_stat.read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / 100.0  # utime + stime, clock ticks

        c0, t0 = cpu_s(), time.monotonic()
        time.sleep(4.0)
        busy = (cpu_s() - c0) / (time.monotonic() - t0)
        print(f"engine CPU while the broker was down: {busy:.1%} of a core")
        assert busy < 0.35, f"the engine used {busy:.0%} of a core while the broker was down"
        assert proc.poll() is None, log_path.read_text()[-3000:]

        durable_broker.start()
        producer = threading.Thread(
            target=produce_events, args=(bootstrap, topic, events[1500:]), kwargs={"rate": 1500.0}
        )
        producer.start()
        producer.join()
        wait_for(
            lambda: scrape(metrics_port).get("sevo_broker_up") == 1.0,
            "the broker_up gauge to recover",
            timeout_s=30,
        )
        assert proc.wait(120) == 0, log_path.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log_text = log_path.read_text()
    assert log_text.count("unreachable: waiting for it") == 1, log_text[-3000:]
    assert log_text.count("reachable again after") == 1, log_text[-3000:]
    # kafka-python's per-attempt connection errors are filtered: the outage is one line.
    assert "ECONNREFUSED" not in log_text, log_text[-3000:]

    # The same topic read without an outage gives the same state.
    straight = tmp_path / "straight"
    fresh = [*argv]
    fresh[fresh.index("--group") + 1] = unique_name("g2")
    fresh[fresh.index("--checkpoint-dir") + 1] = str(straight)
    run_cli(capsys, *fresh, "--idle-exit", "3")
    after_outage, uninterrupted = inspect(capsys, crashed), inspect(capsys, straight)
    assert after_outage["events_applied"] == 3000
    assert after_outage["offsets"] == uninterrupted["offsets"] == {f"{topic}:0": 3000}
    assert_same_state(after_outage, uninterrupted)
    assert main(["inspect", str(crashed)]) == 0
