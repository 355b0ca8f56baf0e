"""devtools: development and test tools, not part of the installed engine.

Not listed in ``pyproject.toml``'s packages, so ``pip install`` leaves it out; tests, benchmarks
and ``deploy/local/`` run from the repository root and import it from there
(``python -m devtools.services``).
"""
