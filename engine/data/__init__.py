"""Interaction logs: loading, k-core filtering and the leave-one-out split of the SEvo paper.

Every loader returns one columnar form, :class:`Interactions`: parallel arrays of internal user
index, internal item index and unix time, sorted by ``(user, time)`` with a *stable* sort so that
events with the same timestamp keep the order of the source file (Amazon timestamps have whole-day
granularity; shuffling ties would change the sequences a model sees).

Index conventions (shared by the whole engine):

* users are ``0 .. num_users - 1``;
* items are ``1 .. num_items``; item ``0`` is reserved for padding (``item_ids[0] == "<pad>"``);
* external ids are kept as strings. When every external id of a kind is a non-negative decimal
  integer, internal indices follow numeric order (so MovieLens item ``"1"`` is internal item ``1``);
  otherwise they follow lexicographic order.

Typical use::

    from engine.data import core_filter, load_dataset, split_leave_one_out

    inter = core_filter(load_dataset("ml-100k"), k=5)
    split = split_leave_one_out(inter)
    seqs = split.padded_sequences(split.eval_users("test"), maxlen=50, which="test")

The package's modules (their public names are re-exported here, except the event parser's):

* :mod:`~engine.data.interactions`: the :class:`Interactions` / :class:`Ragged` containers,
  :func:`build_interactions` (id encoding) and :func:`dataset_stats`;
* :mod:`~engine.data.events`: the JSON event record (schema, validation with reason codes,
  ISO-8601 or unix-seconds timestamps), the one parser that the loaders and the streaming edge
  share (import it from there: its ``parse_records`` returns rejects, not dead letters);
* :mod:`~engine.data.loaders`: file readers (MovieLens-100K/1M, Amazon TSV + attributes, generic
  CSV/TSV/JSON event logs), :class:`DataFormatError`;
* :mod:`~engine.data.datasets`: the registry of named data sets, their download into a user cache
  and :func:`load_dataset` (by name or path);
* :mod:`~engine.data.preprocessing`: the k-core filter and renaming;
* :mod:`~engine.data.split`: :class:`SequenceSplit` and :func:`split_leave_one_out`;
* :mod:`~engine.data.synthetic`: :func:`drifting_stream`, a seeded generated stream whose item
  co-occurrence drifts (data set name ``synthetic-drift:RATE[:SEED[:EVENTS]]``).

Nothing is read or downloaded at import time. MovieLens-100K is fetched on demand from the
``recbole==1.2.1`` wheel on PyPI into a user cache (never into the repository); Amazon Beauty is
fetched into the same cache by ``sevo data fetch beauty`` (:func:`fetch_beauty`).
"""

from __future__ import annotations

from engine.data.datasets import (
    DATASET_NAMES,
    DATASETS,
    DatasetInfo,
    beauty_dir,
    cache_root,
    fetch_beauty,
    fetch_dataset,
    fetch_ml100k,
    find_dataset,
    is_dataset_name,
    load_dataset,
)
from engine.data.interactions import (
    PAD_ITEM_ID,
    Interactions,
    Ragged,
    build_interactions,
    dataset_stats,
)
from engine.data.loaders import (
    ML100K_GENRES,
    DataFormatError,
    load_amazon,
    load_events,
    load_movielens_1m,
    load_movielens_100k,
)
from engine.data.preprocessing import core_filter, renamed
from engine.data.split import SequenceSplit, Which, split_leave_one_out
from engine.data.synthetic import drifting_stream

__all__ = [
    "DATASETS",
    "DATASET_NAMES",
    "ML100K_GENRES",
    "PAD_ITEM_ID",
    "DataFormatError",
    "DatasetInfo",
    "Interactions",
    "Ragged",
    "SequenceSplit",
    "Which",
    "beauty_dir",
    "build_interactions",
    "cache_root",
    "core_filter",
    "dataset_stats",
    "drifting_stream",
    "fetch_beauty",
    "fetch_dataset",
    "fetch_ml100k",
    "find_dataset",
    "is_dataset_name",
    "load_amazon",
    "load_dataset",
    "load_events",
    "load_movielens_1m",
    "load_movielens_100k",
    "renamed",
    "split_leave_one_out",
]
