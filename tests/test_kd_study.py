"""benchmarks/kd_study.py end to end on a tiny file: every row trains, a rerun reuses them."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "kd_study.py"
_spec = importlib.util.spec_from_file_location("kd_study_bench", _PATH)
kd_study = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kd_study)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cycle_file(path: Path) -> Path:
    rng = np.random.default_rng(0)
    rows = ["user_id,item_id,timestamp"]
    for u in range(60):
        start = int(rng.integers(0, 30))
        rows += [f"u{u},{(start + k) % 30 + 1},{k}" for k in range(12)]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_every_row_trains_and_a_rerun_loads_them(tmp_path, caplog):
    data = _cycle_file(tmp_path / "cycle.csv")
    out = tmp_path / "kd"
    argv = [
        "--data", str(data), "--out", str(out), "--epochs", "2", "--eval-every", "1",
        "--batch-size", "16", "--maxlen", "10", "--teacher-dim", "16", "--student-dim", "8",
        "--threads", "1", "--htd-groups", "4", "--rkd-users", "8", "--knn-k", "3",
    ]  # fmt: skip
    assert kd_study.main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["rows"]) == list(kd_study.ROWS)
    for row, result in summary["rows"].items():
        assert 0.0 <= result["test"]["NDCG@10"] <= result["test"]["HR@10"] <= 1.0, row
        assert result["paper_beauty"]["HR@10"] == kd_study.PAPER_KD[row][0]
    rows = {p.stem: json.loads(p.read_text()) for p in (out / "rows").glob("*.json")}
    assert rows["teacher"]["model_config"]["dim"] == 16
    assert rows["student+kd"]["model_config"]["dim"] == 8
    assert rows["student+sevo"]["config"]["optimizer"] == "sevo-adamw"
    assert rows["student+sevo"]["knn_graph"] == {
        "k": 3,
        "tau": 1.0,
        "nnz": rows["student+sevo"]["graph_nnz"],
    }
    assert rows["student+dkd"]["config"]["optimizer"] == "adamw"
    assert (out / "teacher.pt").exists() and not (out / "ckpt").exists()
    assert "| student+sevo+dkd |" in (out / "summary.md").read_text()
    # a rerun trains nothing; a changed KD setting retrains that row only
    with caplog.at_level("INFO"):
        assert kd_study.main(argv) == 0
    assert caplog.text.count("already done") == len(kd_study.ROWS) - 1
    assert "teacher: loaded" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO"):
        assert kd_study.main([*argv, "--kd-tau", "2.0"]) == 0
    assert "student+kd: training" in caplog.text and "student+dkd: training" not in caplog.text


def test_the_distillation_terms_reach_the_student_only():
    from engine.models import build_model

    teacher = build_model("sasrec", 30, 10, seed=1, dim=16, maxlen=10)
    params = {**kd_study.kd_params(kd_study.parse_args(["--htd-groups", "4", "--rkd-users", "6"]))}
    seqs = torch.randint(1, 31, (8, 11), generator=torch.Generator().manual_seed(0))
    seqs[0, :4] = 0
    batch = {"users": torch.arange(8), "seqs": seqs}
    for kind in ("kd", "dkd", "rkd", "htd"):
        student = build_model("sasrec", 30, 10, seed=0, dim=8, maxlen=10).train()
        term = kd_study.Distiller(kind, teacher, params)(student, batch, torch.Generator())
        assert term.dim() == 0 and torch.isfinite(term) and term.item() > 0, kind
        term.backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
        assert all(p.grad is None for p in teacher.parameters()), kind
    groups = kd_study.kmeans_groups(teacher.item_output_weight().detach(), 4, seed=0)
    assert groups.shape == (31,) and int(groups.max()) < 4
