"""graph_store: the live item–item graph (raw weights, degrees, forward decay, snapshots).

Knows nothing of models, Kafka or Redis.
"""

from .builders import (
    category_edges,
    combine_edges,
    graph_from_categories,
    graph_from_embeddings,
    graph_from_sequences,
    knn_edges,
    sequence_edges,
)
from .graph import GraphSnapshot, ItemGraph

__all__ = [
    "GraphSnapshot",
    "ItemGraph",
    "category_edges",
    "combine_edges",
    "graph_from_categories",
    "graph_from_embeddings",
    "graph_from_sequences",
    "knn_edges",
    "sequence_edges",
]
