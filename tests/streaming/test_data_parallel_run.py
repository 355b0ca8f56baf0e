"""``sevo run --world-size 2``: one model trained by two gloo ranks over a real broker (Tansu).

* the group's checkpoint equals one process stepping the union of the ranks' batches (read back
  from their step logs) — weights, optimizer moments and graph within 1e-5;
* kill -9 of one rank mid-stream: the launcher restarts the group from its checkpoint and every
  event is applied once (counters and graph equal a ``sevo replay`` of the same events, the
  positions equal a one-process ``sevo run`` of the topic);
* a rank whose partition receives nothing joins every step and never stalls the other.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

from engine.config import OnlineConfig
from engine.online import OnlineTrainer
from streaming.checkpoint import CheckpointStore
from streaming.cli import main
from streaming.events import Event
from streaming.kafka_client import ensure_topic, produce_events
from streaming.serving import EmbeddingClient
from tests.streaming.test_consumer import inspect, ml100k_events

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Small enough for a 2-core machine, the default SASRec otherwise.
SMALL = ["--dim", "16", "--maxlen", "10", "--threads", "1"]
# Decay by event time: the default clock counts events in arrival order, which differs
# between two partitions read side by side and one log read in order, so only a time-based
# clock can give a replay's decayed weights.
BY_EVENT_TIME = ["--decay-unit", "seconds", "--half-life", "2592000"]


def _group_argv(
    kafka_broker: str, topic: str, ckpt: Path, *extra: str, restarts: int = 0, idle_exit: int = 3
) -> list[str]:
    """``sevo run --world-size 2`` over ``topic`` (small SASRec), as a subprocess argv."""
    return [
        sys.executable,
        "-m",
        "streaming.cli",
        "run",
        "--bootstrap",
        kafka_broker,
        "--topic",
        topic,
        "--checkpoint-dir",
        str(ckpt),
        "--world-size",
        "2",
        "--idle-exit",
        str(idle_exit),
        "--max-restarts",
        str(restarts),
        *SMALL,
        *extra,
    ]


def _run_group(kafka_broker: str, topic: str, ckpt: Path, *extra: str, timeout: float = 300):
    argv = _group_argv(kafka_broker, topic, ckpt, *extra)
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def _replay_steps(step_dir: Path, config: OnlineConfig) -> tuple[OnlineTrainer, int]:
    """One process stepping the union batches the ranks logged (rank order)."""
    steps: dict[int, dict[int, dict]] = {}
    for path in sorted(step_dir.glob("steps-rank*.jsonl")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            steps.setdefault(row["step"], {})[row["rank"]] = row
    trainer = OnlineTrainer(config)
    for k in sorted(steps):
        parts = [steps[k][r] for r in sorted(steps[k])]
        assert len(parts) == 2, f"step {k} logged by {sorted(steps[k])}"
        trainer.learn_many(
            [x for p in parts for x in p["users"]],
            [x for p in parts for x in p["items"]],
            np.array([x for p in parts for x in p["times"]], dtype=np.float64),
            np.array([x for p in parts for x in p["weights"]], dtype=np.float64),
        )
    return trainer, len(steps)


def test_two_ranks_equal_one_process_stepping_the_union_batches(
    kafka_broker, redis_server, unique_name, tmp_path
):
    topic, namespace = unique_name("dp"), unique_name("ns")
    ensure_topic(kafka_broker, topic, partitions=2)
    produce_events(kafka_broker, topic, ml100k_events(1500))  # keyed by user id
    ckpt, steps_dir = tmp_path / "ckpt", tmp_path / "steps"
    done = _run_group(
        kafka_broker,
        topic,
        ckpt,
        "--max-batch",
        "40",
        "--step-log",
        str(steps_dir),
        "--redis-url",
        redis_server,
        "--namespace",
        namespace,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    state = CheckpointStore(ckpt).latest_checkpoint()
    assert state is not None and state.meta["world_size"] == 2
    assert sum(state.offsets.values()) == 1500
    ref, n_steps = _replay_steps(steps_dir, OnlineConfig.from_dict(state.state["config"]))
    assert n_steps >= 20
    saved = state.state
    assert int(saved["events_applied"]) == ref.events_applied == 1500
    assert ref.item_ids() == OnlineTrainer.from_state_dict(saved).item_ids()
    names = [n for n, _ in ref.model.named_parameters()]
    for name, value in ref.model.state_dict().items():
        if name.endswith("attn.k.bias"):  # no effect on any output (see test_data_parallel)
            continue
        torch.testing.assert_close(saved["model"][name], value, atol=1e-5, rtol=1e-5, msg=name)
    for pid, moments in ref.optimizer.state_dict()["state"].items():
        if names[pid].endswith("attn.k.bias"):
            continue
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(
                saved["optimizer"]["state"][pid][key], moments[key], atol=1e-5, rtol=1e-4
            )
    group = OnlineTrainer.from_state_dict(saved)
    group_graph = group.graph.to_scipy().toarray()
    np.testing.assert_allclose(group_graph, ref.graph.to_scipy().toarray(), rtol=1e-6, atol=1e-9)

    # one publisher of the shared table (rank 0); each rank published its own users' vectors
    client = EmbeddingClient(redis_server, namespace=namespace)
    ids, matrix = group.item_matrix()
    assert client.item_ids() == ids
    np.testing.assert_allclose(client.item_matrix(), matrix, atol=1e-6)
    owners = {}
    for path in steps_dir.glob("steps-rank*.jsonl"):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            owners.update({u: row["rank"] for u in row["users"]})
    assert set(owners.values()) == {0, 1}
    for user in owners:  # a vector as of the user's last batch, with its recent items
        assert client.user_vector(user).shape == (matrix.shape[1],)
        assert client.user_state(user)["recent_items"] == group.recent_items([user])[0]


def _workers(launcher: psutil.Process) -> list[psutil.Process]:
    """The ranks: ``streaming.cli run`` processes below the launcher."""
    return [
        p
        for p in launcher.children(recursive=True)
        if "streaming.cli" in " ".join(p.cmdline()) and p.pid != launcher.pid
    ]


def test_kill_9_of_one_rank_restarts_the_group_and_applies_every_event_once(
    kafka_broker, unique_name, tmp_path, capsys
):
    events = ml100k_events(3000)
    topic = unique_name("dpkill")
    ensure_topic(kafka_broker, topic, partitions=2)
    produce_events(kafka_broker, topic, events[:1500])
    ckpt = tmp_path / "ckpt"
    log_path = tmp_path / "group.log"
    argv = _group_argv(
        kafka_broker,
        topic,
        ckpt,
        "--checkpoint-every",
        "300",
        "--max-batch",
        "50",
        *BY_EVENT_TIME,
        restarts=2,
        idle_exit=4,
    )
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(argv, cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        launcher = psutil.Process(proc.pid)
        deadline = time.monotonic() + 120
        while CheckpointStore(ckpt).latest_version() is None if ckpt.exists() else True:
            assert proc.poll() is None, log_path.read_text()[-4000:]
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.1)
        victims = _workers(launcher)
        assert len(victims) == 2, [p.cmdline() for p in victims]
        victims[-1].send_signal(signal.SIGKILL)
        produce_events(kafka_broker, topic, events[1500:])
        assert proc.wait(300) == 0, log_path.read_text()[-4000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log_path.read_text()
    assert "resuming from checkpoint" in text  # the group came back from its checkpoint

    after = inspect(capsys, ckpt)
    assert after["events_applied"] == 3000

    # the same events replayed in one process: same counters and graph
    log_file = tmp_path / "events.jsonl"
    log_file.write_text(
        "".join(
            json.dumps({"user_id": e.user_id, "item_id": e.item_id, "timestamp": e.timestamp})
            + "\n"
            for e in events
        )
    )
    replayed = tmp_path / "replayed"
    capsys.readouterr()
    assert (
        main(
            [
                "replay",
                str(log_file),
                "--checkpoint-dir",
                str(replayed),
                *SMALL,
                *BY_EVENT_TIME,
                "--json",
            ]
        )
        == 0
    )
    reference = inspect(capsys, replayed)
    for key in ("events_applied", "num_items", "num_users", "graph_nnz"):
        assert after[key] == reference[key], key
    assert math.isclose(after["graph_total_weight"], reference["graph_total_weight"], rel_tol=1e-6)

    # positions equal a one-process run of the same topic
    single = tmp_path / "single"
    capsys.readouterr()
    assert (
        main(
            [
                "run",
                "--bootstrap",
                kafka_broker,
                "--topic",
                topic,
                "--group",
                unique_name("g1"),
                "--checkpoint-dir",
                str(single),
                "--idle-exit",
                "2",
                "--session-timeout-ms",
                "3000",
                *SMALL,
                *BY_EVENT_TIME,
                "--json",
            ]
        )
        == 0
    )
    assert inspect(capsys, single)["offsets"] == after["offsets"]


def test_a_rank_whose_partition_gets_nothing_never_stalls_the_other(
    kafka_broker, unique_name, tmp_path
):
    topic = unique_name("dpempty")
    ensure_topic(kafka_broker, topic, partitions=2)
    events = [Event(e.user_id, e.item_id, e.timestamp, e.weight) for e in ml100k_events(600)]
    # every record to partition 0 (rank 0); rank 1's partition stays empty
    produce_events(kafka_broker, topic, events, key=lambda e: b"same-key")
    ckpt = tmp_path / "ckpt"
    started = time.monotonic()
    done = _run_group(kafka_broker, topic, ckpt, "--max-batch", "50")
    took = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-4000:]
    state = CheckpointStore(ckpt).latest_checkpoint()
    assert int(state.state["events_applied"]) == 600
    assert sorted(v for v in state.offsets.values()) in ([0, 600], [600])
    assert took < 120, f"took {took:.0f} s"


def test_a_restart_with_another_world_size_repartitions(
    kafka_broker, unique_name, tmp_path, capsys
):
    """The group checkpoint holds every partition's position and every user's state, so a
    restart with another number of ranks (2 → 1 → 2) resumes each partition where it ended
    and finds each user's window, wherever its partition now lives."""
    events = ml100k_events(2000)
    topic = unique_name("dpresize")
    ensure_topic(kafka_broker, topic, partitions=2)
    ckpt = tmp_path / "ckpt"
    produce_events(kafka_broker, topic, events[:800])
    done = _run_group(kafka_broker, topic, ckpt, *BY_EVENT_TIME)
    assert done.returncode == 0, done.stderr[-4000:]
    produce_events(kafka_broker, topic, events[800:1500])
    capsys.readouterr()
    one = [
        "run",
        "--bootstrap",
        kafka_broker,
        "--topic",
        topic,
        "--checkpoint-dir",
        str(ckpt),
        "--idle-exit",
        "2",
        "--session-timeout-ms",
        "3000",
        *SMALL,
        *BY_EVENT_TIME,
        "--json",
    ]
    assert main(one) == 0
    assert inspect(capsys, ckpt)["events_applied"] == 1500
    produce_events(kafka_broker, topic, events[1500:])
    done = _run_group(kafka_broker, topic, ckpt, *BY_EVENT_TIME)
    assert done.returncode == 0, done.stderr[-4000:]
    after = inspect(capsys, ckpt)
    assert after["events_applied"] == 2000
    assert sum(after["offsets"].values()) == 2000

    straight = tmp_path / "straight"
    one[one.index("--checkpoint-dir") + 1] = str(straight)
    at = one.index("--topic")
    one[at:at] = ["--group", unique_name("g")]
    assert main(one) == 0
    reference = inspect(capsys, straight)
    assert after["offsets"] == reference["offsets"]
    for key in ("events_applied", "num_items", "num_users", "graph_nnz"):
        assert after[key] == reference[key], key
    assert math.isclose(after["graph_total_weight"], reference["graph_total_weight"], rel_tol=1e-6)
