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

Nothing is read or downloaded at import time. MovieLens-100K is fetched on demand from the
``recbole==1.2.1`` wheel on PyPI into a user cache (never into the repository).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, NamedTuple, overload

import numpy as np

__all__ = [
    "ML100K_GENRES",
    "PAD_ITEM_ID",
    "DataFormatError",
    "Interactions",
    "Ragged",
    "SequenceSplit",
    "build_interactions",
    "core_filter",
    "dataset_stats",
    "fetch_ml100k",
    "load_amazon",
    "load_dataset",
    "load_events",
    "load_movielens_1m",
    "load_movielens_100k",
    "split_leave_one_out",
]

logger = logging.getLogger(__name__)

PAD_ITEM_ID = "<pad>"
"""External id stored at ``item_ids[0]``, the padding item."""

ML100K_GENRES: tuple[str, ...] = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
"""The 19 MovieLens genres in GroupLens ``u.genre`` order; category id = position in this tuple.
MovieLens-1M uses the same names without ``"unknown"``."""

Which = Literal["train", "valid", "test"]

_RECBOLE_VERSION = "1.2.1"
_RECBOLE_ML100K_DIR = "recbole/dataset_example/ml-100k/"
_ML100K_FILES = ("ml-100k.inter", "ml-100k.item")


class DataFormatError(ValueError):
    """A data file is missing columns, has ragged rows or holds values that cannot be parsed."""


# --------------------------------------------------------------------------------------------------
# Columnar containers
# --------------------------------------------------------------------------------------------------


class Ragged(NamedTuple):
    """A ragged 2-D integer array in CSR form: row ``r`` is ``values[offsets[r]:offsets[r + 1]]``.

    Attributes:
        values: Flat int64 values of all rows, row after row.
        offsets: int64 array of length ``num_rows + 1``, ``offsets[0] == 0``, non-decreasing.
    """

    values: np.ndarray
    offsets: np.ndarray

    @property
    def num_rows(self) -> int:
        """Number of rows."""
        return int(self.offsets.shape[0] - 1)

    def lengths(self) -> np.ndarray:
        """Length of every row, int64 array of shape ``(num_rows,)``."""
        return np.diff(self.offsets)

    def row(self, r: int) -> np.ndarray:
        """Values of row ``r`` (a view, do not modify)."""
        if not 0 <= r < self.num_rows:
            raise ValueError(f"row {r} out of range [0, {self.num_rows})")
        return self.values[self.offsets[r] : self.offsets[r + 1]]


@dataclass(frozen=True, eq=False, repr=False)
class Interactions:
    """An implicit-feedback log in columnar form, sorted by ``(user, time)``.

    Rows are sorted by internal user index, then time, with ties in the order of the source file.
    The constructor validates shapes, dtypes, index ranges and this ordering; use
    :func:`build_interactions` to build one from external ids in any order. Arrays are not copied:
    treat them as read-only.

    Attributes:
        users: int64 ``(n,)`` internal user index ``0 .. num_users - 1`` of each interaction.
        items: int64 ``(n,)`` internal item index ``1 .. num_items`` of each interaction.
        times: float64 ``(n,)`` unix seconds.
        user_ids: str ``(num_users,)`` external id of each internal user.
        item_ids: str ``(num_items + 1,)`` external id of each internal item; ``item_ids[0]`` is
            ``"<pad>"``.
        item_categories: Optional list of ``num_items + 1`` int64 arrays, the category ids of each
            internal item (sorted, unique; entry 0 is empty). Category ids index ``category_names``.
        category_names: Optional str array, the name of each category id.
        name: Free-form dataset name, e.g. ``"ml-100k"``.

    Example:
        >>> inter = build_interactions(["a", "a", "b"], ["x", "y", "x"], [1.0, 2.0, 1.0])
        >>> inter.num_users, inter.num_items, inter.num_interactions
        (2, 2, 3)
        >>> inter.items.tolist()
        [1, 2, 1]
    """

    users: np.ndarray
    items: np.ndarray
    times: np.ndarray
    user_ids: np.ndarray
    item_ids: np.ndarray
    item_categories: list[np.ndarray] | None = None
    category_names: np.ndarray | None = None
    name: str = ""

    def __post_init__(self) -> None:
        users = _as_int64_1d(self.users, "users")
        items = _as_int64_1d(self.items, "items")
        times = np.asarray(self.times, dtype=np.float64)
        if times.ndim != 1:
            raise ValueError(f"times must be 1-D, got shape {times.shape}")
        user_ids = np.asarray(self.user_ids).astype(str)
        item_ids = np.asarray(self.item_ids).astype(str)
        if user_ids.ndim != 1 or item_ids.ndim != 1:
            raise ValueError("user_ids and item_ids must be 1-D")
        object.__setattr__(self, "users", users)
        object.__setattr__(self, "items", items)
        object.__setattr__(self, "times", times)
        object.__setattr__(self, "user_ids", user_ids)
        object.__setattr__(self, "item_ids", item_ids)

        n = users.shape[0]
        if items.shape[0] != n or times.shape[0] != n:
            raise ValueError(
                f"users, items and times must have equal length, got {n}, {items.shape[0]}, "
                f"{times.shape[0]}"
            )
        if item_ids.shape[0] < 1 or item_ids[0] != PAD_ITEM_ID:
            raise ValueError(f"item_ids[0] must be {PAD_ITEM_ID!r} (item 0 is padding)")
        num_users, num_items = user_ids.shape[0], item_ids.shape[0] - 1
        if n:
            if users.min() < 0 or users.max() >= num_users:
                raise ValueError(f"users must lie in [0, {num_users})")
            if items.min() < 1 or items.max() > num_items:
                raise ValueError(f"items must lie in [1, {num_items}] (0 is padding)")
            if not np.all(np.isfinite(times)):
                raise ValueError("times must be finite")
            du = np.diff(users)
            if np.any(du < 0) or np.any((du == 0) & (np.diff(times) < 0)):
                raise ValueError(
                    "rows must be sorted by (user, time); build_interactions() sorts them stably"
                )
        if self.item_categories is not None:
            cats = [np.asarray(c, dtype=np.int64).reshape(-1) for c in self.item_categories]
            if len(cats) != num_items + 1:
                raise ValueError(
                    f"item_categories must have num_items + 1 = {num_items + 1} entries, "
                    f"got {len(cats)}"
                )
            if cats[0].size:
                raise ValueError("item_categories[0] (padding) must be empty")
            object.__setattr__(self, "item_categories", cats)
        if self.category_names is not None:
            object.__setattr__(self, "category_names", np.asarray(self.category_names).astype(str))

    @property
    def num_users(self) -> int:
        """Number of users (``len(user_ids)``)."""
        return int(self.user_ids.shape[0])

    @property
    def num_items(self) -> int:
        """Number of real items (``len(item_ids) - 1``; item 0 is padding)."""
        return int(self.item_ids.shape[0] - 1)

    @property
    def num_interactions(self) -> int:
        """Number of interactions (rows)."""
        return int(self.users.shape[0])

    @property
    def num_categories(self) -> int:
        """Number of category ids (0 when there are no categories)."""
        if self.category_names is not None:
            return int(self.category_names.shape[0])
        if self.item_categories is None:
            return 0
        return int(max((int(c.max()) + 1 for c in self.item_categories if c.size), default=0))

    def user_offsets(self) -> np.ndarray:
        """CSR offsets of each user's rows: user ``u`` owns rows ``offsets[u]:offsets[u + 1]``.

        Returns:
            int64 array of shape ``(num_users + 1,)``.
        """
        counts = np.bincount(self.users, minlength=self.num_users)
        return _offsets_from_counts(counts)

    def sequences(self) -> Ragged:
        """Each user's chronological item sequence as a :class:`Ragged` array."""
        return Ragged(self.items, self.user_offsets())

    def __repr__(self) -> str:
        cats = "" if self.item_categories is None else f", categories={self.num_categories}"
        return (
            f"Interactions(name={self.name!r}, users={self.num_users}, items={self.num_items}, "
            f"interactions={self.num_interactions}{cats})"
        )


