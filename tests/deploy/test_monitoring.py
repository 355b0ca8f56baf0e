"""The compose file's monitoring profile: Prometheus scrapes the engine, Grafana shows a dashboard
whose every query names metrics the engine exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
MONITORING = DEPLOY / "monitoring"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "sevo-engine.json"
#: PromQL words that are not metric names.
PROMQL_WORDS = {
    "sum", "rate", "by", "le", "histogram_quantile", "irate", "increase", "avg", "max", "min",
    "reason", "partition", "kind", "outcome",
}  # fmt: skip


def _exported_names() -> set[str]:
    """Every sample name the engine's registry can expose (labelled series included)."""
    from streaming.metrics import EngineMetrics

    names = set()
    for metric in EngineMetrics().registry.collect():
        if metric.type == "counter":
            names |= {f"{metric.name}_total", f"{metric.name}_created"}
        elif metric.type == "histogram":
            names |= {f"{metric.name}_{s}" for s in ("bucket", "sum", "count", "created")}
        else:
            names.add(metric.name)
    return names


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def _exprs(dashboard: dict) -> list[str]:
    return [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]


def test_dashboard_is_valid_with_unique_panel_ids(dashboard):
    assert dashboard["uid"] and dashboard["panels"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "prometheus"


def test_every_dashboard_metric_is_exported_by_the_engine(dashboard):
    exported = _exported_names()
    used = set()
    for expr in _exprs(dashboard):
        words = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", re.sub(r"\[[^\]]*\]", "", expr)))
        names = {w for w in words if w.startswith("sevo_")}
        assert not (words - names - PROMQL_WORDS), f"unexpected words in {expr!r}"
        assert names, f"no engine metric in {expr!r}"
        used |= names
    assert used <= exported, f"not exported by the engine: {sorted(used - exported)}"


def test_dashboard_covers_what_an_operator_watches(dashboard):
    used = " ".join(_exprs(dashboard))
    for metric in (
        "sevo_events_applied_total",
        "sevo_consumer_lag",
        "sevo_step_seconds_bucket",
        "sevo_event_freshness_seconds_bucket",
        "sevo_prequential_ndcg10",
        "sevo_publish_age_seconds",
        "sevo_redis_up",
        "sevo_broker_up",
        "sevo_dead_letters_total",
    ):
        assert metric in used, metric


def test_prometheus_scrapes_every_engine_rank(compose):
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    targets = [
        t for job in config["scrape_configs"] for s in job["static_configs"] for t in s["targets"]
    ]
    engine_cmd = [str(x) for x in compose["services"]["engine"]["command"]]
    port = int(engine_cmd[engine_cmd.index("--metrics-port") + 1])
    # `sevo run --world-size N`: rank r serves its metrics on --metrics-port + r.
    world_size = int(engine_cmd[engine_cmd.index("--world-size") + 1])
    assert world_size == 2
    ports = [port + rank for rank in range(world_size)]
    assert targets == [f"engine:{p}" for p in ports]
    expose = [str(p) for p in compose["services"]["engine"]["expose"]]
    assert all(str(p) in expose for p in ports), expose


def test_monitoring_services_mount_files_that_exist(compose):
    services = compose["services"]
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["monitoring"]
        for spec in services[name]["volumes"]:
            source = str(spec).split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source} missing"
        for spec in services[name]["volumes"]:
            source = str(spec).split(":")[0]
            if not source.startswith("."):
                assert source in compose["volumes"], f"{name}: undeclared volume {source}"
    provisioning = MONITORING / "grafana" / "provisioning"
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    assert datasource["datasources"][0]["uid"] == "prometheus"
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((provisioning / "dashboards" / "sevo.yml").read_text())
    dashboards_mount = next(
        str(v).split(":")[1]
        for v in services["grafana"]["volumes"]
        if str(v).startswith("./monitoring/grafana/dashboards")
    )
    assert provider["providers"][0]["options"]["path"] == dashboards_mount
