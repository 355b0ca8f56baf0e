"""Knowledge distillation with SEvo: a large SASRec teaches a small one (the SEvo paper's KD table).

Rows, all SASRec with the ``sasrec-beauty`` preset's settings (:mod:`engine.presets`) except the
embedding size (``--teacher-dim``, ``--student-dim``) and, in quick mode, the run length:

==================  ===========================================================================
teacher             dim ``--teacher-dim``, ``--teacher-optimizer`` (AdamW by default)
student             dim ``--student-dim``, AdamW
student+kd          + ``w · kd_loss(s, t, τ)`` (Hinton)
student+dkd         + ``w · dkd_loss(s, t, y, α, β, τ)`` (decoupled KD)
student+rkd         + ``w · rkd_loss(s_u, t_u, w_dist, w_angle)`` (relational KD)
student+htd         + ``w · htd_loss(s_i, t_i, groups)``: HTD's **topology term only**
student+sevo        SEvo-AdamW over the teacher's kNN item graph, no distillation loss
student+sevo+dkd    both
==================  ===========================================================================

What the losses read (``engine/distill.py`` holds the losses themselves), per training batch,
at the last input position of every sequence (its target ``y`` is the sequence's last training
item): ``s``/``t`` are the student's and teacher's scores of every item 1..N (padding column
dropped), ``s_u``/``t_u`` their user representations of the batch's first ``--rkd-users``
sequences, ``s_i``/``t_i`` their item embeddings of the batch's distinct targets, and ``groups``
the teacher's items clustered by k-means (``--htd-groups`` clusters of the normalised teacher
item embeddings, fixed before training; HTD learns its grouping, which ``htd_loss`` leaves out).
The student's representation is a second forward pass with its own dropout (the model's loss
does not expose its hidden states).

Loss weights: α, β, τ, the RKD pair (25, 50) are the defaults of the methods' papers; the
outer weights ``w`` (KD 1, DKD 0.25, RKD 0.1, HTD 0.005) were set once so that each term starts
near the size of the student's own loss (about 1.4 at initialisation on the quick split: KD
0.58, DKD 4.6, RKD 9.7 and HTD 2.1 times their weights), not tuned on any metric.

The kNN graph (``graph_store.knn_edges``): ``d_ij = 1 − cos(e_i, e_j)`` over the teacher's item
embeddings, ``ŵ_ij = exp(−d_ij / τ)`` for the ``k`` nearest neighbours of ``i``,
``w_ij = ŵ_ij + ŵ_ji``; ``--knn-k`` (10) and ``--knn-tau`` (1.0).

Resumable per row: a finished row is ``rows/<row>.json`` (reused while its settings match), the
teacher's weights ``teacher.pt``; an unfinished row continues from ``ckpt/<row>/checkpoint.pt``.
Writes ``summary.json`` and ``summary.md`` (the paper's Beauty numbers next to each row) under
``--out`` (default ``benchmarks/results/kd-study/{quick,beauty}``).

Usage::

    python benchmarks/kd_study.py --quick          # ML-100K slice, a plumbing check (< 2 min)
    python benchmarks/kd_study.py --data beauty    # the full study (Beauty from
                                                   # `sevo data fetch beauty` or $SEVO_BEAUTY_DIR)
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import shutil
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.distill import dkd_loss, htd_loss, kd_loss, rkd_loss  # noqa: E402
from engine.experiments import load_split  # noqa: E402
from engine.models import Recommender, build_model  # noqa: E402
from engine.presets import preset_config  # noqa: E402
from engine.train import OfflineConfig, model_kwargs, train_offline  # noqa: E402
from graph_store import graph_from_embeddings  # noqa: E402
from sevo_common.atomic import atomic_write_bytes  # noqa: E402

log = logging.getLogger("kd_study")

ROWS = (
    "teacher",
    "student",
    "student+kd",
    "student+dkd",
    "student+rkd",
    "student+htd",
    "student+sevo",
    "student+sevo+dkd",
)
#: The SEvo paper's knowledge-distillation table, Beauty: row -> (HR@10, NDCG@10).
PAPER_KD = {
    "teacher": (0.0786, 0.0452),
    "student": (0.0526, 0.0275),
    "student+kd": (0.0552, 0.0294),
    "student+dkd": (0.0577, 0.0325),
    "student+rkd": (0.0515, 0.0262),
    "student+htd": (0.0549, 0.0281),
    "student+sevo": (0.0576, 0.0304),
    "student+sevo+dkd": (0.0568, 0.0341),
}


# ---------------------------------------------------------------------- distillation terms
class Distiller:
    """The extra loss of a student row: ``weight × term(student, teacher)`` per batch (see the
    module docstring for what each term reads)."""

    def __init__(self, kind: str, teacher: Recommender, params: dict[str, Any]) -> None:
        self.kind, self.params = kind, params
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        with torch.no_grad():
            self.t_items = teacher.item_output_weight().detach()  # (N+1, D_t)
            bias = teacher.item_output_bias()
            self.t_bias = None if bias is None else bias.detach()
        self.groups = None
        if kind == "htd":
            self.groups = kmeans_groups(self.t_items, params["htd_groups"], seed=params["seed"]).to(
                self.t_items.device
            )

    def __call__(self, model: Recommender, batch: dict, generator: torch.Generator):
        seqs = batch["seqs"]  # (B, T+1)
        inputs = {"users": batch["users"], "seqs": seqs[:, :-1]}
        target = seqs[:, -1]  # (B,) the last training item, never padding
        w = self.params[f"{self.kind}_weight"]
        if self.kind == "htd":
            items = torch.unique(target)
            s_emb = model.item_output_weight()[items]
            return w * htd_loss(s_emb, self.t_items[items], self.groups[items])
        with torch.no_grad():
            t_rep = self.teacher.user_repr(inputs)  # (B, D_t)
        s_rep = model.user_repr(inputs, generator)  # (B, D_s), student dropout on
        if self.kind == "rkd":
            n = min(self.params["rkd_users"], s_rep.shape[0])
            return w * rkd_loss(
                s_rep[:n], t_rep[:n], self.params["rkd_w_dist"], self.params["rkd_w_angle"]
            )
        s_logits = _scores(s_rep, model.item_output_weight(), model.item_output_bias())
        with torch.no_grad():
            t_logits = _scores(t_rep, self.t_items, self.t_bias)
        tau = self.params[f"{self.kind}_tau"]
        if self.kind == "kd":
            return w * kd_loss(s_logits, t_logits, tau)
        if self.kind == "dkd":
            alpha, beta = self.params["dkd_alpha"], self.params["dkd_beta"]
            return w * dkd_loss(s_logits, t_logits, target - 1, alpha, beta, tau)
        raise ValueError(f"unknown distillation {self.kind!r}")


def _scores(rep: torch.Tensor, items: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``(B, N)`` scores of items 1..N (the padding column left out)."""
    scores = rep @ items[1:].T
    return scores if bias is None else scores + bias[1:]


