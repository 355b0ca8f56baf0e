"""The data set registry and `fetch_beauty`: download from a loopback server, join, check, cache."""

from __future__ import annotations

import csv
import functools
import hashlib
import http.server
import json
import logging
import re
import socket
import threading
from pathlib import Path

import pytest

from engine.data import (
    DATASET_NAMES,
    DataFormatError,
    beauty_dir,
    fetch_beauty,
    fetch_dataset,
    find_dataset,
    is_dataset_name,
    load_dataset,
)
from engine.data import datasets as datasets_mod
from streaming.cli import main

# A few users in the upstream layouts: one line per user, the user id first.
SEQUENCES = "1 1 2 3\n2 4 1 5 2\n3 3 4 5\n"
TIMES = "1 100 100 200\n2 300 50 50 400\n3 10 20 30\n"  # user 2's dates are out of order
ATTRIBUTES = json.dumps({"1": [1, 2], "2": [2], "3": [3], "4": [1], "5": [4]}).encode()
# Chronological within a user; same-day rows keep the sequence order (user 2: items 1 then 5).
EXPECTED_TSV = (
    "user_id\titem_id\ttimestamp\n"
    "1\t1\t100\n1\t2\t100\n1\t3\t200\n"
    "2\t1\t50\n2\t5\t50\n2\t4\t300\n2\t2\t400\n"
    "3\t3\t10\n3\t4\t20\n3\t5\t30\n"
)
SHA = {
    "interactions.tsv": hashlib.sha256(EXPECTED_TSV.encode()).hexdigest(),
    "item_attributes.json": hashlib.sha256(ATTRIBUTES).hexdigest(),
}


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass


def _serve(directory: Path):
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(directory))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


@pytest.fixture
def beauty_site(tmp_path: Path):
    """A loopback HTTP server with the three upstream files; yields ``base_urls``."""
    site = tmp_path / "site"
    (site / "s3rec").mkdir(parents=True)
    (site / "tico" / "data").mkdir(parents=True)
    (site / "s3rec" / "Beauty.txt").write_text(SEQUENCES)
    (site / "s3rec" / "Beauty_item2attributes.json").write_bytes(ATTRIBUTES)
    (site / "tico" / "data" / "Beauty_time_org_rank.txt").write_text(TIMES)
    server, thread = _serve(site)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield {"s3rec": f"{base}/s3rec/", "ticoserec": f"{base}/tico/data"}
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _no_files(directory: Path) -> bool:
    return not directory.exists() or not any(directory.iterdir())


# ------------------------------------------------------------------------------------ registry


def test_one_registry_names_every_data_set() -> None:
    assert DATASET_NAMES == ("ml-100k", "ml100k", "movielens-100k", "beauty", "amazon-beauty")
    assert find_dataset("MovieLens-100K").name == "ml-100k"
    assert find_dataset("amazon-beauty").name == "beauty"
    assert is_dataset_name("BEAUTY") and not is_dataset_name("ml-1m")
    with pytest.raises(ValueError, match="unknown data set 'ml-1m'"):
        fetch_dataset("ml-1m")


# ----------------------------------------------------------------------------- fetch_beauty


