"""engine.presets: the SEvo authors' per-model settings as named, sourced presets."""

from __future__ import annotations

import subprocess
import sys

import pytest

from engine.config import MODEL_NAMES, OfflineConfig
from engine.presets import PRESETS, Preset, preset_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_builds_a_valid_config_and_model(name):
    from engine.models import build_model
    from engine.train import model_kwargs

    preset = PRESETS[name]
    assert preset.name == name and preset.model in MODEL_NAMES
    assert name.startswith(preset.model + "-") and name.endswith(preset.data)
    assert "MTandHJ/SEvo" in preset.source
    config = preset_config(name)
    assert isinstance(config, OfflineConfig) and config.model == preset.model
    for field, value in preset.config.items():
        assert getattr(config, field) == value, field
    assert dict(config.model_overrides) == dict(preset.model_overrides)
    model = build_model(config.model, num_items=20, num_users=10, **model_kwargs(config))
    for field, value in preset.model_overrides.items():
        assert getattr(model.config, field) == value, field
    if "maxlen" in model.config.__dataclass_fields__:
        assert model.config.maxlen == config.maxlen


def test_the_authors_beauty_values():
    """Spot checks against the YAML files (engine/presets.py names them)."""
    bert = preset_config("bert4rec-beauty")
    assert (bert.lr, bert.betas, bert.batch_size, bert.epochs) == (5e-4, (0.9, 0.95), 256, 500)
    assert bert.model_overrides["mask_prob"] == 0.5 and bert.model_overrides["num_heads"] == 4
    stosa = preset_config("stosa-beauty")
    assert (stosa.maxlen, stosa.betas, stosa.epochs) == (100, (0.9, 0.999), 500)
    assert stosa.model_overrides["pvn_weight"] == 0.005
    assert preset_config("gru4rec-beauty").model_overrides["dropout"] == 0.4
    assert preset_config("mf-beauty").sevo_beta == 0.9  # the item-item file's beta3
    assert preset_config("mf-bipartite-beauty").model_overrides["bipartite"] is True
    assert preset_config("sasrec-beauty") == OfflineConfig(
        model_overrides={"dim": 64, "num_blocks": 2, "num_heads": 1, "dropout": 0.3}
    )  # OfflineConfig's defaults are the SASRec Beauty settings


def test_given_values_override_the_preset_and_model_overrides_merge():
    config = preset_config(
        "bert4rec-beauty", {"lr": 2e-3, "epochs": 3, "model_overrides": {"dropout": 0.1}}
    )
    assert (config.lr, config.epochs, config.betas) == (2e-3, 3, (0.9, 0.95))
    assert config.model_overrides == {
        "dim": 64,
        "num_blocks": 2,
        "num_heads": 4,
        "dropout": 0.1,
        "mask_prob": 0.5,
    }
    assert preset_config(None, {"lr": 3e-3}) == OfflineConfig(lr=3e-3)
    assert PRESETS["stosa-beauty"].offline_config(epochs=2).epochs == 2
    with pytest.raises(KeyError, match="unknown preset 'nope'"):
        preset_config("nope")
    with pytest.raises(ValueError, match="is for model 'stosa', not 'sasrec'"):
        preset_config("stosa-beauty", {"model": "sasrec"})
    with pytest.raises(ValueError, match="betas"):
        preset_config("stosa-beauty", {"betas": (0.9, 1.5)})
    with pytest.raises(ValueError, match="unknown OfflineConfig field"):
        Preset("x-y", "sasrec", "y", {"learning_rate": 1.0}, {}, "here")
    with pytest.raises(TypeError):
        PRESETS["sasrec-beauty"].config["lr"] = 1.0  # read-only


def test_importing_presets_does_not_import_torch():
    code = "import sys, engine.presets\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
