"""Does SEvo pull same-category items together? A number and a picture.

Reads the item matrices (``runs/*.items.npy``, written by ``reproduce_paper.py
--save-embeddings``) of an AdamW run and a SEvo run, and the dataset's item categories, then:

* **cohesion**: the mean cosine similarity (of centred embeddings) of item pairs that share a
  category ("within") against the mean over all item pairs ("overall"); computed exactly and
  vectorised: for a category c with member sum s_c of unit vectors, the sum over its ordered
  pairs is ‖s_c‖² − n_c;
* the same for the evolution E − E0 (the table minus its initial value, which both runs share);
* ``embeddings.png``: a 2-D t-SNE (PCA if scikit-learn is missing) of the items, coloured by their
  main category (the 8 most frequent categories; items in none of them are grey), AdamW | SEvo.

Usage::

    python benchmarks/embedding_structure.py --data ml-100k --runs benchmarks/results/ml-100k-sasrec
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.experiments import load_split  # noqa: E402
from engine.models import build_model  # noqa: E402


def cohesion(E: np.ndarray, categories: list[np.ndarray]) -> dict[str, float]:
    """Mean cosine within categories (pair-weighted) vs over all pairs; rows 1.. are items.

    Cosines are taken between centred embeddings.
    """
    items = np.arange(1, E.shape[0])
    # Centre first: every item shares a common direction (popularity), which would otherwise
    # dominate all cosines and hide the category structure.
    centred = E[items] - E[items].mean(axis=0)
    unit = centred / np.maximum(np.linalg.norm(centred, axis=1, keepdims=True), 1e-12)
    n = unit.shape[0]
    total = unit.sum(axis=0)
    overall = (total @ total - n) / (n * (n - 1))
    members: dict[int, list[int]] = {}
    for row, cats in enumerate(categories[1 : E.shape[0]]):
        for c in np.asarray(cats).tolist():
            members.setdefault(int(c), []).append(row)
    pair_sum, pair_count = 0.0, 0
    for rows in members.values():
        if len(rows) < 2:
            continue
        s = unit[rows].sum(axis=0)
        pair_sum += float(s @ s - len(rows))
        pair_count += len(rows) * (len(rows) - 1)
    within = pair_sum / pair_count if pair_count else float("nan")
    return {
        "within_category_cosine": float(within),
        "overall_cosine": float(overall),
        "gap": float(within - overall),
    }


def main_categories(categories: list[np.ndarray], num_rows: int, top: int = 8) -> np.ndarray:
    counts: dict[int, int] = {}
    for cats in categories[1:num_rows]:
        for c in np.asarray(cats).tolist():
            counts[c] = counts.get(c, 0) + 1
    frequent = [c for c, _ in sorted(counts.items(), key=lambda kv: -kv[1])[:top]]
    label = np.full(num_rows, -1)
    for row in range(1, num_rows):
        cats = set(np.asarray(categories[row]).tolist())
        for rank, c in enumerate(frequent):
            if c in cats:
                label[row] = rank
                break
    return label


def project(E: np.ndarray, seed: int = 0) -> np.ndarray:
    try:
        from sklearn.manifold import TSNE

        return TSNE(n_components=2, init="pca", random_state=seed, perplexity=30).fit_transform(E)
    except ImportError:
        centred = E - E.mean(axis=0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        return centred @ vt[:2].T


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="ml-100k")
    parser.add_argument("--runs", type=Path, required=True, help="a reproduce_paper.py --out dir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--graph", default="interactions", help="which SEvo run to compare")
    parser.add_argument(
        "--model", default="*", help="which model's runs (default: the only one in --runs)"
    )
    args = parser.parse_args(argv)
    _, split = load_split(args.data)
    if split.item_categories is None:
        raise SystemExit(f"{args.data} has no item categories")
    files = {
        "AdamW": next(
            (args.runs / "runs").glob(f"*_{args.model}_adamw_none_seed{args.seed}.items.npy"),
            None,
        ),
        "SEvo": next(
            (args.runs / "runs").glob(
                f"*_{args.model}_sevo-adamw_{args.graph}_seed{args.seed}.items.npy"
            ),
            None,
        ),
    }
    missing = [k for k, v in files.items() if v is None]
    if missing:
        raise SystemExit(f"no saved item matrix for {missing} in {args.runs}/runs")
    report = {"data": args.data, "model": args.model, "seed": args.seed, "graph": args.graph}
    suffix = "" if args.model == "*" else f"-{args.model}"
    mats = {k: np.load(v) for k, v in files.items()}
    # Both runs start from the same initial table (same seed), rebuilt here: the *evolution*
    # E − E0 is what SEvo smooths, and on short runs E is still mostly its random start.
    config = json.loads(
        files["SEvo"].with_name(files["SEvo"].name.replace(".items.npy", ".json")).read_text()
    )["config"]
    init = build_model(
        config["model"],
        num_items=split.num_items,
        num_users=split.num_users,
        seed=config["seed"],
        **config["model_overrides"],
    )
    E0 = init.item_output_weight().detach().numpy()
    for name, E in mats.items():
        report[name] = cohesion(E, split.item_categories)
        report[name]["evolution"] = cohesion(E - E0, split.item_categories)
    print(json.dumps(report, indent=1))
    out_json = args.runs / f"embedding_structure{suffix}.json"
    out_json.write_text(json.dumps(report, indent=1) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return 0
    label = main_categories(split.item_categories, next(iter(mats.values())).shape[0])
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.5))
    for ax, (name, E) in zip(axes, mats.items()):
        xy = project(E[1:], args.seed)
        lab = label[1:]
        ax.scatter(xy[lab < 0, 0], xy[lab < 0, 1], s=3, c="lightgrey")
        sc = ax.scatter(xy[lab >= 0, 0], xy[lab >= 0, 1], s=5, c=lab[lab >= 0], cmap="tab10")
        stats = report[name]
        ax.set_title(
            f"{name}: within-category cos {stats['within_category_cosine']:.3f}, "
            f"overall {stats['overall_cosine']:.3f}",
            fontsize=9,
        )
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(sc, ax=axes, label="main category (rank by frequency)")
    target = args.runs / f"embeddings{suffix}.png"
    fig.savefig(target, dpi=110)
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
