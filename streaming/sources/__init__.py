"""Where events come from: one contract for every source the pipeline reads.

* :class:`~streaming.sources.log.LogSource` — a named data set or a file (JSONL of the wire
  format, CSV/TSV, MovieLens, Amazon), in event-time order, finite.
* :class:`~streaming.sources.kafka.KafkaEventSource` — a Kafka topic, live.

Both parse records with the one wire-format parser (:mod:`engine.data.events`) and hand the
pipeline validated batches with the dead letters they met; the pipeline owns the dead-letter
sinks, the counters and the checkpoints.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

from streaming.events import EventBatch

__all__ = ["EventSource", "KafkaEventSource", "LogSource", "SourceListener"]


class SourceListener(Protocol):
    """What a source may call back into (the pipeline): where to resume, and rebalances."""

    def resume_positions(self) -> dict[str, int]: ...

    def on_revoke(self, positions: dict[str, int]) -> None: ...

    def on_assign(self, starts: dict[str, int | None]) -> None: ...

    def on_lost(self, positions: dict[str, int]) -> dict[str, int] | None: ...


@runtime_checkable
class EventSource(Protocol):
    """The source contract.

    Attributes:
        key: the source's name in checkpoint metadata (``"file:..."``, ``"kafka:TOPIC"``).
        group: the consumer group, or None.
        total: events in a finite source (for progress), None for a live one.
    """

    key: str
    group: str | None

    @property
    def total(self) -> int | None: ...

    def owns(self, position_key: str) -> bool:
        """Whether a checkpoint position key belongs to this source."""
        ...

    def attach(self, listener: SourceListener) -> None:
        """Route callbacks (rebalances, resume positions) to the pipeline."""
        ...

    def seek(self, positions: Mapping[str, int]) -> None:
        """Continue from a checkpoint's positions (keys this source does not know start at
        the beginning)."""
        ...

    def next_batch(self, max_records: int | None = None, timeout_ms: int = 0) -> EventBatch | None:
        """The next validated micro-batch; an empty one when a live source got nothing in
        time; None at the end of a finite source."""
        ...

    def positions(self, *, resolve: bool = True) -> dict[str, int]:
        """Resume positions after the last batch returned (``resolve=False``: never block)."""
        ...

    def commit(self, positions: Mapping[str, int]) -> bool:
        """Tell the outside world these positions are durable (Kafka group offsets)."""
        ...

    def lag(self) -> Mapping[str, int | None]:
        """Records behind the end, per position key."""
        ...

    def close(self) -> None: ...


def __getattr__(name: str):  # the sources import lazily: kafka-python only when used
    if name == "LogSource":
        from streaming.sources.log import LogSource

        return LogSource
    if name == "KafkaEventSource":
        from streaming.sources.kafka import KafkaEventSource

        return KafkaEventSource
    raise AttributeError(name)
