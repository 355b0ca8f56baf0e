"""File readers: MovieLens-100K/1M, Amazon-style TSV/CSV with item attributes, generic event logs.

Every reader returns an :class:`~engine.data.Interactions` and rejects a malformed file as a
whole: :class:`DataFormatError` names the file, the line and what is wrong, so a bad data set is
never trained on silently. Readers take paths only; names of known data sets (and downloading
them) belong to :mod:`engine.data.datasets`.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, overload

import numpy as np

from engine.data.events import Event, RecordError, parse_records, parse_time_text, validate_record
from engine.data.interactions import Interactions, build_interactions

__all__ = [
    "ML100K_GENRES",
    "DataFormatError",
    "load_amazon",
    "load_events",
    "load_movielens_1m",
    "load_movielens_100k",
]

logger = logging.getLogger(__name__)

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


class DataFormatError(ValueError):
    """A data file is missing columns, has ragged rows or holds values that cannot be parsed."""


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


def _parse_times(path: Path, values: np.ndarray, lines: Sequence[int]) -> np.ndarray:
    """Unix seconds of a text timestamp column: numeric text or ISO-8601 date-times (no offset
    means UTC), each cell read by :func:`engine.data.events.parse_time_text`."""
    try:
        # Fast path for the common all-numeric column; any failure falls back to cell by cell.
        out = np.asarray(values).astype(np.float64)
        if out.size == 0 or (np.all(np.isfinite(out)) and out.min() >= 0):
            return out
    except (ValueError, TypeError):
        pass
    parsed = np.empty(len(values), dtype=np.float64)
    for k, (v, line) in enumerate(zip(np.asarray(values).tolist(), lines, strict=True)):
        try:
            parsed[k] = parse_time_text(str(v))
        except RecordError as exc:
            raise DataFormatError(f"{path}, line {line}: {exc}") from None
    return parsed


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


#: Rows parsed per chunk by :func:`_read_header_table`: a chunk's Python row lists are turned
#: into columnar str arrays before the next chunk is read, so the transient cost of a file is
#: its columns, not a list of per-row Python objects for the whole file.
_CHUNK_ROWS = 65_536


def _read_header_table(
    path: Path,
    required: Sequence[str],
    *,
    delimiter: str | None = None,
    encoding: str = "utf-8-sig",
    quoting: int = csv.QUOTE_MINIMAL,
    convert: dict[int, Any] | None = None,
) -> tuple[list[np.ndarray], np.ndarray]:
    """Reads the ``required`` columns of a delimited file with a header line, and the 1-based
    line number of each data row (for error messages). The file is streamed in chunks of
    :data:`_CHUNK_ROWS` rows; blank lines are skipped. Each column is a str array as narrow as
    its longest value, unless ``convert[k](path, values, lines)`` turns the k-th required column
    into another array chunk by chunk (e.g. :func:`_parse_times`, so a long log never holds its
    timestamps as text)."""
    convert = convert or {}
    delim = _sniff_delimiter(path) if delimiter is None else delimiter
    parts: list[list[np.ndarray]] = [[] for _ in required]
    line_parts: list[np.ndarray] = []
    with path.open(encoding=encoding, newline="") as fh:
        rd = csv.reader(fh, delimiter=delim, quoting=quoting)
        chunk: list[list[str]] = []
        chunk_lines: list[int] = []
        header: list[str] | None = None
        cols: list[int] = []

        def flush() -> None:
            mat = _rows_to_matrix(path, chunk, chunk_lines, len(header))
            for k, c in enumerate(cols):
                values = mat[:, c]
                if k in convert:
                    parts[k].append(convert[k](path, values, chunk_lines))
                else:  # the matrix is as wide as its widest column: narrow (and copy) this one
                    width = max(1, int(np.char.str_len(values).max()))
                    parts[k].append(values.astype(f"<U{width}"))
            line_parts.append(np.asarray(chunk_lines, dtype=np.int64))
            chunk.clear()
            chunk_lines.clear()

        try:
            for row in rd:
                if not row:  # csv yields [] for blank lines
                    continue
                if header is None:
                    header = row
                    cols = _header_index(path, header, required)
                    continue
                chunk.append(row)
                chunk_lines.append(rd.line_num)
                if len(chunk) >= _CHUNK_ROWS:
                    flush()
        except csv.Error as exc:
            raise DataFormatError(f"{path}, line {rd.line_num}: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise DataFormatError(f"{path}: not valid {encoding} text ({exc})") from exc
        if header is None:
            raise DataFormatError(f"{path}: empty file (expected a header line)")
        if chunk:
            flush()
    if not line_parts:
        return [np.zeros(0, dtype=str) for _ in required], np.zeros(0, dtype=np.int64)
    return [np.concatenate(p) for p in parts], np.concatenate(line_parts)


# --------------------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------------------


def load_movielens_100k(path: Path | None = None) -> Interactions:
    """Loads MovieLens-100K (every rating is an interaction; ratings are ignored).

    Two layouts are supported:

    * RecBole atomic files ``ml-100k.inter`` / ``ml-100k.item`` (what
      :func:`~engine.data.fetch_ml100k` caches); genres are the space-separated ``class`` column.
    * GroupLens files ``u.data`` (tab: user, item, rating, timestamp) and ``u.item``
      (``|``-separated, latin-1, last 19 columns are genre flags; names from ``u.genre``).

    Genres become ``item_categories`` with ids in :data:`ML100K_GENRES` order in both layouts. The
    item file is optional (no categories without it).

    Args:
        path: Directory with either layout, or one of its interaction files. ``None`` fetches the
            data with :func:`~engine.data.fetch_ml100k`.

    Returns:
        The log (943 users, 1,682 items, 100,000 interactions for the full data set).

    Raises:
        FileNotFoundError: If neither ``ml-100k.inter`` nor ``u.data`` is found.
        DataFormatError: If a file is malformed.
    """
    if path is None:
        # Imported here: engine.data.datasets imports this module (it owns names and downloads).
        from engine.data.datasets import fetch_ml100k

        directory = fetch_ml100k()
    else:
        directory = Path(path)
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

    JSON records follow the event record schema of :mod:`engine.data.events` (the parser the
    streaming edge uses too): ``user_id``, ``item_id`` and ``timestamp`` (unix seconds, or an
    ISO-8601 date-time; one without an offset is read as UTC), optional ``weight`` and
    ``event_type`` (validated, then not kept); other fields are ignored. A CSV/TSV file needs the
    columns ``user_id``, ``item_id`` and ``timestamp`` (numeric or ISO-8601 text). Blank lines
    are skipped. Ties keep file order. There is no far-future check: an offline log has no "now".

    Unlike the streaming edge, which turns each bad record into a dead letter, this loader rejects
    the whole file at the first bad record, so that a model is never trained on a silently
    trimmed data set.

    Args:
        path: A ``.jsonl``/``.json`` file, or a ``.csv``/``.tsv`` file with a header line.

    Returns:
        The log, named after the file stem.

    Raises:
        FileNotFoundError: If the file is missing.
        DataFormatError: If a record is invalid; the message names the line (the record's
            position for a JSON array), what is wrong and the parser's reason code, e.g.
            ``"events.jsonl, line 3: timestamp '2024-02-30' is not a valid ISO-8601 date-time
            [bad_timestamp]"``.
    """
    path = _require_file(Path(path))
    if path.suffix.lower() in (".csv", ".tsv", ".txt"):
        (u, i, t), _ = _read_header_table(
            path, ("user_id", "item_id", "timestamp"), convert={2: _parse_times}
        )
        return build_interactions(u, i, t, name=path.stem)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataFormatError(f"{path}: not valid UTF-8 text ({exc})") from exc
    if text.lstrip().startswith("["):
        events = _json_array_events(path, text)
    else:
        raw_lines = text.splitlines()
        numbers = [n for n, line in enumerate(raw_lines, start=1) if line.strip()]
        events, rejected = parse_records([raw_lines[n - 1] for n in numbers])
        if rejected:
            first = rejected[0]
            raise DataFormatError(
                f"{path}, line {numbers[first.index]}: {first.detail} [{first.reason}]"
            )
    return build_interactions(
        np.array([e.user_id for e in events], dtype=str),
        np.array([e.item_id for e in events], dtype=str),
        np.fromiter((e.timestamp for e in events), dtype=np.float64, count=len(events)),
        name=path.stem,
    )


def _json_array_events(path: Path, text: str) -> list[Event]:
    """The events of a file holding one JSON array of records; the first bad one rejects all."""
    try:
        records = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise DataFormatError(f"{path}: invalid JSON ({exc})") from exc
    events = []
    for k, record in enumerate(records, start=1):
        try:
            events.append(validate_record(record))
        except RecordError as exc:
            raise DataFormatError(f"{path}, record {k}: {exc}") from None
    return events