def kmeans_groups(emb: torch.Tensor, k: int, *, seed: int, iters: int = 25) -> torch.Tensor:
    """``(N+1,)`` cluster of every row by k-means on the unit-normalised rows 1..N (cosine);
    row 0 (padding) gets group 0 too (it never appears as a target)."""
    x = F.normalize(emb[1:].float(), dim=1)
    g = torch.Generator().manual_seed(seed)
    centres = x[torch.randperm(x.shape[0], generator=g)[:k].to(x.device)]
    for _ in range(iters):
        assign = (x @ centres.T).argmax(1)
        for c in range(centres.shape[0]):
            members = x[assign == c]
            if members.shape[0]:
                centres[c] = F.normalize(members.mean(0), dim=0)
    assign = (x @ centres.T).argmax(1)
    return torch.cat([assign.new_zeros(1), assign])


# ---------------------------------------------------------------------- rows
def row_configs(args: argparse.Namespace) -> dict[str, OfflineConfig]:
    """The OfflineConfig of every row (the preset, the dims, quick-mode changes)."""
    given: dict[str, Any] = {"device": args.device, "seed": args.seed}
    for name in ("epochs", "eval_every", "batch_size", "maxlen", "lr"):
        if getattr(args, name) is not None:
            given[name] = getattr(args, name)
    base = preset_config("sasrec-beauty", given)
    teacher = replace(
        base,
        optimizer=args.teacher_optimizer,
        model_overrides={**base.model_overrides, "dim": args.teacher_dim},
    )
    student = replace(
        base, optimizer="adamw", model_overrides={**base.model_overrides, "dim": args.student_dim}
    )
    configs = {"teacher": teacher}
    for row in ROWS[1:]:
        configs[row] = replace(student, optimizer="sevo-adamw") if "sevo" in row else student
    return configs


