from pathlib import Path

import pytest

from dicom_node.core.errors import ConfigError
from dicom_node.core.settings import CONFIG_ENV, Peer, load_settings


def test_defaults_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DICOM_NODE_AE_TITLE", "AI_NODE")
    monkeypatch.setenv("DICOM_NODE_PACS", "PACS@10.0.0.5:104")
    settings = load_settings()
    assert settings.port == 11112
    assert settings.study_quiet_seconds == 10
    assert settings.ae_title == "AI_NODE"
    assert settings.pacs_peer == Peer("PACS", "10.0.0.5", 104)
    assert not settings.allow_demo_weights


def test_yaml_overlay_loses_to_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "node.yaml"
    config.write_text("port: 4242\nae_title: FROM_YAML\nstudy_quiet_seconds: 3\n")
    monkeypatch.setenv(CONFIG_ENV, str(config))
    monkeypatch.setenv("DICOM_NODE_PORT", "5555")
    settings = load_settings()
    assert settings.port == 5555
    assert settings.ae_title == "FROM_YAML"
    assert settings.study_quiet_seconds == 3


@pytest.mark.parametrize("bad", ["PACS@host", "@host:104", "A" * 17 + "@h:104", "PACS@h:99999"])
def test_bad_peer_is_a_config_error(bad: str) -> None:
    with pytest.raises(ConfigError):
        Peer.parse(bad)


def test_bad_env_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DICOM_NODE_PORT", "not-a-port")
    with pytest.raises(ConfigError, match="DICOM_NODE_PORT"):
        load_settings()
