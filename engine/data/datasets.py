"""The one registry of named data sets, their download into a user cache, and :func:`load_dataset`.

A named data set has a canonical name (what ``sevo data fetch NAME`` takes) and aliases; every
name is matched case-insensitively. :data:`DATASET_NAMES` lists them all, so other layers (the
streaming replay, the command line) never keep their own copy of the list.

Downloads go to a user cache, never into the repository: ``$SEVO_CACHE_DIR/<data set>`` when
``SEVO_CACHE_DIR`` is set, else ``~/.cache/sevo-engine/<data set>``. Nothing is read or fetched at
import time.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from engine.data.interactions import Interactions
from engine.data.loaders import (
    DataFormatError,
    load_amazon,
    load_events,
    load_movielens_1m,
    load_movielens_100k,
)
from engine.data.preprocessing import renamed
from engine.data.synthetic import SYNTHETIC_PREFIX, drifting_stream, parse_synthetic_name
from sevo_common.atomic import atomic_write_bytes

__all__ = [
    "BEAUTY_BASE_URLS",
    "BEAUTY_SHA256",
    "DATASETS",
    "DATASET_NAMES",
    "DatasetInfo",
    "beauty_dir",
    "cache_root",
    "fetch_beauty",
    "fetch_dataset",
    "fetch_ml100k",
    "find_dataset",
    "is_dataset_name",
    "load_dataset",
]

logger = logging.getLogger(__name__)

_RECBOLE_VERSION = "1.2.1"
_RECBOLE_ML100K_DIR = "recbole/dataset_example/ml-100k/"
_ML100K_FILES = ("ml-100k.inter", "ml-100k.item")


# --------------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------------


def cache_root() -> Path:
    """The directory that holds every downloaded data set, one subdirectory each.

    Returns:
        ``$SEVO_CACHE_DIR`` when that environment variable is set, else ``~/.cache/sevo-engine``.
    """
    root = os.environ.get("SEVO_CACHE_DIR")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "sevo-engine"


def _default_cache_dir() -> Path:
    return cache_root() / "ml-100k"


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
# Amazon Beauty from the S3-Rec and TiCoSeRec repositories
# --------------------------------------------------------------------------------------------------

BEAUTY_BASE_URLS: dict[str, str] = {
    # The S3-Rec authors' 5-core Beauty: Beauty.txt (one line per user: the user id, then the
    # item ids in chronological order) and Beauty_item2attributes.json ({item: [attribute, ...]}).
    "s3rec": "https://raw.githubusercontent.com/RUCAIBox/CIKM2020-S3Rec/master/data/",
    # The TiCoSeRec authors' review dates of the same users, pinned to the commit that added them:
    # Beauty_time_org_rank.txt (one line per user: the user id, then one unix time per item).
    "ticoserec": (
        "https://raw.githubusercontent.com/KingGugu/TiCoSeRec/"
        "ef4da7cf0eeff40a454511377ff3140fad37fdc8/data/Beauty/"
    ),
}
"""Where :func:`fetch_beauty` downloads from: base URL of each source repository's files."""

BEAUTY_SHA256: dict[str, str] = {
    "interactions.tsv": "d420da80642383e2fc940704f6a53e8dc9063e9f52776f07320f93af68259418",
    "item_attributes.json": "129e40f67486f6877eff0f5318cfa8530ee8ac23d8b0d1de04e1bb7a2ba0b2d4",
}
"""The sha256 of each file :func:`fetch_beauty` writes; anything else is refused."""

_BEAUTY_SOURCES = {
    "sequences": ("s3rec", "Beauty.txt"),
    "attributes": ("s3rec", "Beauty_item2attributes.json"),
    "times": ("ticoserec", "Beauty_time_org_rank.txt"),
}
_BEAUTY_FILES = ("interactions.tsv", "item_attributes.json")
_BEAUTY_CACHE_NAME = "amazon-beauty"


def beauty_dir() -> Path:
    """The directory Amazon Beauty is read from (whether or not it holds the files yet).

    Returns:
        ``$SEVO_BEAUTY_DIR`` when that environment variable is set, else the cache directory that
        :func:`fetch_beauty` fills (``amazon-beauty`` under :func:`cache_root`).
    """
    env = os.environ.get("SEVO_BEAUTY_DIR")
    return Path(env).expanduser() if env else cache_root() / _BEAUTY_CACHE_NAME


