"""The project's one exception tree.

Every error this project raises on purpose derives from :class:`DicomNodeError`,
so callers at a boundary (a DIMSE handler, a Celery task, the CLI) can catch the
whole family in one place and turn it into a DIMSE status, a ledger reason or a
CLI message.

::

    DicomNodeError
    ├── ConfigError                 settings or a peer address are invalid
    ├── InvalidInstanceError        a received data set is truncated, undecodable, or its
    │                               identifying UIDs are missing or malformed: 0xC000
    ├── SpoolError                  an instance could not be made durable
    │   └── DiskFullError           ENOSPC / EDQUOT: answered as 0xA700
    ├── LedgerError                 the study ledger could not be read or written
    ├── EnqueueError                the broker did not take a study's task
    ├── PixelDataError              pixel data cannot be decoded or is unsupported
    ├── ModelError                  anything about a model
    │   ├── ManifestError           a model manifest is missing or invalid
    │   ├── WeightsError            weights cannot be used
    │   │   ├── WeightsUnavailableError   none imported and demo weights not allowed
    │   │   ├── WeightsIntegrityError     sha256 or tensor layout does not match
    │   │   └── UnsafePickleError         a checkpoint references a forbidden global
    │   ├── InputContractError      a batch does not fit the manifest's input contract
    │   ├── RoutingError            routing could not be evaluated (not raised for odd headers)
    │   └── InferenceError          a backend failed to run
    │       ├── BackendUnavailableError   its library or device is absent here: fall back
    │       └── EngineError               an engine cannot be built, or was built for
    │                                     another GPU, TensorRT version or model
    ├── ReportError                 a report (SR, SC, KOS, PDF) could not be built
    ├── DeliveryError               a destination refused a report (0xA7xx) or could not be
    │   │                           reached (connection, association, timeout): retried
    │   └── PermanentDeliveryError  a destination answered an error (0xA9xx, 0xCxxx, HTTP
    │                               4xx): no retry, straight to the dead letter
    └── ServiceError                an embedded service (Redis, worker) failed
"""

from __future__ import annotations


class DicomNodeError(Exception):
    """Base class of every error raised by this project."""


class ConfigError(DicomNodeError):
    """Settings, a YAML overlay or a peer address are invalid."""


class InvalidInstanceError(DicomNodeError):
    """A received data set is truncated or undecodable, or a UID it is filed under is invalid.

    The message names attribute keywords, never values.
    """


class SpoolError(DicomNodeError):
    """A received instance could not be written durably to the spool."""


class DiskFullError(SpoolError):
    """The spool's file system is full (ENOSPC or EDQUOT)."""


class LedgerError(DicomNodeError):
    """The study ledger could not be read or written."""


class EnqueueError(DicomNodeError):
    """The broker did not accept a study's task (for example, Redis is down)."""


class PixelDataError(DicomNodeError):
    """Pixel data cannot be decoded, or its photometric interpretation is unsupported."""


class ModelError(DicomNodeError):
    """Base class of model errors."""


class ManifestError(ModelError):
    """A model manifest is missing or does not validate."""


class WeightsError(ModelError):
    """Model weights cannot be used."""


class WeightsUnavailableError(WeightsError):
    """No real weights are installed and demo weights are not allowed."""


class WeightsIntegrityError(WeightsError):
    """Weights do not match their pinned sha256 or the model's tensor layout."""


class UnsafePickleError(WeightsError):
    """A pickled checkpoint references a global outside the allowlist."""


class InputContractError(ModelError):
    """A batch's shape, layout, dtype or value range differs from the manifest's input."""


class RoutingError(ModelError):
    """Routing could not be evaluated (a bad rule); odd headers are rejections, not errors."""


class InferenceError(ModelError):
    """An inference backend failed to run."""


class BackendUnavailableError(InferenceError):
    """A backend cannot run here: its library (TensorRT, CUDA) or device is absent.

    ``auto`` backend selection moves on to the next backend; an explicitly
    requested backend reports it as the reason.
    """


class EngineError(InferenceError):
    """An engine cannot be built, or a cached one does not fit this host.

    Raised for a parser or builder failure (every parser error is in the text)
    and for an engine whose key (GPU name, compute capability, TensorRT
    version, model hash, precision) differs from the one this host would build.
    """


class ReportError(DicomNodeError):
    """A report (SR, Secondary Capture, Key Object Selection, PDF) could not be built."""


class DeliveryError(DicomNodeError):
    """A destination refused a report or could not be reached; the delivery is retried.

    Parameters
    ----------
    message : str
        What happened, without patient data.
    status : int or None
        The DIMSE status (or the status a DICOMweb answer maps to), when there was one.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class PermanentDeliveryError(DeliveryError):
    """A destination answered with an error status: retrying cannot help (dead letter)."""


class ServiceError(DicomNodeError):
    """An embedded service (Redis server, Celery worker) failed to start or died."""
