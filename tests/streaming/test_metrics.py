"""Engine metrics: private registries, the HTTP exporter, the log line, and live values."""

from __future__ import annotations

import logging
import math
import threading
import time
import urllib.request

import pytest
import torch

from engine.online import OnlineConfig, OnlineTrainer
from streaming.checkpoint import CheckpointStore
from streaming.config import PipelineConfig
from streaming.events import Event
from streaming.kafka_client import ensure_topic, produce_events
from streaming.metrics import EngineMetrics
from streaming.sources.kafka import KafkaConfig
from tests.streaming.helpers import consume


def scrape(port: int) -> dict[str, float]:
    """``name{labels} -> value`` from the exporter's text exposition."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        text = response.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def test_each_instance_has_its_own_registry():
    a, b = EngineMetrics(), EngineMetrics()  # no "Duplicated timeseries" error
    a.record_batch(records=5, events=4, dead_reasons=["bad_id"], batch_s=0.02, step_s=0.01)
    assert a.value("events_applied_total") == 4 and b.value("events_applied_total") == 0
    assert a.value("records_consumed_total") == 5
    assert a.value("dead_letters_total", reason="bad_id") == 1
    assert b.value("dead_letters_total", reason="bad_id") is None
    assert a.value("step_seconds_count") == 1 and a.value("batch_seconds_sum") == 0.02


def test_recording_checkpoints_lag_graph_and_freshness():
    now = [1000.0]
    m = EngineMetrics(clock=lambda: now[0])
    assert math.isnan(m.value("checkpoint_age_seconds"))  # no checkpoint yet
    m.record_checkpoint(0.25)
    now[0] += 4.0
    assert m.value("checkpoint_age_seconds") == 4.0
    assert m.value("checkpoints_total") == 1 and m.value("checkpoint_seconds_sum") == 0.25
    m.set_lag({"t:0": 7, "t:1": None})
    assert m.value("consumer_lag", partition="t:0") == 7 and m.total_lag() == 7
    m.set_lag({"t:1": 2})  # t:0 no longer owned: its series goes away
    assert m.value("consumer_lag", partition="t:0") is None and m.total_lag() == 2
    m.set_graph(11, 40)
    assert (m.value("graph_nodes"), m.value("graph_nnz")) == (11, 40)
    m.record_batch(
        records=2, events=2, batch_s=0.1, step_s=0.05, event_times=[999.0, 1003.9], applied_at=1004
    )
    assert m.value("event_freshness_seconds_count") == 2
    assert m.value("event_freshness_seconds_bucket", le="0.25") == 1  # 0.1 s
    assert m.value("event_freshness_seconds_bucket", le="5.0") == 2  # 5 s
    m.record_rebalance()
    assert m.value("rebalances_total") == 1


def test_log_line_reports_rates_and_state(caplog):
    m = EngineMetrics(log_every_s=0.05)
    assert not m.maybe_log()  # the first call sets the baseline
    m.record_batch(records=3, events=3, dead_reasons=["invalid_json"], batch_s=0.01, step_s=0.004)
    m.set_lag({"t:0": 5})
    m.set_graph(3, 4)
    time.sleep(0.06)
    with caplog.at_level(logging.INFO, logger="streaming.metrics"):
        assert m.maybe_log()
    line = caplog.records[-1].getMessage()
    assert line.startswith("applied 3 events (")
    assert "dead letters 1, lag 5, step 4.0 ms, checkpoint age -, graph 3 nodes / 4 nnz" in line
    assert not m.maybe_log()  # not again before log_every_s


def test_exporter_serves_the_registry_over_http():
    with EngineMetrics() as m:
        port = m.serve(0)
        assert port > 0
        m.record_batch(records=1, events=1, batch_s=0.01, step_s=0.01)
        samples = scrape(port)
        assert samples["sevo_events_applied_total"] == 1
        with pytest.raises(RuntimeError, match="already running"):
            m.serve(0)
    with pytest.raises(OSError):
        scrape(port)  # closed


def test_metrics_move_while_a_consumer_runs(kafka_broker, unique_name, tmp_path):
    topic = unique_name("metrics")
    ensure_topic(kafka_broker, topic, partitions=1)
    torch.set_num_threads(1)
    metrics = EngineMetrics()
    port = metrics.serve(0)
    stop = threading.Event()
    out: dict = {}
    kafka = KafkaConfig(
        bootstrap=kafka_broker,
        topic=topic,
        group=unique_name("g"),
        session_timeout_ms=3000,
        heartbeat_interval_ms=500,
    )
    trainer = OnlineTrainer(
        OnlineConfig(model="mf", maxlen=5, model_overrides={"dim": 8}, lr=1e-3, steps_per_batch=1)
    )

    def engine() -> None:
        out["summary"] = consume(
            kafka,
            trainer,
            CheckpointStore(tmp_path / "ckpt"),
            PipelineConfig(checkpoint_every_events=50, max_batch=25, lag_every_s=0.05),
            stop=stop,
            metrics=metrics,
        )

    thread = threading.Thread(target=engine, name="consumer")
    thread.start()
    try:
        before = scrape(port)
        assert before["sevo_events_applied_total"] == 0
        now = time.time()
        produce_events(
            kafka_broker,
            topic,
            [Event(f"u{i % 4}", f"i{i % 9}", now - 100 + i) for i in range(120)],
        )
        produce_events(kafka_broker, topic, [b"not json"])
        deadline = time.monotonic() + 60
        while scrape(port).get("sevo_records_consumed_total", 0) < 121:
            assert thread.is_alive() and time.monotonic() < deadline
            time.sleep(0.1)
        time.sleep(0.2)  # one more lag reading after the last batch
        after = scrape(port)
    finally:
        stop.set()
        thread.join(60)
        metrics.close()
    assert after["sevo_events_applied_total"] == 120
    assert after['sevo_dead_letters_total{reason="invalid_json"}'] == 1
    assert after[f'sevo_consumer_lag{{partition="{topic}:0"}}'] == 0
    assert after["sevo_checkpoints_total"] >= 2 and after["sevo_checkpoint_age_seconds"] >= 0
    assert after["sevo_graph_nnz"] > 0 and after["sevo_graph_nodes"] == 10  # 9 items + padding
    assert after["sevo_step_seconds_count"] >= 1 and after["sevo_batch_seconds_sum"] > 0
    assert after["sevo_event_freshness_seconds_count"] == 120
    assert out["summary"]["events"] == 120


def test_log_line_shows_the_served_snapshot_and_a_redis_outage():
    from streaming.serving import PublishResult

    m = EngineMetrics()
    assert "served" not in m.log_line() and "REDIS" not in m.log_line()
    m.record_publish("error")
    assert m.log_line().endswith("nothing served yet, REDIS DOWN")
    m.record_publish("ok", PublishResult("delta", 3, 2, rows=10, users=1, seconds=0.01))
    assert m.log_line().endswith("served v3.2 0.0 s ago")
    assert m.value("published_rows_total", kind="delta") == 10.0
    assert m.value("redis_up") == 1.0 and m.value("served_version") == 3.0
    m.record_publish("error")
    assert m.log_line().endswith("served v3.2 0.0 s ago, REDIS DOWN")
    assert m.value("publishes_total", kind="none", outcome="error") == 2.0