def kd_params(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "seed": args.seed,
        "kd_weight": args.kd_weight,
        "kd_tau": args.kd_tau,
        "dkd_weight": args.dkd_weight,
        "dkd_alpha": args.dkd_alpha,
        "dkd_beta": args.dkd_beta,
        "dkd_tau": args.dkd_tau,
        "rkd_weight": args.rkd_weight,
        "rkd_w_dist": args.rkd_w_dist,
        "rkd_w_angle": args.rkd_w_angle,
        "rkd_users": args.rkd_users,
        "htd_weight": args.htd_weight,
        "htd_groups": args.htd_groups,
        "knn_k": args.knn_k,
        "knn_tau": args.knn_tau,
    }


def _kind(row: str) -> str | None:
    for kind in ("dkd", "rkd", "htd", "kd"):
        if row.endswith("+" + kind):
            return kind
    return None


def signature(row: str, config: OfflineConfig, args: argparse.Namespace, teacher_sig=None):
    """What a finished row was computed from (a saved row is reused only while it matches)."""
    settings = asdict(config)
    for name in ("device", "checkpoint_dir", "checkpoint_every_epochs"):
        settings.pop(name)
    sig = {
        "row": row,
        "data": args.data,
        "core": args.core,
        "max_users": args.max_users,
        "config": json.loads(json.dumps(settings)),
    }
    if row != "teacher":
        kind, params = _kind(row), kd_params(args)
        keep = {"seed"} | {k for k in params if kind and k.startswith(kind + "_")}
        if "sevo" in row:
            keep |= {"knn_k", "knn_tau"}
        sig["kd"] = {k: v for k, v in params.items() if k in keep}
        sig["teacher"] = teacher_sig
    return sig


def _write_json(path: Path, payload: Any) -> None:
    atomic_write_bytes(path, (json.dumps(payload, indent=1) + "\n").encode())