# --------------------------------------------------------------------------------------------------
# Building from external ids
# --------------------------------------------------------------------------------------------------


def build_interactions(
    user_ids: Sequence[Any] | np.ndarray,
    item_ids: Sequence[Any] | np.ndarray,
    times: Sequence[float] | np.ndarray,
    *,
    item_categories: Mapping[str, Sequence[Any]] | None = None,
    category_order: Sequence[str] | None = None,
    name: str = "",
) -> Interactions:
    """Encodes external ids and sorts rows stably by ``(user, time)``.

    Args:
        user_ids: External user id of each interaction (converted with ``str``).
        item_ids: External item id of each interaction (converted with ``str``).
        times: Unix seconds of each interaction.
        item_categories: Optional ``{external item id: [category name, ...]}``. Items of the log
            missing from it get no categories; entries for items not in the log are ignored.
        category_order: Optional preferred order of category names (category id = position); names
            not listed are appended in numeric-aware sorted order. Without it every name is sorted.
        name: Dataset name.

    Returns:
        The log as :class:`Interactions`, rows in file order within equal ``(user, time)``.

    Raises:
        ValueError: If lengths differ, times are not finite, or an item id equals ``"<pad>"``.
    """
    users_ext = _as_str_1d(user_ids, "user_ids")
    items_ext = _as_str_1d(item_ids, "item_ids")
    t = np.asarray(times, dtype=np.float64).reshape(-1)
    if not (users_ext.shape[0] == items_ext.shape[0] == t.shape[0]):
        raise ValueError(
            f"user_ids, item_ids and times must have equal length, got {users_ext.shape[0]}, "
            f"{items_ext.shape[0]}, {t.shape[0]}"
        )
    if not np.all(np.isfinite(t)):
        raise ValueError("times must be finite")
    if np.any(items_ext == PAD_ITEM_ID):
        raise ValueError(f"{PAD_ITEM_ID!r} is reserved for the padding item")

    user_vocab, users = _encode_ids(users_ext)
    item_vocab, items0 = _encode_ids(items_ext)
    items = items0 + 1
    order = _stable_user_time_order(users, t)
    item_id_table = np.concatenate([np.array([PAD_ITEM_ID]), item_vocab]).astype(str)

    cats: list[np.ndarray] | None = None
    names: np.ndarray | None = None
    if item_categories is not None:
        cats, names = _encode_categories(item_id_table, item_categories, category_order)
    return Interactions(
        users=users[order],
        items=items[order],
        times=t[order],
        user_ids=user_vocab,
        item_ids=item_id_table,
        item_categories=cats,
        category_names=names,
        name=name,
    )


