"""Settings, declared in one place with types and defaults.

Values come from environment variables prefixed ``DICOM_NODE_``, overlaid on an
optional YAML file named by ``DICOM_NODE_CONFIG`` (environment wins), overlaid
on the defaults below.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from dicom_node.core.destinations import Destination, check_unique, default_destinations
from dicom_node.core.errors import ConfigError
from dicom_node.core.peer import Peer, validate_ae_title

__all__ = ["CONFIG_ENV", "Destination", "Peer", "Settings", "load_settings", "validate_ae_title"]

CONFIG_ENV = "DICOM_NODE_CONFIG"

class Settings(BaseSettings):
    """Every setting of the node, workers and CLI.

    Attributes are read from ``DICOM_NODE_<NAME>`` environment variables.
    """

    model_config = SettingsConfigDict(env_prefix="DICOM_NODE_", extra="forbid")

    data_dir: Path = Field(Path("data"), description="Spool, ledger, reports, outbox, models.")
    ae_title: str = Field("DICOM_NODE", description="Our AE title (SCP and SCU).")
    host: str = Field("0.0.0.0", description="Address the SCP binds to.")
    port: int = Field(11112, ge=1, le=65535, description="TCP port of the SCP.")
    broker_url: str | None = Field(
        None, description="Redis URL for Celery. Unset: `up` starts an embedded Redis server."
    )
    pacs: str | None = Field(
        None, description="Legacy single report destination, AE@host:port (C-STORE, TID 1500)."
    )
    destinations: list[Destination] = Field(
        default_factory=list,
        description="Report destinations (JSON list; see dicom_node.core.destinations). "
        "Empty: the PACS if DICOM_NODE_PACS is set, else the outbox.",
    )
    study_quiet_seconds: float = Field(
        10.0, gt=0, description="A study is complete after this many seconds without an instance."
    )
    allow_demo_weights: bool = Field(
        False,
        description="Allow seeded random (untrained) weights when no real ones are installed.",
    )
    models: str = Field(
        "",
        description="Comma-separated manifest ids to serve; empty: all shipped and site manifests.",
    )
    models_dir: Path | None = Field(
        None, description="Weights and engines. Default: data_dir/models."
    )
    ledger_url: str | None = Field(None, description="SQLAlchemy URL. Default: SQLite in data_dir.")
    # Inference (GPU workers; see models.backends and workers.batching)
    inference_backend: Literal["auto", "tensorrt", "torch", "onnxruntime"] = Field(
        "auto",
        description="auto: TensorRT, then PyTorch CUDA, then ONNX Runtime on a GPU; "
        "ONNX Runtime on the CPU.",
    )
    inference_precision: Literal["auto", "fp32", "fp16", "bf16", "int8"] = Field(
        "auto", description="auto: fp16 on a GPU, fp32 on the CPU. int8: TensorRT only."
    )
    inference_device: Literal["auto", "cuda", "cpu"] = Field(
        "auto", description="auto: CUDA when torch or onnxruntime sees a GPU."
    )
    inference_threads: int = Field(
        0, ge=0, description="CPU threads of a CPU backend; 0: the cores this process may use."
    )
    torch_compile: bool = Field(
        True, description="torch.compile with CUDA graphs per batch size on a GPU (torch backend)."
    )
    worker_concurrency: int = Field(
        4,
        ge=1,
        le=256,
        description="Analyses one worker process runs at once (Celery threads pool); their "
        "images share one batcher per model.",
    )
    preprocess_workers: int = Field(
        0, ge=0, description="Threads that decode and preprocess images; 0: the cores."
    )
    batch_max_size: int = Field(
        0, ge=0, description="Override every manifest's serving.max_batch; 0: the manifest's."
    )
    batch_max_delay_ms: float = Field(
        -1.0,
        description="Override every manifest's serving.max_delay_ms; negative: the manifest's.",
    )
    engine_workspace_mb: int = Field(
        4096, ge=64, description="TensorRT builder workspace limit, MiB."
    )
    int8_calibration_dir: Path | None = Field(
        None, description="Folder of DICOM images that calibrates INT8 TensorRT engines."
    )
    stat_rules: list[dict[str, Any]] = Field(
        default_factory=lambda: [
            {"attributes": {"RequestedProcedurePriority": "^STAT$"}},
            {"attributes": {"StudyPriorityID": "^STAT$"}},
        ],
        description="A study is STAT when any of its images matches any rule (the routing rule "
        "form: calling_aes, modalities, study_description, attributes ...). JSON in the "
        "environment. A manifest's serving.priority: stat makes all its studies STAT.",
    )
    delivery_retry_base_seconds: float = Field(5.0, gt=0, description="First C-STORE retry delay.")
    delivery_retry_max_seconds: float = Field(600.0, gt=0, description="Cap of the retry delay.")
    delivery_max_attempts: int = Field(
        30,
        ge=1,
        description="Attempts of one delivery before it becomes a dead letter "
        "(dicom-node exports); with the defaults about 4 hours.",
    )
    acse_timeout: float = Field(
        30.0,
        gt=0,
        description="Seconds a connection may take to complete association negotiation; "
        "a peer that has not by then is dropped.",
    )
    dimse_timeout: float = Field(60.0, gt=0, description="DIMSE message timeout, seconds.")
    network_timeout: float = Field(
        60.0,
        gt=0,
        description="Seconds a peer may stay silent, mid-PDU included, before the "
        "association is dropped.",
    )
    # Who may connect (PS3.8 7.1.1; PS3.15 Annex B)
    calling_aes: str = Field(
        "",
        description="Comma-separated allowlist of calling AE titles, each optionally AE@host "
        "(the peer's IP address or host name). Empty: any calling AE.",
    )
    require_called_ae: bool = Field(
        True, description="Reject associations whose called AE title is not ours."
    )
    tls: bool = Field(False, description="Serve DICOM TLS (PS3.15 Annex B, BCP 195) only.")
    tls_certificate: Path | None = Field(None, description="Server certificate chain, PEM.")
    tls_private_key: Path | None = Field(None, description="Server private key, PEM.")
    tls_client_ca: Path | None = Field(
        None, description="CA bundle (PEM) that client certificates must chain to."
    )
    tls_verify_client: bool = Field(
        False, description="Require and verify a client certificate (needs tls_client_ca)."
    )
    # Limits
    max_associations: int = Field(32, ge=1, description="Concurrent associations per SCP process.")
    max_associations_per_host: int = Field(
        8, ge=1, description="Concurrent connections from one peer address per SCP process."
    )
    max_pdu_size: int = Field(
        1_048_576,
        ge=4096,
        le=64 * 1_048_576,
        description="Largest P-DATA PDU we accept, bytes (advertised in A-ASSOCIATE-AC). "
        "A PDU header claiming more aborts the association.",
    )
    scp_processes: int = Field(
        1, ge=1, le=64, description="SCP processes sharing the port (SO_REUSEPORT)."
    )
    # Backpressure (answered as 0xA700 Out of Resources)
    min_free_disk_mb: float = Field(
        256.0, ge=0, description="Refuse C-STORE when the spool's file system has less free."
    )
    spool_quota_mb: float = Field(
        0.0, ge=0, description="Refuse C-STORE when the spool holds more; 0: no quota."
    )
    max_pending_studies: int = Field(
        0,
        ge=0,
        description="Refuse C-STORE of new studies while this many studies wait for the "
        "workers (queued or with unfinished analyses); 0: no limit.",
    )
    # Recovery
    analysis_stall_seconds: float = Field(
        300.0,
        gt=0,
        description="An analysis `running` this long, whose task no live worker holds, is "
        "published again.",
    )
    analysis_max_requeues: int = Field(
        3, ge=0, description="After this many re-publications an analysis is marked failed."
    )
    log_level: str = "INFO"

    @field_validator("ae_title")
    @classmethod
    def _check_ae(cls, value: str) -> str:
        return validate_ae_title(value)

    @field_validator("calling_aes")
    @classmethod
    def _check_calling_aes(cls, value: str) -> str:
        for part in value.split(","):
            if part.strip():
                validate_ae_title(part.strip().partition("@")[0])
        return value

    @model_validator(mode="after")
    def _check_tls(self) -> Settings:
        if self.tls and not (self.tls_certificate and self.tls_private_key):
            raise ConfigError(
                "DICOM_NODE_TLS needs DICOM_NODE_TLS_CERTIFICATE and DICOM_NODE_TLS_PRIVATE_KEY"
            )
        if self.tls_verify_client and not self.tls_client_ca:
            raise ConfigError("DICOM_NODE_TLS_VERIFY_CLIENT needs DICOM_NODE_TLS_CLIENT_CA")
        return self

    @field_validator("pacs")
    @classmethod
    def _check_pacs(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        Peer.parse(value)
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Order the sources: init kwargs, environment, YAML overlay."""
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        yaml_file = os.environ.get(CONFIG_ENV)
        if yaml_file:
            if not Path(yaml_file).is_file():
                raise ConfigError(f"{CONFIG_ENV}={yaml_file}: no such file")
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=yaml_file))
        return tuple(sources)

    def to_env(self) -> dict[str, str]:
        """These settings as ``DICOM_NODE_*`` variables, for child processes."""
        env: dict[str, str] = {}
        for name, value in self.model_dump(mode="json").items():
            if value is None:
                continue
            if isinstance(value, bool):
                value = int(value)
            text = json.dumps(value) if isinstance(value, list | dict) else str(value)
            env[f"DICOM_NODE_{name.upper()}"] = text
        return env

    @property
    def calling_ae_allowlist(self) -> list[tuple[str, str | None]]:
        """``DICOM_NODE_CALLING_AES`` parsed into (AE title, host or None) pairs.

        Raises
        ------
        ConfigError
            If an entry is not ``AE`` or ``AE@host``, or its AE title is invalid.
        """
        entries: list[tuple[str, str | None]] = []
        for part in self.calling_aes.split(","):
            if not part.strip():
                continue
            ae, sep, host = part.strip().partition("@")
            if sep and not host.strip():
                raise ConfigError(f"invalid calling AE entry {part.strip()!r}: expected AE@host")
            entries.append((validate_ae_title(ae), host.strip() or None))
        return entries

    @property
    def pacs_peer(self) -> Peer | None:
        """The PACS as a :class:`Peer`, or None when reports go to the outbox."""
        return Peer.parse(self.pacs) if self.pacs else None

    @property
    def enabled_models(self) -> list[str] | None:
        """Manifest ids named by ``DICOM_NODE_MODELS``, or None for all of them."""
        ids = [part.strip() for part in self.models.split(",") if part.strip()]
        return ids or None

    @property
    def report_destinations(self) -> list[Destination]:
        """Where reports go: ``destinations``, else the PACS, else the outbox.

        Raises
        ------
        ConfigError
            If two destinations share a name.
        """
        return check_unique(list(self.destinations) or default_destinations(self.pacs))

    def destination(self, name: str) -> Destination:
        """The report destination called ``name``.

        Raises
        ------
        ConfigError
            If no destination has that name (it was removed from the settings).
        """
        for destination in self.report_destinations:
            if destination.name == name:
                return destination
        raise ConfigError(f"no report destination named {name!r} is configured")

    @property
    def resolved_models_dir(self) -> Path:
        """Directory of converted weights and built engines."""
        return self.models_dir or self.data_dir / "models"

    @property
    def resolved_ledger_url(self) -> str:
        """SQLAlchemy URL of the ledger."""
        return self.ledger_url or f"sqlite:///{(self.data_dir / 'ledger.sqlite').resolve()}"


def load_settings(**overrides: object) -> Settings:
    """Build :class:`Settings` from the environment and the YAML overlay.

    Raises
    ------
    ConfigError
        If a value is invalid; the message names the setting.
    """
    from pydantic import ValidationError

    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(
            f"DICOM_NODE_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(problems) from None