def _load_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def get_teacher(args, split, dataset, config, out: Path) -> tuple[Recommender, dict, dict]:
    """Train the teacher, or load it (``teacher.pt`` + ``rows/teacher.json``) when done."""
    sig = signature("teacher", config, args)
    row_path, weights = out / "rows" / "teacher.json", out / "teacher.pt"
    saved = _load_json(row_path)
    model = build_model(
        "sasrec", split.num_items, split.num_users, seed=config.seed, **model_kwargs(config)
    ).to(config.device)
    if saved and saved.get("signature") == sig and weights.exists():
        state = torch.load(io.BytesIO(weights.read_bytes()), map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        log.info("teacher: loaded %s", weights)
        return model.eval(), saved, sig
    result = _train_row("teacher", split, dataset, config, out, keep_model=True)
    buffer = io.BytesIO()
    torch.save(result.model.state_dict(), buffer)
    atomic_write_bytes(weights, buffer.getvalue())
    row = _row_json("teacher", result, sig)
    _write_json(row_path, row)
    shutil.rmtree(out / "ckpt" / "teacher", ignore_errors=True)
    return result.model.eval(), row, sig


def _train_row(row, split, dataset, config, out, **kwargs):
    config = replace(config, checkpoint_dir=str(out / "ckpt" / row))
    log.info("%s: training %d epochs (dim %d)", row, config.epochs, config.model_overrides["dim"])
    return train_offline(split, config, dataset=dataset, progress=False, **kwargs)


def _row_json(row: str, result, sig: dict) -> dict:
    payload = result.to_json()
    payload.pop("test_user_ndcg10")
    payload.update({"row": row, "signature": sig})
    return payload


def run_student(row, args, split, dataset, config, out, teacher, teacher_sig) -> dict:
    sig = signature(row, config, args, teacher_sig)
    row_path = out / "rows" / f"{row}.json"
    saved = _load_json(row_path)
    if saved and saved.get("signature") == sig:
        log.info("%s: already done, loaded %s", row, row_path)
        return saved
    kind, params = _kind(row), kd_params(args)
    extra = Distiller(kind, teacher, params) if kind else None
    graph = None
    if "sevo" in row:
        with torch.no_grad():
            items = teacher.item_output_weight().detach().float().cpu()
        graph = graph_from_embeddings(items, args.knn_k, tau=args.knn_tau)
    result = _train_row(row, split, dataset, config, out, extra_loss=extra, item_graph=graph)
    payload = _row_json(row, result, sig)
    if graph is not None:
        payload["knn_graph"] = {"k": args.knn_k, "tau": args.knn_tau, "nnz": graph.nnz}
    _write_json(row_path, payload)
    shutil.rmtree(out / "ckpt" / row, ignore_errors=True)
    return payload


# ---------------------------------------------------------------------- report
def markdown(rows: dict[str, dict], args: argparse.Namespace, configs) -> str:
    mode = "QUICK MODE (a plumbing check, not a reproduction)" if args.quick else "full mode"
    t, s = configs["teacher"], configs["student"]
    lines = [
        f"# Knowledge distillation study: {mode}",
        "",
        f"Data: {args.data} (core {args.core}"
        + (f", first {args.max_users} users" if args.max_users else "")
        + f"); SASRec teacher dim {args.teacher_dim} ({t.optimizer}), students dim "
        f"{args.student_dim}; {s.epochs} epochs, validation every {s.eval_every}, batch "
        f"{s.batch_size}, maxlen {s.maxlen}, lr {s.lr}, seed {args.seed}; kNN graph k = "
        f"{args.knn_k}, τ = {args.knn_tau}; KD w {args.kd_weight} τ {args.kd_tau}; DKD w "
        f"{args.dkd_weight} α {args.dkd_alpha} β {args.dkd_beta} τ {args.dkd_tau}; RKD w "
        f"{args.rkd_weight} ({args.rkd_w_dist}, {args.rkd_w_angle}) over {args.rkd_users} "
        f"users; HTD (topology term only) w {args.htd_weight}, {args.htd_groups} k-means groups.",
        "",
        "The paper's columns are its Beauty numbers (full training), printed for reference"
        + (
            ": quick-mode rows are on other data and far shorter runs, not comparable."
            if args.quick
            else "."
        ),
        "",
        "| row | HR@10 | NDCG@10 | paper HR@10 | paper NDCG@10 | best epoch | s/epoch |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in ROWS:
        if row not in rows:
            continue
        r, (p_hr, p_ndcg) = rows[row], PAPER_KD[row]
        lines.append(
            f"| {row} | {r['test']['HR@10']:.4f} | {r['test']['NDCG@10']:.4f} | {p_hr:.4f} | "
            f"{p_ndcg:.4f} | {r['best_epoch']} | {r['mean_epoch_seconds']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def _plain(value: Any) -> Any:
    """Paths relative to the repository when inside it (JSON-friendly, machine-independent)."""
    if isinstance(value, Path):
        try:
            return str(value.resolve().relative_to(ROOT))
        except ValueError:
            return str(value)
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="ML-100K slice, short runs (< 2 min)")
    p.add_argument("--data", default="beauty")
    p.add_argument("--core", type=int, default=5)
    p.add_argument("--max-users", type=int, default=None)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--teacher-dim", type=int, default=None, help="default 256 (quick: 64)")
    p.add_argument("--student-dim", type=int, default=16)
    p.add_argument("--teacher-optimizer", default="adamw", choices=("adamw", "sevo-adamw"))
    # None: the sasrec-beauty preset's value (quick mode sets its own)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--eval-every", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--maxlen", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--checkpoint-every", type=int, default=5, help="epochs between checkpoints")
    p.add_argument("--kd-weight", type=float, default=1.0)
    p.add_argument("--kd-tau", type=float, default=1.0)
    p.add_argument("--dkd-weight", type=float, default=0.25)
    p.add_argument("--dkd-alpha", type=float, default=1.0)
    p.add_argument("--dkd-beta", type=float, default=8.0)
    p.add_argument("--dkd-tau", type=float, default=1.0)
    p.add_argument("--rkd-weight", type=float, default=0.1)
    p.add_argument("--rkd-w-dist", type=float, default=25.0)
    p.add_argument("--rkd-w-angle", type=float, default=50.0)
    p.add_argument("--rkd-users", type=int, default=64)
    p.add_argument("--htd-weight", type=float, default=0.005)
    p.add_argument("--htd-groups", type=int, default=20)
    p.add_argument("--knn-k", type=int, default=10)
    p.add_argument("--knn-tau", type=float, default=1.0)
    args = p.parse_args(argv)
    if args.quick:
        args.data = "ml-100k"
        args.max_users = args.max_users or 300
        args.teacher_dim = args.teacher_dim or 64
        args.epochs = args.epochs or 20
        args.eval_every = args.eval_every or 5
        args.batch_size = args.batch_size or 64
    args.teacher_dim = args.teacher_dim or 256
    args.out = args.out or ROOT / "benchmarks" / "results" / "kd-study" / (
        "quick" if args.quick else args.data
    )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    (out / "rows").mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    dataset, split = load_split(args.data, core=args.core, max_users=args.max_users)
    configs = {
        row: replace(c, checkpoint_every_epochs=args.checkpoint_every)
        for row, c in row_configs(args).items()
    }
    teacher, teacher_row, teacher_sig = get_teacher(args, split, dataset, configs["teacher"], out)
    rows = {"teacher": teacher_row}
    for row in ROWS[1:]:
        if row in args.rows:
            rows[row] = run_student(
                row, args, split, dataset, configs[row], out, teacher, teacher_sig
            )
    if (out / "ckpt").is_dir() and not any((out / "ckpt").iterdir()):
        (out / "ckpt").rmdir()
    summary = {
        "mode": "quick" if args.quick else "full",
        "data": args.data,
        "dataset": dataset,
        "settings": {k: _plain(v) for k, v in vars(args).items()},
        "rows": {
            row: {
                "test": r["test"],
                "valid": r["valid"],
                "best_epoch": r["best_epoch"],
                "mean_epoch_seconds": r["mean_epoch_seconds"],
                "paper_beauty": dict(zip(("HR@10", "NDCG@10"), PAPER_KD[row], strict=True)),
            }
            for row, r in rows.items()
        },
        "wall_seconds_this_call": time.perf_counter() - start,
    }
    _write_json(out / "summary.json", summary)
    table = markdown(rows, args, configs)
    atomic_write_bytes(out / "summary.md", table.encode())
    print(table, end="")
    print(f"wrote {out / 'summary.md'} ({summary['wall_seconds_this_call']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
