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


def test_every_shipped_config_file_is_valid():
    """A typo in a shipped YAML key must fail here, not on a user's line."""
    from anomaly.config import CompareConfig

    for path in sorted(DEFAULT_YAML.parent.glob("*.yaml")):
        written = OmegaConf.to_container(OmegaConf.load(path))
        for schema in (FitConfig, CompareConfig):
            config = build_config(schema, path, [])
            for section, values in written.items():
                if isinstance(values, dict):
                    for key, value in values.items():
                        assert config[section][key] == value, (path.name, section, key)


def test_unknown_config_key_is_refused(tmp_path):
    import pytest

    from anomaly.errors import ConfigError

    file = tmp_path / "typo.yaml"
    file.write_text("baseline:\n  netwrok: resnet18\n")
    with pytest.raises(ConfigError, match="netwrok"):
        build_config(FitConfig, file, [])
