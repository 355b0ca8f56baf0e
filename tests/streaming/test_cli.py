"""The sevo entry point runs in-process."""

from __future__ import annotations

import json

import pytest

from streaming.cli import main


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "version" in capsys.readouterr().out


def test_version_json(capsys):
    assert main(["version", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert {"sevo-engine", "torch", "numpy", "scipy", "python"} <= set(info)


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "usage: sevo" in capsys.readouterr().out
