"""sevo_common: small helpers shared by ``graph_store``, ``engine`` and ``streaming``.

Imports nothing from those packages, so any of them may import it without breaking the
one-way layering ``streaming → engine → graph_store``.
"""

from .atomic import atomic_write_bytes

__all__ = ["atomic_write_bytes"]