def _as_str_1d(values: Sequence[Any] | np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be 1-D, got shape {arr.shape}")
    return arr.astype(str)


def _as_int64_1d(values: Any, what: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{what} must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _numeric_aware_order(strings: np.ndarray) -> np.ndarray:
    """Permutation sorting ``strings`` numerically if all are digit strings, else by characters."""
    order = np.argsort(strings, kind="stable")
    if strings.size and bool(np.all(np.char.isdigit(strings))):
        # For digit strings, (length, lexicographic) order is numeric order; no int overflow.
        order = order[np.argsort(np.char.str_len(strings[order]), kind="stable")]
    return order


def _encode_ids(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Maps string ids to ``0 .. V-1`` in numeric-aware order. Returns (vocabulary, codes)."""
    uniq, inverse = np.unique(values, return_inverse=True)
    inverse = inverse.reshape(-1)
    order = _numeric_aware_order(uniq)
    rank = np.empty(order.shape[0], dtype=np.int64)
    rank[order] = np.arange(order.shape[0], dtype=np.int64)
    return uniq[order].astype(str), rank[inverse]


def _stable_user_time_order(users: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Row order by (user, time); equal keys keep their input order (two stable passes)."""
    order = np.argsort(times, kind="stable")
    return order[np.argsort(users[order], kind="stable")]


def _offsets_from_counts(counts: np.ndarray) -> np.ndarray:
    offsets = np.zeros(counts.shape[0] + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return offsets


def _encode_categories(
    item_id_table: np.ndarray,
    mapping: Mapping[str, Sequence[Any]],
    category_order: Sequence[str] | None,
) -> tuple[list[np.ndarray], np.ndarray]:
    """Category ids per internal item: sorted, unique; ids index the returned names."""
    per_item = [mapping.get(str(ext), ()) for ext in item_id_table.tolist()]
    per_item[0] = ()
    lengths = np.fromiter((len(cs) for cs in per_item), dtype=np.int64, count=len(per_item))
    flat = np.array([str(c) for cs in per_item for c in cs], dtype=str)
    names: list[str] = []
    if category_order is not None:
        names = [str(c) for c in category_order]
        if len(set(names)) != len(names):
            raise ValueError("category_order has duplicate names")
    used = np.unique(flat)
    extra = used[~np.isin(used, np.array(names, dtype=str))] if names else used
    if extra.size:
        names.extend(extra[_numeric_aware_order(extra)].tolist())
    name_arr = np.array(names, dtype=str)
    # Vectorised name -> id through the sorted name table, then unique (item, id) pairs.
    sorter = np.argsort(name_arr, kind="stable")
    cat_ids = sorter[np.searchsorted(name_arr, flat, sorter=sorter)] if flat.size else flat
    item_of = np.repeat(np.arange(len(per_item), dtype=np.int64), lengths)
    keys = np.unique(item_of * max(len(names), 1) + np.asarray(cat_ids, dtype=np.int64))
    key_items, key_cats = np.divmod(keys, max(len(names), 1))
    counts = np.bincount(key_items, minlength=len(per_item))
    cats = np.split(key_cats.astype(np.int64), np.cumsum(counts)[:-1])
    return cats, name_arr


# --------------------------------------------------------------------------------------------------
# File parsing helpers (bad input raises DataFormatError with the file and line)
# --------------------------------------------------------------------------------------------------


def _require_file(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    return path


class _LazyLines(Sequence[int]):
    """1-based source line of each non-blank row, computed only when an error message needs it."""

    def __init__(self, compute: Callable[[], list[int]], n: int, start: int = 0) -> None:
        self._compute, self._n, self._start = compute, n, start

    def __len__(self) -> int:
        return self._n - self._start

    @overload
    def __getitem__(self, i: int) -> int: ...
    @overload
    def __getitem__(self, i: slice) -> _LazyLines: ...
    def __getitem__(self, i: int | slice) -> int | _LazyLines:
        if isinstance(i, slice):
            if i.step not in (None, 1) or i.stop is not None or (i.start or 0) < 0:
                raise ValueError("only [k:] slices are supported")
            return _LazyLines(self._compute, self._n, self._start + (i.start or 0))
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self._compute()[self._start + i]


def _read_rows(
    path: Path,
    *,
    delimiter: str,
    encoding: str = "utf-8-sig",
    quoting: int = csv.QUOTE_MINIMAL,
    multi_char_delimiter: str | None = None,
) -> tuple[list[list[str]], Sequence[int]]:
    """Reads a delimited text file; returns non-blank rows and their (lazy) 1-based line numbers."""
    _require_file(path)
    try:
        text = path.read_text(encoding=encoding)
    except UnicodeDecodeError as exc:
        raise DataFormatError(f"{path}: not valid {encoding} text ({exc})") from exc
    if multi_char_delimiter is not None:
        text = text.replace(multi_char_delimiter, delimiter)

    def reader() -> Any:
        return csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)

    rd = reader()
    try:
        rows = [row for row in rd if row]  # csv yields [] for blank lines
    except csv.Error as exc:
        raise DataFormatError(f"{path}, line {rd.line_num}: {exc}") from exc
    cache: list[int] = []

    def compute() -> list[int]:
        if not cache:
            rd2 = reader()
            cache.extend(rd2.line_num for row in rd2 if row)
        return cache

    return rows, _LazyLines(compute, len(rows))


def _rows_to_matrix(
    path: Path, rows: list[list[str]], lines: Sequence[int], ncols: int
) -> np.ndarray:
    """Stacks rows into a ``(n, ncols)`` str array; a row of another width is a DataFormatError."""
    if not rows:
        return np.zeros((0, ncols), dtype=str)
    try:
        mat = np.array(rows, dtype=str)
    except ValueError:
        mat = None
    if mat is None or mat.ndim != 2 or mat.shape[1] != ncols:
        for row, line in zip(rows, lines, strict=True):
            if len(row) != ncols:
                raise DataFormatError(
                    f"{path}, line {line}: expected {ncols} fields, got {len(row)}: {row!r}"
                ) from None
        raise DataFormatError(f"{path}: rows cannot be stacked into {ncols} columns")
    return mat


def _parse_floats(path: Path, values: np.ndarray, lines: Sequence[int], what: str) -> np.ndarray:
    try:
        out = np.asarray(values).astype(np.float64)
    except (ValueError, TypeError):
        out = None
    if out is None or not np.all(np.isfinite(out)):
        for v, line in zip(np.asarray(values).tolist(), lines, strict=True):
            try:
                ok = np.isfinite(float(v))
            except (ValueError, TypeError):
                ok = False
            if not ok:
                raise DataFormatError(f"{path}, line {line}: bad {what} {v!r}") from None
        raise DataFormatError(f"{path}: cannot parse the {what} column")
    return out


def _parse_times(path: Path, values: Sequence[Any], lines: Sequence[int]) -> np.ndarray:
    """Unix seconds from numbers/numeric strings, or from ISO-8601 strings (read as UTC)."""
    try:
        out = np.asarray(values, dtype=np.float64)
        if np.all(np.isfinite(out)):
            return out
    except (ValueError, TypeError):
        pass
    try:
        arr = np.char.strip(np.asarray([str(v) for v in values]))
        # Only date-like strings ("YYYY-MM-DD..."); a bare number must never parse as a year.
        if arr.size and bool(np.all(np.char.find(arr, "-") > 0)):
            stamps = np.char.rstrip(arr, "Z").astype("datetime64[us]")
            if not np.any(np.isnat(stamps)):
                return stamps.astype(np.int64).astype(np.float64) / 1e6
    except (ValueError, TypeError):
        pass
    for v, line in zip(values, lines, strict=True):
        try:
            ok = np.isfinite(float(v))
        except (ValueError, TypeError):
            sv = str(v).strip()
            try:
                ok = sv.find("-") > 0 and not np.isnat(np.datetime64(sv.rstrip("Z")))
            except ValueError:
                ok = False
        if not ok:
            raise DataFormatError(
                f"{path}, line {line}: bad timestamp {v!r} "
                "(expected unix seconds or an ISO-8601 UTC date-time)"
            ) from None
    raise DataFormatError(f"{path}: timestamps mix unix seconds and date-times")


def _header_index(path: Path, header: Sequence[str], required: Sequence[str]) -> list[int]:
    """Column positions of ``required`` names; RecBole ``name:type`` headers are accepted."""
    names = [h.strip().split(":", 1)[0].lower() for h in header]
    missing = [r for r in required if r not in names]
    if missing:
        raise DataFormatError(
            f"{path}: header {list(header)!r} lacks column(s) {missing}; expected {list(required)}"
        )
    return [names.index(r) for r in required]


def _sniff_delimiter(path: Path) -> str:
    _require_file(path)
    with path.open(encoding="utf-8-sig") as f:
        first = f.readline()
    if "\t" in first:
        return "\t"
    if "," in first:
        return ","
    raise DataFormatError(
        f"{path}: cannot detect the delimiter (tab or comma) from the header line {first!r}"
    )


def _read_header_table(
    path: Path,
    required: Sequence[str],
    *,
    delimiter: str | None = None,
    encoding: str = "utf-8-sig",
    quoting: int = csv.QUOTE_MINIMAL,
) -> tuple[list[np.ndarray], Sequence[int]]:
    """Reads the ``required`` columns (str arrays) of a delimited file with a header line."""
    delim = _sniff_delimiter(path) if delimiter is None else delimiter
    rows, lines = _read_rows(path, delimiter=delim, encoding=encoding, quoting=quoting)
    if not rows:
        raise DataFormatError(f"{path}: empty file (expected a header line)")
    header, body, body_lines = rows[0], rows[1:], lines[1:]
    cols = _header_index(path, header, required)
    mat = _rows_to_matrix(path, body, body_lines, len(header))
    return [mat[:, c] for c in cols], body_lines


# --------------------------------------------------------------------------------------------------
# MovieLens-100K from PyPI
# --------------------------------------------------------------------------------------------------


def _default_cache_dir() -> Path:
    root = os.environ.get("SEVO_CACHE_DIR")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "sevo-engine"
    return base / "ml-100k"


def fetch_ml100k(cache_dir: Path | None = None) -> Path:
    """Downloads MovieLens-100K (RecBole atomic files) once and returns the directory holding it.

    The files ship inside the ``recbole==1.2.1`` wheel on PyPI. Only that wheel is fetched, with
    ``python -m pip download --no-deps``; ``ml-100k.inter`` and ``ml-100k.item`` are extracted from
    it into ``cache_dir`` (each written to a temporary file in the same directory, then renamed, so
    a crash never leaves a half-written file). When both files are present nothing is downloaded.
    MovieLens may not be redistributed: keep the cache outside the repository.

    Args:
        cache_dir: Directory that receives the two files. Defaults to ``$SEVO_CACHE_DIR/ml-100k``
            when the environment variable ``SEVO_CACHE_DIR`` is set, else
            ``~/.cache/sevo-engine/ml-100k``.

    Returns:
        The directory containing ``ml-100k.inter`` and ``ml-100k.item``.

    Raises:
        RuntimeError: If pip fails (e.g. PyPI unreachable) or the wheel lacks the files.
    """
    target = (Path(cache_dir) if cache_dir is not None else _default_cache_dir()).expanduser()
    if all((target / f).is_file() for f in _ML100K_FILES):
        logger.debug("MovieLens-100K already cached at %s", target)
        return target
    target.mkdir(parents=True, exist_ok=True)
    logger.info("Fetching MovieLens-100K from the recbole==%s wheel on PyPI", _RECBOLE_VERSION)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=target) as tmp:
        tmp_path = Path(tmp)
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--no-input",
            "-d",
            str(tmp_path / "wheel"),
            f"recbole=={_RECBOLE_VERSION}",
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RuntimeError(f"could not run pip to fetch MovieLens-100K: {exc}") from exc
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout or "").strip()[-2000:]
            raise RuntimeError(
                f"`pip download recbole=={_RECBOLE_VERSION}` failed with exit code "
                f"{proc.returncode} (is PyPI reachable?):\n{tail}"
            )
        wheels = sorted((tmp_path / "wheel").glob(f"recbole-{_RECBOLE_VERSION}-*.whl"))
        if not wheels:
            raise RuntimeError(f"pip reported success but no recbole wheel in {tmp_path / 'wheel'}")
        extracted = tmp_path / "extracted"
        extracted.mkdir()
        with zipfile.ZipFile(wheels[0]) as zf:
            for fname in _ML100K_FILES:
                member = _RECBOLE_ML100K_DIR + fname
                try:
                    data = zf.read(member)
                except KeyError as exc:
                    raise RuntimeError(f"{wheels[0].name} lacks {member}") from exc
                (extracted / fname).write_bytes(data)
        for fname in _ML100K_FILES:
            os.replace(extracted / fname, target / fname)
    logger.info("MovieLens-100K cached at %s", target)
    return target


# --------------------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------------------


def load_movielens_100k(path: Path | None = None) -> Interactions:
    """Loads MovieLens-100K (every rating is an interaction; ratings are ignored).

    Two layouts are supported:

    * RecBole atomic files ``ml-100k.inter`` / ``ml-100k.item`` (what :func:`fetch_ml100k` caches);
      genres are the space-separated ``class`` column.
    * GroupLens files ``u.data`` (tab: user, item, rating, timestamp) and ``u.item``
      (``|``-separated, latin-1, last 19 columns are genre flags; names from ``u.genre``).

    Genres become ``item_categories`` with ids in :data:`ML100K_GENRES` order in both layouts. The
    item file is optional (no categories without it).

    Args:
        path: Directory with either layout, or one of its interaction files. ``None`` fetches the
            data with :func:`fetch_ml100k`.

    Returns:
        The log (943 users, 1,682 items, 100,000 interactions for the full data set).

    Raises:
        FileNotFoundError: If neither ``ml-100k.inter`` nor ``u.data`` is found.
        DataFormatError: If a file is malformed.
    """
    directory = fetch_ml100k() if path is None else Path(path)
    if directory.is_file():
        directory = directory.parent
    if (directory / "ml-100k.inter").is_file():
        return _load_ml100k_recbole(directory)
    if (directory / "u.data").is_file():
        return _load_ml100k_grouplens(directory)
    raise FileNotFoundError(
        f"no MovieLens-100K files in {directory} (expected ml-100k.inter or u.data)"
    )


def _load_ml100k_recbole(directory: Path) -> Interactions:
    inter_path = directory / "ml-100k.inter"
    (u, i, t), lines = _read_header_table(
        inter_path, ("user_id", "item_id", "timestamp"), delimiter="\t", quoting=csv.QUOTE_NONE
    )
    times = _parse_floats(inter_path, t, lines, "timestamp")
    genres = None
    item_path = directory / "ml-100k.item"
    if item_path.is_file():
        (ids, cls), _ = _read_header_table(
            item_path, ("item_id", "class"), delimiter="\t", quoting=csv.QUOTE_NONE
        )
        genres = {k: v.split() for k, v in zip(ids.tolist(), cls.tolist(), strict=True)}
    else:
        logger.warning("%s missing: MovieLens-100K loaded without genres", item_path)
    return build_interactions(
        u, i, times, item_categories=genres, category_order=ML100K_GENRES, name="ml-100k"
    )


def _load_ml100k_grouplens(directory: Path) -> Interactions:
    data_path = directory / "u.data"
    rows, lines = _read_rows(data_path, delimiter="\t", encoding="latin-1", quoting=csv.QUOTE_NONE)
    mat = _rows_to_matrix(data_path, rows, lines, 4)
    times = _parse_floats(data_path, mat[:, 3], lines, "timestamp")
    genres = None
    names: Sequence[str] = ML100K_GENRES
    genre_path = directory / "u.genre"
    if genre_path.is_file():
        g_rows, g_lines = _read_rows(
            genre_path, delimiter="|", encoding="latin-1", quoting=csv.QUOTE_NONE
        )
        g_mat = _rows_to_matrix(genre_path, g_rows, g_lines, 2)
        g_idx = _parse_floats(genre_path, g_mat[:, 1], g_lines, "genre index").astype(np.int64)
        names = g_mat[np.argsort(g_idx, kind="stable"), 0].tolist()
    item_path = directory / "u.item"
    if item_path.is_file():
        i_rows, i_lines = _read_rows(
            item_path, delimiter="|", encoding="latin-1", quoting=csv.QUOTE_NONE
        )
        ng = len(names)
        i_mat = _rows_to_matrix(item_path, i_rows, i_lines, 5 + ng)
        flags = i_mat[:, -ng:]
        if not np.all(np.isin(flags, ("0", "1"))):
            raise DataFormatError(f"{item_path}: the last {ng} columns must be 0/1 genre flags")
        flag_mat = flags == "1"
        name_arr = np.asarray(names, dtype=str)
        genres = {
            ext: name_arr[row].tolist()
            for ext, row in zip(i_mat[:, 0].tolist(), flag_mat, strict=True)
        }
    else:
        logger.warning("%s missing: MovieLens-100K loaded without genres", item_path)
    return build_interactions(
        mat[:, 0], mat[:, 1], times, item_categories=genres, category_order=names, name="ml-100k"
    )


def load_movielens_1m(path: Path) -> Interactions:
    """Loads MovieLens-1M from ``ratings.dat`` (and genres from ``movies.dat`` when present).

    ``ratings.dat`` is ``UserID::MovieID::Rating::Timestamp``; ``movies.dat`` is
    ``MovieID::Title::Genres`` with ``|``-separated genres; both latin-1. Category ids follow
    :data:`ML100K_GENRES` order (ML-1M has no ``"unknown"``, so id 0 is unused).

    Args:
        path: Directory containing ``ratings.dat``, or the ``ratings.dat`` file itself.

    Returns:
        The log, ratings ignored.

    Raises:
        FileNotFoundError: If ``ratings.dat`` is missing.
        DataFormatError: If a file is malformed.
    """
    path = Path(path)
    directory = path.parent if path.is_file() else path
    ratings = directory / "ratings.dat" if not path.is_file() else path
    rows, lines = _read_rows(
        ratings,
        delimiter="\t",
        encoding="latin-1",
        quoting=csv.QUOTE_NONE,
        multi_char_delimiter="::",
    )
    mat = _rows_to_matrix(ratings, rows, lines, 4)
    times = _parse_floats(ratings, mat[:, 3], lines, "timestamp")
    genres = None
    movies = directory / "movies.dat"
    if movies.is_file():
        m_rows, m_lines = _read_rows(
            movies,
            delimiter="\t",
            encoding="latin-1",
            quoting=csv.QUOTE_NONE,
            multi_char_delimiter="::",
        )
        m_mat = _rows_to_matrix(movies, m_rows, m_lines, 3)
        genres = {
            k: [g for g in v.split("|") if g]
            for k, v in zip(m_mat[:, 0].tolist(), m_mat[:, 2].tolist(), strict=True)
        }
    else:
        logger.warning("%s missing: MovieLens-1M loaded without genres", movies)
    return build_interactions(
        mat[:, 0],
        mat[:, 1],
        times,
        item_categories=genres,
        category_order=ML100K_GENRES,
        name="ml-1m",
    )


def _load_attributes(path: Path) -> dict[str, list[str]]:
    _require_file(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise DataFormatError(f"{path}: invalid JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise DataFormatError(f"{path}: expected a JSON object {{item_id: [attribute_id, ...]}}")
    out: dict[str, list[str]] = {}
    for key, value in raw.items():
        if not isinstance(value, list) or any(isinstance(v, (dict, list)) for v in value):
            raise DataFormatError(f"{path}: attributes of item {key!r} must be a flat list")
        out[str(key)] = [str(v) for v in value]
    return out


def load_amazon(path: Path, attributes: Path | None = None) -> Interactions:
    """Loads an Amazon-style log: a header ``user_id item_id timestamp`` then one row per event.

    The delimiter (tab or comma) is detected from the header; other columns (e.g. ``rating``) are
    ignored; column order is free. Timestamps are unix seconds. Ties keep file order.

    Args:
        path: The ``.tsv``/``.csv`` file, or a directory holding ``interactions.tsv`` (or
            ``interactions.csv``) and optionally ``item_attributes.json``.
        attributes: Optional JSON ``{item_id: [attribute_id, ...]}``; attributes become
            ``item_categories`` (category names are the attribute ids, numeric-aware order).

    Returns:
        The log, named after the file's directory (e.g. ``"amazon-beauty"``).

    Raises:
        FileNotFoundError: If a file is missing.
        DataFormatError: If a file is malformed.
    """
    path = Path(path)
    if path.is_dir():
        directory = path
        candidates = [path / "interactions.tsv", path / "interactions.csv"]
        found = [c for c in candidates if c.is_file()]
        if not found:
            raise FileNotFoundError(f"no interactions.tsv or interactions.csv in {path}")
        path = found[0]
        if attributes is None and (directory / "item_attributes.json").is_file():
            attributes = directory / "item_attributes.json"
    (u, i, t), lines = _read_header_table(path, ("user_id", "item_id", "timestamp"))
    times = _parse_times(path, t, lines)
    attrs = _load_attributes(Path(attributes)) if attributes is not None else None
    return build_interactions(u, i, times, item_categories=attrs, name=path.parent.name)


def load_events(path: Path) -> Interactions:
    """Loads a generic event log: JSON lines, a JSON array, or CSV/TSV with a header.

    Each record needs ``user_id``, ``item_id`` and ``timestamp`` (unix seconds, or an ISO-8601
    date-time read as UTC); extra fields are ignored. Blank lines are skipped. Ties keep file order.

    Args:
        path: A ``.jsonl``/``.json`` file, or a ``.csv``/``.tsv`` file with a header line.

    Returns:
        The log, named after the file stem.

    Raises:
        FileNotFoundError: If the file is missing.
        DataFormatError: If a line is not a JSON object or lacks a field.
    """
    path = _require_file(Path(path))
    if path.suffix.lower() in (".csv", ".tsv", ".txt"):
        (u, i, t), lines = _read_header_table(path, ("user_id", "item_id", "timestamp"))
        return build_interactions(u, i, _parse_times(path, t, lines), name=path.stem)
    text = path.read_text(encoding="utf-8-sig")
    records, lines = _parse_json_records(path, text)
    fields = ("user_id", "item_id", "timestamp")
    for rec, line in zip(records, lines, strict=True):
        if not isinstance(rec, dict):
            raise DataFormatError(f"{path}, line {line}: expected a JSON object, got {rec!r}")
        missing = [f for f in fields if f not in rec or rec[f] is None]
        if missing:
            raise DataFormatError(f"{path}, line {line}: missing field(s) {missing}")
    users = [r["user_id"] for r in records]
    items = [r["item_id"] for r in records]
    times = _parse_times(path, [r["timestamp"] for r in records], lines)
    return build_interactions(
        np.array([str(x) for x in users], dtype=str),
        np.array([str(x) for x in items], dtype=str),
        times,
        name=path.stem,
    )


def _parse_json_records(path: Path, text: str) -> tuple[list[Any], list[int]]:
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataFormatError(f"{path}: invalid JSON ({exc})") from exc
        return records, list(range(1, len(records) + 1))
    raw_lines = text.splitlines()
    lines = [n for n, s in enumerate(raw_lines, start=1) if s.strip()]
    kept = [raw_lines[n - 1] for n in lines]
    try:
        # One C-level parse of all lines; per-line parsing only to locate an error.
        records = json.loads("[" + ",".join(kept) + "]")
        if len(records) == len(kept):
            return records, lines
    except json.JSONDecodeError:
        pass
    for s, n in zip(kept, lines, strict=True):
        try:
            json.loads(s)
        except json.JSONDecodeError as exc:
            raise DataFormatError(f"{path}, line {n}: invalid JSON ({exc})") from exc
    raise DataFormatError(f"{path}: each line must hold exactly one JSON object")


def _beauty_dir() -> Path:
    env = os.environ.get("SEVO_BEAUTY_DIR")
    return (
        Path(env).expanduser()
        if env
        else Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon-beauty"
    )


def load_dataset(name_or_path: str | os.PathLike[str]) -> Interactions:
    """Loads a data set by name or path (no filtering; apply :func:`core_filter` yourself).

    Names: ``"ml-100k"`` (fetched from PyPI on first use, see :func:`fetch_ml100k`) and ``"beauty"``
    (the Amazon Beauty directory at ``$SEVO_BEAUTY_DIR``, else ``shared/data/amazon-beauty`` beside
    the repository). Otherwise the argument is a path:

    * a directory holding ``ml-100k.inter`` or ``u.data`` (MovieLens-100K), ``ratings.dat``
      (MovieLens-1M) or ``interactions.tsv``/``.csv`` (Amazon style, with ``item_attributes.json``
      when present);
    * a file: ``u.data``/``ml-100k.inter``/``ratings.dat`` by name, ``.jsonl``/``.json`` via
      :func:`load_events`, ``.csv``/``.tsv`` via :func:`load_amazon` (same header, no attributes).

    Args:
        name_or_path: A known name or a path.

    Returns:
        The log.

    Raises:
        FileNotFoundError: If the path (or the Beauty directory) does not exist.
        ValueError: If a directory or file type is not recognised.
    """
    key = str(name_or_path)
    if key.lower() in ("ml-100k", "ml100k", "movielens-100k"):
        return load_movielens_100k()
    if key.lower() in ("beauty", "amazon-beauty"):
        directory = _beauty_dir()
        if not (directory / "interactions.tsv").is_file():
            raise FileNotFoundError(
                f"Amazon Beauty not found at {directory} (expected interactions.tsv); set "
                "SEVO_BEAUTY_DIR to the directory holding interactions.tsv and item_attributes.json"
            )
        inter = load_amazon(directory)
        return _renamed(inter, "amazon-beauty")
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if (path / "ml-100k.inter").is_file() or (path / "u.data").is_file():
            return load_movielens_100k(path)
        if (path / "ratings.dat").is_file():
            return load_movielens_1m(path)
        if (path / "interactions.tsv").is_file() or (path / "interactions.csv").is_file():
            return load_amazon(path)
        raise ValueError(
            f"unrecognised data directory {path}: expected ml-100k.inter, u.data, ratings.dat or "
            "interactions.tsv"
        )
    if path.is_file():
        if path.name in ("u.data", "ml-100k.inter"):
            return load_movielens_100k(path)
        if path.name == "ratings.dat":
            return load_movielens_1m(path)
        suffix = path.suffix.lower()
        if suffix in (".jsonl", ".json"):
            return load_events(path)
        if suffix in (".csv", ".tsv"):
            return load_amazon(path)
        raise ValueError(f"unrecognised data file type {path.suffix!r}: {path}")
    raise FileNotFoundError(
        f"{name_or_path!r} is neither a known data set ('ml-100k', 'beauty') nor an existing path"
    )


def _renamed(inter: Interactions, name: str) -> Interactions:
    return Interactions(
        users=inter.users,
        items=inter.items,
        times=inter.times,
        user_ids=inter.user_ids,
        item_ids=inter.item_ids,
        item_categories=inter.item_categories,
        category_names=inter.category_names,
        name=name,
    )


# --------------------------------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------------------------------


def core_filter(inter: Interactions, k: int = 5) -> Interactions:
    """Iterative k-core: keeps users and items that each have at least ``k`` interactions.

    Dropping a user can push an item below ``k`` (and vice versa), so filtering repeats until
    nothing changes. Survivors are re-indexed contiguously (users from 0, items from 1) in their
    previous relative order, so rows stay sorted by ``(user, time)`` with ties in file order.
    Category ids and names are kept unchanged. Repeated (user, item) pairs each count.

    Args:
        inter: The log.
        k: Minimum number of interactions per user and per item; ``0`` and ``1`` only drop users and
            items without interactions.

    Returns:
        A new :class:`Interactions` (possibly empty).

    Raises:
        ValueError: If ``k`` is negative or not an integer.

    Example:
        >>> inter = build_interactions([1, 1, 2, 2, 3], [1, 2, 1, 2, 1], [0, 1, 0, 1, 0])
        >>> core_filter(inter, k=2).num_interactions
        4
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise ValueError(f"k must be a non-negative integer, got {k!r}")
    keep = np.ones(inter.num_interactions, dtype=bool)
    rounds = 0
    while True:
        rounds += 1
        u_cnt = np.bincount(inter.users[keep], minlength=inter.num_users)
        i_cnt = np.bincount(inter.items[keep], minlength=inter.num_items + 1)
        new_keep = keep & (u_cnt[inter.users] >= k) & (i_cnt[inter.items] >= k)
        if np.array_equal(new_keep, keep):
            break
        keep = new_keep
    users, items = inter.users[keep], inter.items[keep]
    user_alive = np.bincount(users, minlength=inter.num_users) > 0
    item_alive = np.bincount(items, minlength=inter.num_items + 1) > 0
    item_alive[0] = True  # padding
    user_map = np.cumsum(user_alive) - 1
    item_map = np.cumsum(item_alive) - 1
    cats = None
    if inter.item_categories is not None:
        alive_idx = np.flatnonzero(item_alive)
        cats = [inter.item_categories[j] for j in alive_idx.tolist()]
    out = Interactions(
        users=user_map[users],
        items=item_map[items],
        times=inter.times[keep],
        user_ids=inter.user_ids[user_alive],
        item_ids=inter.item_ids[item_alive],
        item_categories=cats,
        category_names=inter.category_names,
        name=inter.name,
    )
    logger.info(
        "%d-core filter (%d rounds): %d -> %d users, %d -> %d items, %d -> %d interactions",
        k,
        rounds,
        inter.num_users,
        out.num_users,
        inter.num_items,
        out.num_items,
        inter.num_interactions,
        out.num_interactions,
    )
    return out


@dataclass(frozen=True, eq=False, repr=False)
class SequenceSplit:
    """Leave-one-out split of per-user chronological sequences (the SEvo paper's protocol).

    For a user with ``n >= 3`` interactions the last one is the test target, the second-last the
    validation target and the first ``n - 2`` form the training sequence. A user with fewer than 3
    interactions keeps all of them in training and has ``valid_items[u] == test_items[u] == 0``
    ("no target"); evaluation skips such users (see :meth:`eval_users`). The held-out interactions
    never appear in ``train_items`` (the same item can still occur earlier in a user's training
    sequence when a user repeats an item; ranking never excludes the target itself).

    Attributes:
        train_items: Flat int64 training items, user after user, chronological within a user.
        train_offsets: int64 ``(num_users + 1,)``; user ``u`` owns
            ``train_items[train_offsets[u]:train_offsets[u + 1]]``.
        valid_items: int64 ``(num_users,)`` validation target per user, 0 = none.
        test_items: int64 ``(num_users,)`` test target per user, 0 = none.
        num_users: Number of users.
        num_items: Number of real items (indices ``1 .. num_items``).
        item_categories: Per-item category ids as in :class:`Interactions`, or ``None``.
    """

    train_items: np.ndarray
    train_offsets: np.ndarray
    valid_items: np.ndarray
    test_items: np.ndarray
    num_users: int
    num_items: int
    item_categories: list[np.ndarray] | None = None

    def __post_init__(self) -> None:
        for field in ("train_items", "train_offsets", "valid_items", "test_items"):
            object.__setattr__(self, field, _as_int64_1d(getattr(self, field), field))
        nu = int(self.num_users)
        if self.train_offsets.shape[0] != nu + 1 or self.train_offsets[0] != 0:
            raise ValueError("train_offsets must have num_users + 1 entries starting at 0")
        if np.any(np.diff(self.train_offsets) < 0):
            raise ValueError("train_offsets must be non-decreasing")
        if self.train_offsets[-1] != self.train_items.shape[0]:
            raise ValueError("train_offsets[-1] must equal len(train_items)")
        if self.valid_items.shape[0] != nu or self.test_items.shape[0] != nu:
            raise ValueError("valid_items and test_items must have num_users entries")
        for field in ("train_items", "valid_items", "test_items"):
            arr = getattr(self, field)
            lo = 1 if field == "train_items" else 0
            if arr.size and (arr.min() < lo or arr.max() > self.num_items):
                raise ValueError(f"{field} must lie in [{lo}, {self.num_items}]")

    def __repr__(self) -> str:
        return (
            f"SequenceSplit(users={self.num_users}, items={self.num_items}, "
            f"train={self.train_items.shape[0]}, valid={int(np.count_nonzero(self.valid_items))}, "
            f"test={int(np.count_nonzero(self.test_items))})"
        )

    def train_sequence(self, u: int) -> np.ndarray:
        """User ``u``'s chronological training items (a read-only view)."""
        if not 0 <= u < self.num_users:
            raise ValueError(f"user {u} out of range [0, {self.num_users})")
        view = self.train_items[self.train_offsets[u] : self.train_offsets[u + 1]]
        view.flags.writeable = False
        return view

    def train_ragged(self) -> Ragged:
        """All training sequences as a :class:`Ragged` array."""
        return Ragged(self.train_items, self.train_offsets)

    def targets(self, which: Literal["valid", "test"]) -> np.ndarray:
        """``valid_items`` or ``test_items`` (0 = no target)."""
        if which == "valid":
            return self.valid_items
        if which == "test":
            return self.test_items
        raise ValueError(f"which must be 'valid' or 'test', got {which!r}")

    def eval_users(self, which: Literal["valid", "test"]) -> np.ndarray:
        """Users that have a ``which`` target (the ones evaluation ranks), ascending."""
        return np.flatnonzero(self.targets(which) > 0)

    def history_for(self, which: Literal["valid", "test"]) -> Ragged:
        """Items to exclude when ranking ``which``: train for "valid", train + valid for "test".

        Returns:
            A :class:`Ragged` array with one row per user, chronological.
        """
        if which == "valid":
            return self.train_ragged()
        if which != "test":
            raise ValueError(f"which must be 'valid' or 'test', got {which!r}")
        return self._test_history

    @cached_property
    def _test_history(self) -> Ragged:
        # Computed once per split (cached_property writes to __dict__, fine on a frozen dataclass).
        train_len = np.diff(self.train_offsets)
        has_valid = self.valid_items > 0
        offsets = _offsets_from_counts(train_len + has_valid)
        values = np.empty(offsets[-1], dtype=np.int64)
        row_of = np.repeat(np.arange(self.num_users), train_len)
        shift = offsets[:-1] - self.train_offsets[:-1]
        values[np.arange(self.train_items.shape[0]) + shift[row_of]] = self.train_items
        values[offsets[1:][has_valid] - 1] = self.valid_items[has_valid]
        values.flags.writeable = False
        offsets.flags.writeable = False
        return Ragged(values, offsets)

    def input_sequences(self, which: Which) -> Ragged:
        """The sequence a model reads to predict ``which``: train for "train"/"valid",
        train + validation item for "test"."""
        if which in ("train", "valid"):
            return self.train_ragged()
        if which == "test":
            return self.history_for("test")
        raise ValueError(f"which must be 'train', 'valid' or 'test', got {which!r}")

    def padded_sequences(
        self, users: np.ndarray | Sequence[int], maxlen: int, which: Which
    ) -> np.ndarray:
        """Last ``maxlen`` input items of each user, left-padded with 0.

        Args:
            users: User indices, shape ``(B,)``.
            maxlen: Sequence length ``T`` (>= 1).
            which: ``"train"`` or ``"valid"`` (the training sequence) or ``"test"`` (training
                sequence + validation item).

        Returns:
            int64 array ``(B, T)``; row ``b`` ends with the most recent item.

        Example:
            For a training sequence ``[5, 6, 7]`` and ``maxlen=5``: ``[0, 0, 5, 6, 7]``; with
            ``maxlen=2``: ``[6, 7]``.
        """
        if isinstance(maxlen, bool) or not isinstance(maxlen, (int, np.integer)) or maxlen < 1:
            raise ValueError(f"maxlen must be a positive integer, got {maxlen!r}")
        seqs = self.input_sequences(which)
        u = self._check_users(users)
        starts, ends = seqs.offsets[u], seqs.offsets[u + 1]
        take = np.minimum(ends - starts, maxlen)
        total = int(take.sum())
        out = np.zeros((u.shape[0], maxlen), dtype=np.int64)
        if total == 0:
            return out
        rows = np.repeat(np.arange(u.shape[0]), take)
        within = np.arange(total) - np.repeat(np.cumsum(take) - take, take)  # 0..take-1
        src = np.repeat(ends - take, take) + within
        cols = np.repeat(maxlen - take, take) + within
        out[rows, cols] = seqs.values[src]
        return out

    def exclusion_pairs(
        self, users: np.ndarray | Sequence[int], which: Literal["valid", "test"]
    ) -> tuple[np.ndarray, np.ndarray]:
        """History of a batch of users as ``(rows, items)`` pairs for
        :func:`engine.metrics.target_ranks`.

        Args:
            users: User indices of the batch, shape ``(B,)``.
            which: ``"valid"`` or ``"test"``, see :meth:`history_for`.

        Returns:
            ``(rows, items)`` int64 arrays of equal length; ``rows`` are positions ``0 .. B-1`` in
            the batch.
        """
        hist = self.history_for(which)
        u = self._check_users(users)
        starts = hist.offsets[u]
        lengths = hist.offsets[u + 1] - starts
        total = int(lengths.sum())
        rows = np.repeat(np.arange(u.shape[0], dtype=np.int64), lengths)
        within = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        return rows, hist.values[np.repeat(starts, lengths) + within]

    def _check_users(self, users: np.ndarray | Sequence[int]) -> np.ndarray:
        u = _as_int64_1d(users, "users")
        if u.size and (u.min() < 0 or u.max() >= self.num_users):
            raise ValueError(f"users must lie in [0, {self.num_users})")
        return u


def split_leave_one_out(inter: Interactions) -> SequenceSplit:
    """Splits each user's chronological sequence: last -> test, second-last -> valid, rest -> train.

    Users with fewer than 3 interactions keep everything in train with no valid/test target (0);
    see :class:`SequenceSplit`. Order within a user is the row order of ``inter`` (time, then file
    order), so ties are never shuffled.

    Args:
        inter: The log (usually after :func:`core_filter`).

    Returns:
        The split.
    """
    offsets = inter.user_offsets()
    counts = np.diff(offsets)
    has = counts >= 3
    ends = offsets[1:][has]
    valid = np.zeros(inter.num_users, dtype=np.int64)
    test = np.zeros(inter.num_users, dtype=np.int64)
    test[has] = inter.items[ends - 1]
    valid[has] = inter.items[ends - 2]
    keep = np.ones(inter.num_interactions, dtype=bool)
    keep[ends - 1] = False
    keep[ends - 2] = False
    train_counts = counts - 2 * has
    return SequenceSplit(
        train_items=inter.items[keep],
        train_offsets=_offsets_from_counts(train_counts),
        valid_items=valid,
        test_items=test,
        num_users=inter.num_users,
        num_items=inter.num_items,
        item_categories=inter.item_categories,
    )


def dataset_stats(inter: Interactions) -> dict[str, Any]:
    """Summary numbers of a log (JSON-serialisable).

    Returns:
        A dict with ``name``, ``users``, ``items``, ``interactions``, ``density``
        (interactions / (users * items)), ``seq_len_mean``, ``seq_len_min``, ``seq_len_p50``,
        ``seq_len_p90``, ``seq_len_p99``, ``seq_len_max`` (interactions per user),
        ``item_freq_max``, ``time_min``/``time_max`` (unix seconds, ``None`` when empty),
        ``time_span_days`` and ``categories`` (number of category ids).
    """
    lengths = np.bincount(inter.users, minlength=inter.num_users)
    item_freq = np.bincount(inter.items, minlength=inter.num_items + 1)[1:]
    cells = inter.num_users * inter.num_items
    n = inter.num_interactions
    out: dict[str, Any] = {
        "name": inter.name,
        "users": inter.num_users,
        "items": inter.num_items,
        "interactions": n,
        "density": float(n / cells) if cells else float("nan"),
    }
    if lengths.size:
        p50, p90, p99 = np.percentile(lengths, [50, 90, 99]).tolist()
        out.update(
            seq_len_mean=float(lengths.mean()),
            seq_len_min=int(lengths.min()),
            seq_len_p50=float(p50),
            seq_len_p90=float(p90),
            seq_len_p99=float(p99),
            seq_len_max=int(lengths.max()),
        )
    else:
        nan = float("nan")
        out.update(
            seq_len_mean=nan,
            seq_len_min=0,
            seq_len_p50=nan,
            seq_len_p90=nan,
            seq_len_p99=nan,
            seq_len_max=0,
        )
    out["item_freq_max"] = int(item_freq.max()) if item_freq.size else 0
    if n:
        t0, t1 = float(inter.times.min()), float(inter.times.max())
        out.update(time_min=t0, time_max=t1, time_span_days=(t1 - t0) / 86400.0)
    else:
        out.update(time_min=None, time_max=None, time_span_days=0.0)
    out["categories"] = inter.num_categories
    return out