def fetch_beauty(
    cache_dir: Path | None = None,
    *,
    base_urls: Mapping[str, str] | None = None,
    sha256: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> Path:
    """Downloads Amazon Beauty once, joins it into ``interactions.tsv``, and returns its directory.

    Three public files are fetched (see :data:`BEAUTY_BASE_URLS`): the S3-Rec authors' 5-core
    item sequences ``Beauty.txt`` and ``Beauty_item2attributes.json``, and the TiCoSeRec authors'
    review dates ``Beauty_time_org_rank.txt`` (line for line the same users, one date per item).
    The join writes ``interactions.tsv`` (header ``user_id item_id timestamp``, tab-separated;
    rows grouped by user in file order, chronological within a user, ties in the order of the
    original sequence) and ``item_attributes.json`` (the S3-Rec attribute file as published).
    Both must match :data:`BEAUTY_SHA256` byte for byte: a changed upstream file or a wrong join
    is refused, never cached. Each file is written to a temporary file in ``cache_dir``, flushed
    to disk, then renamed, so a crash never leaves a half-written file. When both files are
    present nothing is downloaded. Amazon review data is for research use only.

    Args:
        cache_dir: Directory that receives the two files. Defaults to
            ``$SEVO_CACHE_DIR/amazon-beauty`` when ``SEVO_CACHE_DIR`` is set, else
            ``~/.cache/sevo-engine/amazon-beauty``.
        base_urls: Base URL of each source, keys ``"s3rec"`` and ``"ticoserec"`` (default
            :data:`BEAUTY_BASE_URLS`; a mirror or a test server can stand in).
        sha256: Expected sha256 of ``"interactions.tsv"`` and ``"item_attributes.json"`` (default
            :data:`BEAUTY_SHA256`).
        timeout: Seconds to wait on the network per request.

    Returns:
        The directory containing ``interactions.tsv`` and ``item_attributes.json``.

    Raises:
        RuntimeError: If a download fails (the message names the URL) or a joined file does not
            have its pinned sha256.
        DataFormatError: If the downloaded files do not have the expected layout.
        ValueError: If ``base_urls`` or ``sha256`` lacks a key.
    """
    target = (
        Path(cache_dir) if cache_dir is not None else cache_root() / _BEAUTY_CACHE_NAME
    ).expanduser()
    if all((target / f).is_file() for f in _BEAUTY_FILES):
        logger.debug("Amazon Beauty already cached at %s", target)
        return target
    urls = BEAUTY_BASE_URLS if base_urls is None else base_urls
    pinned = BEAUTY_SHA256 if sha256 is None else sha256
    missing = sorted({src for src, _ in _BEAUTY_SOURCES.values()} - set(urls))
    missing += sorted(set(_BEAUTY_FILES) - set(pinned))
    if missing:
        raise ValueError(f"base_urls / sha256 lack the key(s) {missing}")
    raw: dict[str, bytes] = {}
    for key, (source, name) in _BEAUTY_SOURCES.items():
        url = urls[source].rstrip("/") + "/" + name
        logger.info("Fetching %s", url)
        raw[key] = _download(url, timeout)
    files = {
        "interactions.tsv": _join_beauty(
            _utf8(raw["sequences"], "Beauty.txt"), _utf8(raw["times"], "Beauty_time_org_rank.txt")
        ),
        "item_attributes.json": raw["attributes"],
    }
    _check_attributes(raw["attributes"])
    for name, data in files.items():
        digest = hashlib.sha256(data).hexdigest()
        if digest != pinned[name]:
            raise RuntimeError(
                f"Amazon Beauty: the {name} built from the downloaded files has sha256 {digest}, "
                f"not the pinned {pinned[name]}; an upstream file changed or the join is wrong, "
                "so nothing was cached"
            )
    target.mkdir(parents=True, exist_ok=True)
    # interactions.tsv last: its presence is what marks the data set as available.
    for name in ("item_attributes.json", "interactions.tsv"):
        atomic_write_bytes(target / name, files[name])
    logger.info("Amazon Beauty cached at %s", target)
    return target


def _download(url: str, timeout: float) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": "sevo-engine"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read()
    except (OSError, http.client.HTTPException, ValueError) as exc:
        # URLError / HTTPError / timeouts are OSErrors; ValueError is a malformed URL.
        raise RuntimeError(f"could not download {url}: {exc}") from exc


def _utf8(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataFormatError(f"{name}: not UTF-8 text ({exc})") from exc


def _check_attributes(data: bytes) -> None:
    try:
        parsed = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataFormatError(f"Beauty_item2attributes.json: invalid JSON ({exc})") from exc
    if not isinstance(parsed, dict):
        raise DataFormatError("Beauty_item2attributes.json: expected {item_id: [attribute, ...]}")


def _numbered_rows(text: str) -> list[tuple[int, list[str]]]:
    return [(n, line.split()) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]


def _join_beauty(sequences: str, times: str) -> bytes:
    """``interactions.tsv`` from the item sequences and the review dates, user line by user line.

    Within a user, rows are sorted by time with a stable sort: the dates are already in
    sequence order upstream, and the stable sort keeps the sequence order of same-day reviews.
    """
    seq_rows, time_rows = _numbered_rows(sequences), _numbered_rows(times)
    if len(seq_rows) != len(time_rows):
        raise DataFormatError(
            f"Beauty.txt has {len(seq_rows)} users but Beauty_time_org_rank.txt has "
            f"{len(time_rows)}"
        )
    out = ["user_id\titem_id\ttimestamp\n"]
    seen: set[str] = set()
    for (line, seq), (_, stamps) in zip(seq_rows, time_rows, strict=True):
        where = f"Beauty.txt line {line} / Beauty_time_org_rank.txt"
        user = seq[0]
        if stamps[0] != user or user in seen or len(seq) < 2 or len(seq) != len(stamps):
            raise DataFormatError(
                f"{where}: user {user!r} does not match (time file: user {stamps[0]!r}, "
                f"{len(stamps) - 1} dates for {len(seq) - 1} items, or a repeated user)"
            )
        seen.add(user)
        try:
            seconds = [int(s) for s in stamps[1:]]
        except ValueError as exc:
            raise DataFormatError(f"{where}: dates must be integer unix seconds ({exc})") from None
        order = sorted(range(len(seconds)), key=seconds.__getitem__)
        out.extend(f"{user}\t{seq[1 + j]}\t{seconds[j]}\n" for j in order)
    return "".join(out).encode("utf-8")


def _load_beauty() -> Interactions:
    directory = beauty_dir()
    if not (directory / "interactions.tsv").is_file():
        where = (
            f"$SEVO_BEAUTY_DIR ({directory})"
            if os.environ.get("SEVO_BEAUTY_DIR")
            else f"the cache ({directory})"
        )
        raise FileNotFoundError(
            f"Amazon Beauty not found: {where} has no interactions.tsv. Run `sevo data fetch "
            "beauty` to download it into the cache, or set SEVO_BEAUTY_DIR to a directory holding "
            "interactions.tsv and item_attributes.json"
        )
    return renamed(load_amazon(directory), "amazon-beauty")


# --------------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetInfo:
    """One named data set.

    Attributes:
        name: Canonical name, e.g. ``"ml-100k"``.
        aliases: Other accepted names, e.g. ``("ml100k", "movielens-100k")``.
        description: One line for help texts.
        load: Loads the whole log (no filtering), fetching it first where that is automatic.
        fetch: Downloads the data set into a directory (``None``: the default cache directory)
            and returns that directory; ``None`` when the data set cannot be fetched.
    """

    name: str
    aliases: tuple[str, ...]
    description: str
    load: Callable[[], Interactions]
    fetch: Callable[[Path | None], Path] | None = None

    @property
    def names(self) -> tuple[str, ...]:
        """The canonical name, then the aliases."""
        return (self.name, *self.aliases)


DATASETS: tuple[DatasetInfo, ...] = (
    DatasetInfo(
        name="ml-100k",
        aliases=("ml100k", "movielens-100k"),
        description="MovieLens-100K, fetched from the recbole wheel on PyPI on first use",
        load=load_movielens_100k,
        fetch=fetch_ml100k,
    ),
    DatasetInfo(
        name="beauty",
        aliases=("amazon-beauty",),
        description="Amazon Beauty 5-core with review dates and item attributes",
        load=_load_beauty,
        fetch=fetch_beauty,
    ),
)
"""Every named data set."""

DATASET_NAMES: tuple[str, ...] = tuple(n for info in DATASETS for n in info.names)
"""Every accepted name (canonical names and aliases, lower case)."""


def find_dataset(name: str | os.PathLike[str]) -> DatasetInfo | None:
    """The registry entry whose name or alias is ``name`` (case-insensitive), else ``None``.

    Besides :data:`DATASETS`, ``synthetic-drift:RATE[:SEED[:EVENTS]]`` names the generated
    drifting stream :func:`~engine.data.synthetic.drifting_stream` (drift rate, seed, event
    count; generator defaults otherwise); a malformed name of that form raises ``ValueError``.
    """
    key = str(name).lower()
    for info in DATASETS:
        if key in info.names:
            return info
    spec = parse_synthetic_name(key)
    if spec is not None:
        return DatasetInfo(
            name=key,
            aliases=(),
            description=f"{SYNTHETIC_PREFIX}: generated stream with drifting co-occurrence",
            load=partial(drifting_stream, **spec),
        )
    return None


def is_dataset_name(name: str | os.PathLike[str]) -> bool:
    """Whether ``name`` names a registered data set (case-insensitive)."""
    return find_dataset(name) is not None


def fetch_dataset(name: str, cache_dir: Path | None = None) -> Path:
    """Downloads a named data set into its cache directory (nothing when already there).

    Args:
        name: A name or alias from :data:`DATASET_NAMES`.
        cache_dir: Directory that receives the files (default: the data set's directory under
            :func:`cache_root`).

    Returns:
        The directory holding the data set's files.

    Raises:
        ValueError: If ``name`` is not a registered data set or cannot be fetched.
        RuntimeError: If the download fails or is refused.
    """
    info = find_dataset(name)
    if info is None:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(DATASET_NAMES)}")
    if info.fetch is None:
        raise ValueError(f"data set {info.name!r} cannot be fetched")
    return info.fetch(cache_dir)


# --------------------------------------------------------------------------------------------------
# Loading by name or path
# --------------------------------------------------------------------------------------------------


def load_dataset(name_or_path: str | os.PathLike[str]) -> Interactions:
    """Loads a data set by name or path (no filtering; apply :func:`~engine.data.core_filter`).

    Names (see :data:`DATASETS`): ``"ml-100k"`` (fetched from PyPI on first use, see
    :func:`fetch_ml100k`) and ``"beauty"`` (the directory ``$SEVO_BEAUTY_DIR`` when set, else the
    cache that ``sevo data fetch beauty`` / :func:`fetch_beauty` fills; it is not downloaded
    implicitly); ``"synthetic-drift:RATE[:SEED[:EVENTS]]"`` is generated (see
    :func:`find_dataset`). A known name wins over a path of the same spelling. Otherwise the
    argument is a path:

    * a directory holding ``ml-100k.inter`` or ``u.data`` (MovieLens-100K), ``ratings.dat``
      (MovieLens-1M) or ``interactions.tsv``/``.csv`` (Amazon style, with ``item_attributes.json``
      when present);
    * a file: ``u.data``/``ml-100k.inter``/``ratings.dat`` by name, ``.jsonl``/``.json`` via
      :func:`~engine.data.load_events`, ``.csv``/``.tsv`` via :func:`~engine.data.load_amazon`
      (same header, no attributes).

    Args:
        name_or_path: A known name or a path.

    Returns:
        The log.

    Raises:
        FileNotFoundError: If the path (or a named data set's files) does not exist; for Beauty
            the message says how to get it.
        ValueError: If a directory or file type is not recognised.
    """
    info = find_dataset(name_or_path)
    if info is not None:
        return info.load()
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
    known = ", ".join(repr(info.name) for info in DATASETS)
    raise FileNotFoundError(
        f"{name_or_path!r} is neither a known data set ({known}) nor an existing path"
    )
