"""engine.config: torch-free settings and choice lists, shared by the trainers and the CLI."""

from __future__ import annotations

import subprocess
import sys

import pytest

from engine.config import MODEL_NAMES, OfflineConfig, OnlineConfig


def test_importing_the_config_module_does_not_import_torch():
    # A fresh interpreter: this test process has torch loaded already.
    code = (
        "import sys, engine.config\n"
        "heavy = sorted(m for m in ('torch', 'numpy', 'scipy') if m in sys.modules)\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert "torch" not in out.split(","), out


def test_the_trainer_modules_re_export_their_configs():
    import engine.models
    import engine.online
    import engine.train

    assert engine.online.OnlineConfig is OnlineConfig
    assert engine.train.OfflineConfig is OfflineConfig
    assert tuple(engine.models.MODELS) == MODEL_NAMES


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:0", "mps", "cpu:1"])
def test_offline_config_accepts_torch_device_names(device):
    assert OfflineConfig(device=device).device == device


@pytest.mark.parametrize("device", ["gpu0", "CPU", " cpu", "cuda:", "cuda:01", "cuda:-1", None])
def test_offline_config_rejects_malformed_device_names(device):
    with pytest.raises(ValueError, match="device must be a torch device"):
        OfflineConfig(device=device)
