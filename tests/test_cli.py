"""The command line: clear one-line errors with exit status 2, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicom_node.app.cli import main
from dicom_node.core.ledger import InstanceRecord, Ledger
from tests.conftest import free_port


def test_bad_setting_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DICOM_NODE_PACS", "not-a-peer")
    assert main(["status"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dicom-node: error:") and "AE@host:port" in err
    assert "Traceback" not in err


def test_echo_to_nobody_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["echo", f"NOBODY@127.0.0.1:{free_port()}"]) == 2
    assert "no association with NOBODY@127.0.0.1" in capsys.readouterr().err


def test_missing_config_file(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--config", "/nonexistent/node.yaml", "status"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_models_import_of_a_non_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DICOM_NODE_DATA_DIR", str(tmp_path))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert main(["models", "import", str(junk)]) == 2
    assert "not a readable torch checkpoint" in capsys.readouterr().err


def test_status_lists_studies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DICOM_NODE_DATA_DIR", str(tmp_path))
    ledger = Ledger(f"sqlite:///{(tmp_path / 'ledger.sqlite').resolve()}")
    ledger.record_instance(
        InstanceRecord(
            "1.2.3",
            None,
            "1.2.3.4",
            "1.2.840.10008.5.1.4.1.1.1",
            "1.2.840.10008.1.2.1",
            "/x",
            "MOD",
        )
    )
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert "1.2.3 " in out and "receiving" in out
