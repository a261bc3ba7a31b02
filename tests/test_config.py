"""Configuration: the documented YAML matches the structured defaults; flags are keys."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from anomaly.config import FitConfig, build_config

DEFAULT_YAML = Path(__file__).resolve().parents[1] / "configs" / "default.yaml"


def test_default_yaml_documents_exactly_the_structured_defaults():
    documented = OmegaConf.to_container(OmegaConf.load(DEFAULT_YAML))
    defaults = OmegaConf.to_container(OmegaConf.structured(FitConfig))
    assert documented == defaults


def test_later_sources_win(tmp_path):
    file = tmp_path / "c.yaml"
    file.write_text("image_size: 320\ndata:\n  category: elpv\n")
    config = build_config(FitConfig, file, ["image_size=224"], **{"data.category": "sealant"})
    assert config.image_size == 224 and config.data.category == "sealant"
