"""Online (incremental) training on an interaction stream over a live item graph.

:class:`OnlineTrainer` consumes micro-batches of already-validated events — external user and
item ids, event times, weights — from any source (a Kafka consumer, a log replay, a test) and
keeps everything the engine needs in one object:

* growable id maps (items get rows ``1, 2, ...`` in order of first appearance; row 0 = padding;
  users get rows ``0, 1, ...``), and a model, optimizer state and item graph that grow with them;
* the live :class:`~graph_store.ItemGraph`: on event ``(u, i)`` an edge of weight ``w/h`` joins
  ``i`` and the ``h``-th previous item of ``u`` (``h = 1..hops``; ``w`` is the event weight),
  stamped with the event time (or, with ``decay_unit="events"``, the running count of learned
  events) so ``half_life`` decay applies;
* a bounded recent sequence per user (the last ``maxlen + 1`` items), evicting the least recently
  seen users beyond ``max_users_state``;
* optionally every user's full history (for the prequential protocol's "exclude what the user
  has seen"; ``exclude_history="all"``).

One call to :meth:`OnlineTrainer.learn_many` = ids → graph → user state → ``steps_per_batch``
optimizer steps on the touched users' recent sequences, with SEvo smoothing the item-table update
over the graph's current snapshot. :meth:`OnlineTrainer.rank_before_learning` is the pure
"test" half of test-then-train. :meth:`OnlineTrainer.state_dict` /
:meth:`OnlineTrainer.from_state_dict` round-trip bit for bit (weights-only loadable).

The engine knows nothing of Kafka, Redis or files: validation and dead letters happen upstream.

Modules (this package re-exports the public names; the settings live in the torch-free
:mod:`engine.config`):

* :mod:`~engine.online.trainer`: :class:`OnlineTrainer`, coordinating the parts below, the model,
  the optimizer and the state dict;
* :mod:`~engine.online.ids`: external ids ↔ rows, events learned per item;
* :mod:`~engine.online.users`: per-user windows and histories, least-recently-seen eviction;
* :mod:`~engine.online.layout`: a batch's events placed after their users' windows;
* :mod:`~engine.online.graph_updates`: the edges a batch adds to the live graph;
* :mod:`~engine.online.ranking`: prequential ranks, and the vectors serving publishes.

Example:
    >>> trainer = OnlineTrainer(OnlineConfig(model="mf", maxlen=5, seed=0))
    >>> stats = trainer.learn_many(["u1", "u1", "u2"], ["a", "b", "a"], [1.0, 2.0, 3.0])
    >>> stats["new_items"], trainer.num_items, float(trainer.graph.to_scipy()[1, 2])
    (2, 2, 1.0)
"""

from engine.config import HISTORY_MODES, NEW_ITEM_POLICIES, OPTIMIZERS, OnlineConfig
from engine.config import ONLINE_MODELS as MODELS
from engine.online.trainer import OnlineTrainer

__all__ = [
    "HISTORY_MODES",
    "MODELS",
    "NEW_ITEM_POLICIES",
    "OPTIMIZERS",
    "OnlineConfig",
    "OnlineTrainer",
]
