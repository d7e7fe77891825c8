"""The command line: clear one-line errors with exit status 2, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dicom_node.app.cli import main
from dicom_node.core.ledger import InstanceRecord, Ledger
from tests.conftest import free_port, old_ledger


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
    # `--config` sets DICOM_NODE_CONFIG for child processes; let monkeypatch undo it.
    monkeypatch.setenv("DICOM_NODE_CONFIG", "")
    assert main(["--config", "/nonexistent/node.yaml", "status"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_models_import_of_a_non_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DICOM_NODE_DATA_DIR", str(tmp_path))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert main(["models", "import", "xrv-densenet121-res224-all", str(junk)]) == 2
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


def test_models_of_an_unknown_id(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "verify", "no-such-model"]) == 2
    assert "unknown model 'no-such-model'" in capsys.readouterr().err


def test_status_of_an_old_ledger_says_how_to_upgrade_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DICOM_NODE_DATA_DIR", str(tmp_path))
    old_ledger(tmp_path)
    assert main(["status"]) == 2
    assert "dicom-node ledger upgrade" in capsys.readouterr().err
    assert main(["ledger", "upgrade"]) == 0
    assert "0001 -> 0004" in capsys.readouterr().out
    assert main(["status", "--json"]) == 0
    studies = {s["study_uid"]: s for s in json.loads(capsys.readouterr().out)}
    assert len(studies) == 5
    (analysis,) = studies["1.2.826.0.1.3680043.8.498.1"]["analyses"]
    assert analysis["reports"][0]["deliveries"][0]["state"] == "delivered"


def test_route_dry_run(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from pydicom.data import get_testdata_file

    (tmp_path / "notes.txt").write_text("not DICOM")
    files = [get_testdata_file(n) for n in ("RG1_UNCR.dcm", "RG3_UNCR.dcm", "MR_small.dcm")]
    assert main(["route", *map(str, files), str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "RUN  xrv-densenet121-res224-all" in out
    assert "RUN  mura-densenet169-abnormality" in out
    assert "SKIP" in out and "notes.txt" in out
    assert main(["route", str(tmp_path / "missing.dcm")]) == 2


def test_up_with_an_unknown_model_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DICOM_NODE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("DICOM_NODE_MODELS", "xrv-densenet121-res224-all,no-such-model")
    assert main(["up"]) == 2  # before Redis, the worker or the SCP start
    assert "unknown model 'no-such-model'" in capsys.readouterr().err


def test_exports_needs_one_selection_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DICOM_NODE_DATA_DIR", str(tmp_path))
    Ledger(f"sqlite:///{(tmp_path / 'ledger.sqlite').resolve()}")
    assert main(["exports", "list"]) == 0
    assert capsys.readouterr().out.strip() == "no dead letters"
    for argv in (["exports", "retry"], ["exports", "retry", "3", "--destination", "pacs"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "give delivery ids, --all or --destination NAME" in err
        assert "Traceback" not in err
    assert main(["exports", "drop", "7", "--yes"]) == 1  # no such dead letter
    with pytest.raises(SystemExit) as exc:
        main(["exports", "retry", "not-an-id"])
    assert exc.value.code == 2
