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
            named |= set(re.findall(r"DICOM_NODE_[A-Z0-9_]+", path.read_text()))
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


def env_file_lines(text: str, commented: bool = False) -> dict[str, str]:
    """``KEY=VALUE`` lines of an env file; ``commented``: also ``# DICOM_NODE_...=`` examples."""
    pattern = (
        r"^#\s*(DICOM_NODE_[A-Z0-9_]+)=(.*)$" if commented else r"^(DICOM_NODE_[A-Z0-9_]+)=(.*)$"
    )
    return {m[1]: m[2] for m in re.finditer(pattern, text, flags=re.MULTILINE)}


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


def test_node_env_and_the_gpu_worker_settings_are_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    from models.priority import parse_stat_rules

    node_env = env_file_lines((DEPLOY / "node.env").read_text())
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    worker_env = {k: str(v) for k, v in compose["services"]["worker"]["environment"].items()}
    assert {
        "DICOM_NODE_WORKER_CONCURRENCY",
        "DICOM_NODE_INFERENCE_BACKEND",
        "DICOM_NODE_INFERENCE_PRECISION",
    } <= set(worker_env)
    settings = settings_from({**node_env, **worker_env}, monkeypatch)
    assert settings.worker_concurrency == int(worker_env["DICOM_NODE_WORKER_CONCURRENCY"])
    assert settings.inference_backend == worker_env["DICOM_NODE_INFERENCE_BACKEND"]
    assert settings.models_dir == Path(node_env["DICOM_NODE_MODELS_DIR"])
    # The STAT rule example in node.env's comments is valid as written.
    example = env_file_lines((DEPLOY / "node.env").read_text(), commented=True)
    assert "DICOM_NODE_STAT_RULES" in example
    stat = settings_from(example, monkeypatch)
    assert len(parse_stat_rules(stat.stat_rules)) == 2


def test_gpu_services_reserve_a_gpu_and_share_the_engine_cache() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    models_dir = env_file_lines((DEPLOY / "node.env").read_text())["DICOM_NODE_MODELS_DIR"]
    assert "models" in compose["volumes"]
    for name in ("worker", "models-build"):
        (device,) = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert "gpu" in device["capabilities"] and device["driver"] == "nvidia"
        assert f"models:{models_dir}" in services[name]["volumes"], name
    assert services["models-build"]["command"] == ["models", "build"]
    assert services["models-build"]["profiles"] == ["tools"]  # not started by `up`


def test_worker_unit_is_one_process_per_gpu() -> None:
    text = (DEPLOY / "systemd" / "dicom-node-worker@.service").read_text()
    assert "Environment=CUDA_VISIBLE_DEVICES=%i" in text.splitlines()
    (start,) = [line for line in text.splitlines() if line.startswith("ExecStart=")]
    # Concurrency comes from DICOM_NODE_WORKER_CONCURRENCY (node.env), not the command line.
    assert start.endswith("dicom-node worker")
    assert re.search(r"^ExecStartPre=-\S+ models build$", text, flags=re.MULTILINE)


def test_node_env_documents_destinations_and_dead_letters(monkeypatch: pytest.MonkeyPatch) -> None:
    from workers.destinations.select import parse_routes

    text = (DEPLOY / "node.env").read_text()
    node_env = env_file_lines(text)
    settings = settings_from(node_env, monkeypatch)
    assert settings.delivery_max_attempts == int(node_env["DICOM_NODE_DELIVERY_MAX_ATTEMPTS"])
    assert settings.delivery_retry_max_seconds < 4 * 3600  # the workers' visibility timeout
    # The destinations example in the comments is valid as written: every kind, profiles
    # the workers know, rules they can parse, storage commitment.
    example = env_file_lines(text, commented=True)
    monkeypatch.setenv("DICOM_NODE_DESTINATIONS", example["DICOM_NODE_DESTINATIONS"])
    routes = parse_routes(Settings().report_destinations)
    assert [(r.destination.kind, len(r.rules)) for r in routes] == [
        ("c_store", 0),
        ("stow_rs", 2),
        ("outbox", 0),
    ]
    assert routes[0].destination.storage_commitment
    assert {p for r in routes for p in r.destination.profiles} == {
        "tid1500",
        "text_sr",
        "key_image",
        "pdf",
    }