def test_fetch_joins_verifies_and_caches(
    beauty_site: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEVO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("SEVO_BEAUTY_DIR", raising=False)
    directory = fetch_beauty(base_urls=beauty_site, sha256=SHA)

    assert directory == tmp_path / "cache" / "amazon-beauty" == beauty_dir()
    assert sorted(p.name for p in directory.iterdir()) == [
        "interactions.tsv",
        "item_attributes.json",
    ]
    assert (directory / "interactions.tsv").read_text() == EXPECTED_TSV
    assert (directory / "item_attributes.json").read_bytes() == ATTRIBUTES

    inter = load_dataset("beauty")
    assert inter.name == "amazon-beauty"
    assert (inter.num_users, inter.num_items, inter.num_interactions) == (3, 5, 10)
    assert inter.item_ids[inter.items].tolist() == [
        row[1] for row in csv.reader(EXPECTED_TSV.splitlines()[1:], delimiter="\t")
    ]
    assert inter.num_categories == 4

    # A complete cache is never downloaded again (the URLs now lead nowhere).
    dead = {key: f"http://127.0.0.1:{_closed_port()}/" for key in beauty_site}
    assert fetch_beauty(base_urls=dead, sha256=SHA) == directory


def test_a_sha_mismatch_is_refused_and_nothing_is_kept(beauty_site: dict, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    wrong = {**SHA, "interactions.tsv": "0" * 64}
    with pytest.raises(RuntimeError, match=r"(?s)interactions\.tsv.*sha256.*nothing was cached"):
        fetch_beauty(cache, base_urls=beauty_site, sha256=wrong)
    assert _no_files(cache)
    with pytest.raises(RuntimeError, match=r"item_attributes\.json.*sha256"):
        fetch_beauty(cache, base_urls=beauty_site, sha256={**SHA, "item_attributes.json": "0"})
    assert _no_files(cache)


def test_download_failures_name_the_url(beauty_site: dict, tmp_path: Path) -> None:
    port = _closed_port()
    unreachable = {**beauty_site, "ticoserec": f"http://127.0.0.1:{port}/data"}
    url = f"http://127.0.0.1:{port}/data/Beauty_time_org_rank.txt"
    with pytest.raises(RuntimeError, match=f"could not download {re.escape(url)}"):
        fetch_beauty(tmp_path / "a", base_urls=unreachable, sha256=SHA, timeout=5)
    assert _no_files(tmp_path / "a")
    missing = {**beauty_site, "ticoserec": beauty_site["s3rec"]}  # no time file there: 404
    with pytest.raises(RuntimeError, match=r"could not download .*Beauty_time_org_rank\.txt.*404"):
        fetch_beauty(tmp_path / "b", base_urls=missing, sha256=SHA, timeout=5)
    assert _no_files(tmp_path / "b")


def test_misaligned_upstream_files_are_a_format_error(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "Beauty.txt").write_text(SEQUENCES)
    (site / "Beauty_item2attributes.json").write_bytes(ATTRIBUTES)
    (site / "Beauty_time_org_rank.txt").write_text("1 100 100 200\n2 300 50 50\n3 10 20 30\n")
    server, thread = _serve(site)
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        with pytest.raises(DataFormatError, match=r"Beauty\.txt line 2"):
            fetch_beauty(tmp_path / "c", base_urls={"s3rec": base, "ticoserec": base}, sha256=SHA)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    assert _no_files(tmp_path / "c")


def test_missing_beauty_says_how_to_get_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEVO_CACHE_DIR", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("SEVO_BEAUTY_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match=r"sevo data fetch beauty.*SEVO_BEAUTY_DIR"):
        load_dataset("beauty")


def test_beauty_dir_env_wins_over_the_cache(
    beauty_site: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEVO_CACHE_DIR", str(tmp_path / "cache"))
    fetch_beauty(base_urls=beauty_site, sha256=SHA)
    own = tmp_path / "own"
    own.mkdir()
    (own / "interactions.tsv").write_text("user_id\titem_id\ttimestamp\nu\ti\t1\n")
    monkeypatch.setenv("SEVO_BEAUTY_DIR", str(own))
    assert load_dataset("beauty").num_interactions == 1


# ------------------------------------------------------------------------------------- CLI


def test_cli_fetch_beauty(
    beauty_site: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, caplog
) -> None:
    monkeypatch.setattr(datasets_mod, "BEAUTY_BASE_URLS", beauty_site)
    monkeypatch.setattr(datasets_mod, "BEAUTY_SHA256", SHA)
    assert main(["data", "fetch", "beauty", "--cache-dir", str(tmp_path / "b")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "b")
    assert (tmp_path / "b" / "interactions.tsv").read_text() == EXPECTED_TSV

    monkeypatch.setattr(datasets_mod, "BEAUTY_SHA256", {**SHA, "interactions.tsv": "0" * 64})
    with caplog.at_level(logging.ERROR):
        assert main(["data", "fetch", "beauty", "--cache-dir", str(tmp_path / "c")]) == 1
    assert "nothing was cached" in caplog.text
    assert _no_files(tmp_path / "c")


# ------------------------------------------------- the pinned join, when a copy is at hand


_PRESENT = beauty_dir()


@pytest.mark.skipif(
    not (_PRESENT / "interactions.tsv").is_file(),
    reason="no Amazon Beauty copy at $SEVO_BEAUTY_DIR or in the cache (benchmark data, optional)",
)
def test_the_join_reproduces_the_pinned_files(tmp_path: Path) -> None:
    """Rebuilds the upstream files from a present copy; the join must give the pinned bytes."""
    rows: dict[str, list[tuple[str, str]]] = {}
    with (_PRESENT / "interactions.tsv").open() as fh:
        for user, item, stamp in list(csv.reader(fh, delimiter="\t"))[1:]:
            rows.setdefault(user, []).append((item, stamp))
    site = tmp_path / "site"
    site.mkdir()
    (site / "Beauty.txt").write_text(
        "".join(f"{u} {' '.join(i for i, _ in r)}\n" for u, r in rows.items())
    )
    (site / "Beauty_time_org_rank.txt").write_text(
        "".join(f"{u} {' '.join(t for _, t in r)}\n" for u, r in rows.items())
    )
    (site / "Beauty_item2attributes.json").write_bytes(
        (_PRESENT / "item_attributes.json").read_bytes()
    )
    server, thread = _serve(site)
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        fetch_beauty(tmp_path / "cache", base_urls={"s3rec": base, "ticoserec": base})
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
