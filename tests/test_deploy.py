"""The deploy/ files, checked with what runs here (no Docker engine on this machine)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dicom_node.core.settings import Settings

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
SETTINGS = {f"DICOM_NODE_{name.upper()}" for name in Settings.model_fields} | {"DICOM_NODE_CONFIG"}


def test_every_setting_named_in_deploy_files_exists() -> None:
    named = set()
    for path in DEPLOY.rglob("*"):
        if path.is_file():
            named |= set(re.findall(r"DICOM_NODE_[A-Z_]+", path.read_text()))
    assert named, "deploy files name no settings"
    assert named <= SETTINGS, sorted(named - SETTINGS)


def test_compose_file_is_consistent() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"redis", "scp", "worker"} <= set(services)
    for name in ("scp", "worker"):
        assert services[name]["command"][0] in ("scp", "worker")
        assert "data:/var/lib/dicom-node" in services[name]["volumes"]  # shared spool
        for env_file in services[name].get("env_file", []):
            assert (DEPLOY / env_file).is_file()
    for dependency in services["scp"]["depends_on"]:
        assert dependency in services
    assert set(compose["volumes"]) >= {"data", "redis"}


@pytest.mark.parametrize("unit", sorted(p.name for p in (DEPLOY / "systemd").glob("*.service")))
def test_systemd_unit_verifies(unit: str, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    text = (DEPLOY / "systemd" / unit).read_text()
    # Point ExecStart at this checkout's interpreter so verify can check the binary.
    text = text.replace(
        "/opt/dicom-node/.venv/bin/dicom-node", f"{sys.executable} -m dicom_node.app.cli"
    )
    target = tmp_path / unit.replace("@.service", "@0.service")
    target.write_text(text)
    out = subprocess.run([analyze, "verify", str(target)], capture_output=True, text=True)
    # verify exits 0 on unknown keys and bad values; it reports them on stderr by file name.
    problems = [
        line
        for line in (out.stdout + out.stderr).splitlines()
        if target.name in line and "EnvironmentFile" not in line
    ]
    assert out.returncode == 0 and not problems, out.stdout + out.stderr
