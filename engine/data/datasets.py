"""The one registry of named data sets, their download into a user cache, and :func:`load_dataset`.

A named data set has a canonical name (what ``sevo data fetch NAME`` takes) and aliases; every
name is matched case-insensitively. :data:`DATASET_NAMES` lists them all, so other layers (the
streaming replay, the command line) never keep their own copy of the list.

Downloads go to a user cache, never into the repository: ``$SEVO_CACHE_DIR/<data set>`` when
``SEVO_CACHE_DIR`` is set, else ``~/.cache/sevo-engine/<data set>``. Nothing is read or fetched at
import time.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engine.data.interactions import Interactions
from engine.data.loaders import load_amazon, load_events, load_movielens_1m, load_movielens_100k
from engine.data.preprocessing import renamed

__all__ = [
    "DATASETS",
    "DATASET_NAMES",
    "DatasetInfo",
    "cache_root",
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
# Amazon Beauty
# --------------------------------------------------------------------------------------------------


def _beauty_dir() -> Path:
    env = os.environ.get("SEVO_BEAUTY_DIR")
    return (
        Path(env).expanduser()
        if env
        else Path(__file__).resolve().parents[3] / "shared" / "data" / "amazon-beauty"
    )


def _load_beauty() -> Interactions:
    directory = _beauty_dir()
    if not (directory / "interactions.tsv").is_file():
        raise FileNotFoundError(
            f"Amazon Beauty not found at {directory} (expected interactions.tsv); set "
            "SEVO_BEAUTY_DIR to the directory holding interactions.tsv and item_attributes.json"
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
    ),
)
"""Every named data set."""

DATASET_NAMES: tuple[str, ...] = tuple(n for info in DATASETS for n in info.names)
"""Every accepted name (canonical names and aliases, lower case)."""


def find_dataset(name: str | os.PathLike[str]) -> DatasetInfo | None:
    """The registry entry whose name or alias is ``name`` (case-insensitive), else ``None``."""
    key = str(name).lower()
    for info in DATASETS:
        if key in info.names:
            return info
    return None


def is_dataset_name(name: str | os.PathLike[str]) -> bool:
    """Whether ``name`` names a registered data set (case-insensitive)."""
    return find_dataset(name) is not None


# --------------------------------------------------------------------------------------------------
# Loading by name or path
# --------------------------------------------------------------------------------------------------


def load_dataset(name_or_path: str | os.PathLike[str]) -> Interactions:
    """Loads a data set by name or path (no filtering; apply :func:`~engine.data.core_filter`).

    Names (see :data:`DATASETS`): ``"ml-100k"`` (fetched from PyPI on first use, see
    :func:`fetch_ml100k`) and ``"beauty"`` (the Amazon Beauty directory at ``$SEVO_BEAUTY_DIR``,
    else ``shared/data/amazon-beauty`` beside the repository). A known name wins over a path of
    the same spelling. Otherwise the argument is a path:

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
        FileNotFoundError: If the path (or a named data set's files) does not exist.
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
