"""One exception tree for the streaming layer, with a ``retriable`` flag.

``retriable`` tells a caller whether trying the same operation again later can succeed
(a broker that is restarting, a full send buffer) or not (a deadline already spent, a bad
configuration). Bad *input* never raises: it becomes a dead letter.

Example:
    >>> err = ServiceUnavailableError("kafka broker 127.0.0.1:9", attempts=3, waited_s=2.0)
    >>> err.retriable, str(err).split(" (")[0]
    (False, 'kafka broker 127.0.0.1:9 unreachable after 3 attempts in 2.0 s')
"""

from __future__ import annotations

__all__ = ["DeliveryError", "ServiceUnavailableError", "StreamingError"]


class StreamingError(Exception):
    """Base class of every error the streaming layer raises on purpose.

    Attributes:
        retriable: True when retrying the same operation later can succeed.
    """

    retriable: bool = False


class ServiceUnavailableError(StreamingError):
    """A service (Kafka broker, Redis) stayed unreachable until the retry deadline.

    Not retriable: the caller already spent its whole retry budget; it should exit (a
    supervisor may restart it) rather than loop again.

    Attributes:
        service: what was contacted, e.g. ``"kafka broker 127.0.0.1:9092"``.
        attempts: how many connection attempts failed.
        waited_s: seconds spent trying.
        last_error: the last underlying exception, if any.
    """

    retriable = False

    def __init__(
        self,
        service: str,
        *,
        attempts: int,
        waited_s: float,
        last_error: BaseException | None = None,
    ) -> None:
        self.service = service
        self.attempts = attempts
        self.waited_s = waited_s
        self.last_error = last_error
        reason = f"; last error: {describe_error(last_error)}" if last_error is not None else ""
        super().__init__(
            f"{service} unreachable after {attempts} attempts in {waited_s:.1f} s"
            f" (is it running and reachable?{reason})"
        )


class CheckpointWriteError(StreamingError):
    """The checkpoint directory did not take a write (full, read-only, gone).

    Retriable: space can be freed or the mount fixed while the engine keeps the state in
    memory (the pipeline retries with backoff up to ``max_unsaved_records``).

    Attributes:
        directory: the checkpoint directory.
        reason: the operating system's words, e.g. ``"No space left on device"``.
    """

    retriable = True

    def __init__(self, directory: object, reason: str) -> None:
        self.directory = directory
        self.reason = reason
        super().__init__(f"checkpoint directory {directory} does not take writes: {reason}")


class DeliveryError(StreamingError):
    """Records could not be written to a broker (retriable: the data is still in hand)."""

    retriable = True


def describe_error(exc: BaseException | None) -> str:
    """A short one-line description of an exception for log lines."""
    if exc is None:
        return ""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    name = type(exc).__name__
    return f"{name}: {text}" if text else name
