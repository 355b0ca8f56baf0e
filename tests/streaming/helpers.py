"""Shared test helpers for the streaming tests."""

from __future__ import annotations

from typing import Any

from streaming.pipeline import Pipeline
from streaming.sources.kafka import KafkaConfig, KafkaEventSource


def consume(kafka: KafkaConfig, trainer: Any, store: Any, config: Any = None, **kw: Any) -> dict:
    """``sevo run``'s pipeline on a Kafka topic: the same :class:`Pipeline` as a replay, with
    a :class:`KafkaEventSource` (``stop`` is passed to ``run``, the rest to the pipeline)."""
    stop = kw.pop("stop", None)
    return Pipeline(trainer, store, config, **kw).run(KafkaEventSource(kafka), stop=stop)
