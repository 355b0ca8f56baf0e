"""Reading the online model without changing it: prequential ranks and what serving publishes.

* :func:`rank_before_learning`: the "test" half of test-then-train — each event's item ranked
  by the current model against every known item, the user's history excluded;
* :func:`item_matrix`, :func:`user_vectors`, :func:`recent_items`: the item output vectors, user
  representations and recent items a serving layer publishes (scores are ``user @ item``).

Each function takes the trainer's parts (model, id maps, user state) and leaves them as it found
them: no gradient, the model back in its previous train/eval mode.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch

from engine.metrics import target_ranks
from engine.models import Recommender
from engine.online.ids import IdMaps, as_str_array
from engine.online.layout import BatchLayout, build_layout
from engine.online.users import UserState

__all__ = ["item_matrix", "rank_before_learning", "recent_items", "seen_items", "user_vectors"]


@contextmanager
def _eval_mode(model: Recommender) -> Iterator[None]:
    """Run the block with ``model.eval()`` (no dropout), then restore its previous mode."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + n)`` for each (s, n), vectorised."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.cumsum(lengths) - lengths  # start of each range in the output
    return np.repeat(starts - offsets, lengths) + np.arange(total, dtype=np.int64)


def _left_compact(seqs: np.ndarray) -> np.ndarray:
    """Move the zeros of each row to the left, keeping the order of the non-zeros."""
    if seqs.size == 0:
        return seqs
    perm = np.argsort(seqs != 0, axis=1, kind="stable")
    return np.take_along_axis(seqs, perm, axis=1)


# ---------------------------------------------------------------------- prequential ranking
@torch.no_grad()
def rank_before_learning(
    model: Recommender,
    ids: IdMaps,
    users_state: UserState,
    users: Sequence[str] | np.ndarray,
    items: Sequence[str] | np.ndarray,
    *,
    exclude_history: str,
    eval_batch_size: int,
) -> np.ndarray:
    """Ranks ``1..num_items + 1`` of each event's item; see
    :meth:`engine.online.OnlineTrainer.rank_before_learning`, which this implements.

    Args:
        model: the model as it is before the batch.
        ids: the id maps (items unknown to them get rank ``num_items + 1``).
        users_state: the users' stored windows and histories.
        users: ``(B,)`` external user ids.
        items: ``(B,)`` external item ids.
        exclude_history: ``"all"`` (every item the user has seen) or ``"window"``.
        eval_batch_size: events scored per forward pass.
    """
    users_s = as_str_array("users", users)
    items_s = as_str_array("items", items)
    B = users_s.shape[0]
    if items_s.shape[0] != B:
        raise ValueError(f"users and items differ in length ({B} vs {items_s.shape[0]})")
    n = ids.num_items
    ranks = np.full(B, n + 1, dtype=np.int64)
    if B == 0 or n == 0:
        return ranks
    item_rows = ids.item_rows_of(items_s)
    user_rows = ids.user_rows_of(users_s)
    seqs, ex_rows, ex_items = _inputs_and_exclusions(
        users_state, users_s, user_rows, item_rows, exclude_history
    )
    known = item_rows > 0
    order = np.argsort(ex_rows, kind="stable")  # by event, so each chunk's pairs are one slice
    ex_rows, ex_items = ex_rows[order], ex_items[order]
    with _eval_mode(model):
        weight = model.item_output_weight()[: n + 1]  # (n+1, D)
        bias = model.item_output_bias()
        for lo in range(0, B, eval_batch_size):
            hi = min(lo + eval_batch_size, B)
            sel = np.arange(lo, hi)[known[lo:hi]]
            if sel.size == 0:
                continue
            rep = _user_reprs(model, user_rows[sel], seqs[sel])  # (b, D)
            scores = rep @ weight.T  # (b, n+1)
            if bias is not None:
                scores = scores + bias[: n + 1]
            ranks[sel] = (
                target_ranks(
                    scores,
                    torch.from_numpy(item_rows[sel]),
                    _chunk_exclusions(ex_rows, ex_items, sel, lo, hi),
                )
                .cpu()
                .numpy()
            )
    return ranks


def _user_reprs(model: Recommender, user_rows: np.ndarray, seqs: np.ndarray) -> torch.Tensor:
    """``(b, D)`` representations of events' users (rows -1 = unknown users) from their inputs.

    A model that reads a user table has no row for an unknown user: it gets the zero vector
    (every item scores the same), not the row of user 0 that the lookup had to use.
    """
    batch = {
        "users": torch.from_numpy(np.maximum(user_rows, 0)),
        "seqs": torch.from_numpy(seqs),
    }
    rep = model.user_repr(batch)  # (b, D)
    if not model.sequential:
        rep = rep * torch.from_numpy(user_rows >= 0).unsqueeze(1).to(rep.dtype)
    return rep


def _chunk_exclusions(
    ex_rows: np.ndarray, ex_items: np.ndarray, sel: np.ndarray, lo: int, hi: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The (row in the chunk, item) pairs to exclude for events ``sel`` of ``lo..hi-1``.

    ``ex_rows`` is sorted by event; rows are renumbered to the events' positions in ``sel``.
    """
    a, b = np.searchsorted(ex_rows, [sel[0], sel[-1] + 1])
    local = np.full(hi - lo, -1, dtype=np.int64)
    local[sel - lo] = np.arange(sel.size)
    rr, ii = local[ex_rows[a:b] - lo], ex_items[a:b]
    keep = rr >= 0
    return torch.from_numpy(rr[keep]), torch.from_numpy(ii[keep])


def _inputs_and_exclusions(
    users_state: UserState,
    users_s: np.ndarray,
    user_rows: np.ndarray,
    item_rows: np.ndarray,
    exclude_history: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each event's input sequence ``(B, maxlen)`` and its history as (event, item) pairs.

    The input is the user's stored window followed by the user's earlier events of the batch,
    the last ``maxlen`` known items of it (items unknown to the model are dropped).
    """
    # Unknown users have no rows: key them apart (below -1) so each gets its own group.
    _, uinv = np.unique(users_s, return_inverse=True)
    keys = np.where(user_rows >= 0, user_rows, -2 - uinv.reshape(-1))
    uniq_keys = np.unique(keys)
    lay = build_layout(
        keys, item_rows, users_state.stored_windows(np.where(uniq_keys >= 0, uniq_keys, -1))
    )
    T = users_state.window - 1  # maxlen
    seqs = _left_compact(lay.flat[lay.pos[:, None] - T + np.arange(T)])  # (B, T)
    ex_rows, ex_items = _exclusions(users_state, lay, uniq_keys, seqs, exclude_history)
    return seqs, ex_rows, ex_items


def _exclusions(
    users_state: UserState,
    lay: BatchLayout,
    uniq_keys: np.ndarray,
    seqs: np.ndarray,
    exclude_history: str,
) -> tuple[np.ndarray, np.ndarray]:
    """(event, item row) pairs of each event's history; unknown items (0) dropped."""
    B = lay.pos.shape[0]
    if exclude_history == "window":
        rows = np.repeat(np.arange(B, dtype=np.int64), seqs.shape[1])
        items = seqs.reshape(-1)
    else:
        # Earlier events of the same user in this batch ...
        W = users_state.window
        start_in_batch = (lay.block_start + W)[lay.group]
        batch_rows = np.repeat(np.arange(B, dtype=np.int64), lay.rank)
        batch_items = lay.flat[_ranges(start_in_batch, lay.rank)]
        # ... and the stored full history of each user.
        hists = users_state.histories_of(uniq_keys)
        lengths = np.array([h.size for h in hists], dtype=np.int64)
        flat_hist = np.concatenate(hists) if hists else np.zeros(0, dtype=np.int64)
        hist_start = np.cumsum(lengths) - lengths
        per_event = lengths[lay.group]
        hist_rows = np.repeat(np.arange(B, dtype=np.int64), per_event)
        hist_items = flat_hist[_ranges(hist_start[lay.group], per_event)]
        rows = np.concatenate([batch_rows, hist_rows])
        items = np.concatenate([batch_items, hist_items])
    keep = items > 0
    return rows[keep], items[keep]


# ---------------------------------------------------------------------- outputs for serving
@torch.no_grad()
def item_matrix(model: Recommender, ids: IdMaps) -> tuple[list[str], np.ndarray]:
    """``(item ids, (num_items, D) float32 matrix)``: the published item output vectors."""
    weight = model.item_output_weight()[1 : ids.num_items + 1]
    return ids.item_ids[1:], weight.detach().to(torch.float32).cpu().numpy().copy()


@torch.no_grad()
def user_vectors(
    model: Recommender, ids: IdMaps, users_state: UserState, users: Sequence[str] | np.ndarray
) -> np.ndarray:
    """``(B, D)`` float32 user representations; zeros for users without one.

    A sequential model encodes the user's last ``maxlen`` items, so a user without a kept
    window (unknown, or evicted) has none; a user-table model needs only a known user.
    """
    users_s = as_str_array("users", users)
    rows = ids.user_rows_of(users_s)
    seqs = users_state.stored_windows(rows)[:, 1:]  # (B, T)
    known = rows >= 0
    if model.sequential:  # no items, no representation
        known &= (seqs != 0).any(axis=1)
    with _eval_mode(model):
        dim = model.item_output_weight().shape[1]
        out = np.zeros((users_s.size, dim), dtype=np.float32)
        if known.any():
            batch = {
                "users": torch.from_numpy(rows[known]),
                "seqs": torch.from_numpy(seqs[known]),
            }
            out[known] = model.user_repr(batch).to(torch.float32).cpu().numpy()
    return out


def recent_items(
    ids: IdMaps, users_state: UserState, users: Sequence[str] | np.ndarray
) -> list[list[str]]:
    """Each user's kept recent item ids, oldest first; ``[]`` without a kept window."""
    rows = ids.user_rows_of(as_str_array("users", users))
    windows = users_state.stored_windows(rows)
    item_ids = ids.item_ids
    return [[item_ids[r] for r in window[window > 0].tolist()] for window in windows]


def seen_items(
    ids: IdMaps, users_state: UserState, users: Sequence[str] | np.ndarray, cap: int
) -> list[list[str]]:
    """Each user's distinct interacted item ids, most recent first, at most ``cap``.

    From the full history when the trainer keeps one (``exclude_history="all"``), else from the
    recent window; ``[]`` for unknown users and users whose state was evicted. Runs on the
    loop's thread at every publish, for up to a publish's worth of users: one vectorised pass
    over all their items (no per-user ``np.unique``).
    """
    rows = ids.user_rows_of(as_str_array("users", users))
    windows = users_state.stored_windows(rows)
    if users_state.keep_histories:
        histories = users_state.histories_of(rows)
        seqs = [h if h.size else w for h, w in zip(histories, windows)]
    else:
        seqs = list(windows)
    lengths = np.fromiter((q.size for q in seqs), dtype=np.int64, count=len(seqs))
    flat = np.concatenate(seqs) if seqs else np.zeros(0, dtype=np.int64)
    owner = np.repeat(np.arange(len(seqs)), lengths)
    # Newest first within each user: reverse the whole array, then order users back ascending.
    flat, owner = flat[::-1], owner[::-1]
    order = np.argsort(owner, kind="stable")
    flat, owner = flat[order], owner[order]
    keep = flat > 0
    flat, owner = flat[keep], owner[keep]
    # First (newest) occurrence of each (user, item) pair, in that order.
    _, first = np.unique(owner * (len(ids.item_ids) + 1) + flat, return_index=True)
    first.sort()
    flat, owner = flat[first], owner[first]
    # At most ``cap`` per user: rank within the user's run.
    starts = np.searchsorted(owner, np.arange(len(seqs)))
    ranked = np.arange(owner.size) - starts[owner] < cap
    flat, owner = flat[ranked], owner[ranked]
    item_ids = np.asarray(ids.item_ids, dtype=object)[flat]
    bounds = np.searchsorted(owner, np.arange(1, len(seqs)))
    return [part.tolist() for part in np.split(item_ids, bounds)] if seqs else []
