"""The model registry: manifests by id, and factories by key (architectures, backends).

One :class:`ModelRegistry` object holds what this node knows; nothing is
registered at import time and there is no module-global table (unlike MONAI
Deploy's model registry). :meth:`ModelRegistry.load` reads the manifests shipped
in ``models/manifests/`` and a site's own ``<models_dir>/manifests/*.yaml``, so
a site adds a model without touching code.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeVar

from dicom_node.core.errors import ManifestError
from models.architectures import Architecture, builtin_architectures
from models.manifest import MANIFEST_DIR, Manifest, load_manifest

if TYPE_CHECKING:
    from models.backends import BackendLoader

log = logging.getLogger(__name__)

T = TypeVar("T")


class Factories(Generic[T]):
    """A table of factories by key (one kind: architectures or backends).

    Parameters
    ----------
    kind : str
        What the factories make, for error texts ("architecture", "backend").
    entries : mapping of str to T, optional
        Initial entries (copied).
    """

    def __init__(self, kind: str, entries: Mapping[str, T] | None = None) -> None:
        self.kind = kind
        self._entries: dict[str, T] = dict(entries or {})

    def register(self, key: str, factory: T) -> None:
        """Add a factory.

        Raises
        ------
        ValueError
            If the key is already registered.
        """
        if key in self._entries:
            raise ValueError(f"{self.kind} {key!r} is already registered")
        self._entries[key] = factory

    def get(self, key: str) -> T:
        """The factory for a key.

        Raises
        ------
        ManifestError
            If no factory has that key (the text lists the known keys).
        """
        try:
            return self._entries[key]
        except KeyError:
            raise ManifestError(
                f"unknown {self.kind} {key!r}; known: {sorted(self._entries)}"
            ) from None

    def keys(self) -> list[str]:
        """Registered keys, sorted."""
        return sorted(self._entries)

    def as_dict(self) -> dict[str, T]:
        """A copy of the table."""
        return dict(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())


class ModelRegistry:
    """The manifests known to this node, by id, with the factories they name.

    Parameters
    ----------
    manifests : iterable of Manifest or (Manifest, source) pairs
        Manifests to hold; ``source`` (a file name) is quoted in errors.
    architectures : mapping of str to Architecture, optional
        Architecture table (default: :func:`models.architectures.builtin_architectures`).
    backends : mapping of str to BackendLoader, optional
        Backend table (default: :func:`models.backends.builtin_backends`, made on first use).

    Raises
    ------
    ManifestError
        On a duplicate id, an unknown architecture key, or architecture
        parameters that do not fit.
    """

    def __init__(
        self,
        manifests: Iterable[Manifest | tuple[Manifest, str]],
        architectures: Mapping[str, Architecture] | None = None,
        backends: Mapping[str, BackendLoader] | None = None,
    ) -> None:
        self.architectures: Factories[Architecture] = Factories(
            "architecture", builtin_architectures() if architectures is None else architectures
        )
        self._backends: Factories[BackendLoader] | None = (
            None if backends is None else Factories("backend", backends)
        )
        self._by_id: dict[str, Manifest] = {}
        self._sources: dict[str, str] = {}
        for item in manifests:
            manifest, source = item if isinstance(item, tuple) else (item, "<memory>")
            if manifest.id in self._by_id:
                raise ManifestError(
                    f"duplicate model id {manifest.id!r} in {source} "
                    f"(already defined by {self._sources[manifest.id]})"
                )
            if manifest.architecture is not None:
                self.architectures.get(manifest.architecture).check(manifest)
            self._by_id[manifest.id] = manifest
            self._sources[manifest.id] = source

    @classmethod
    def load(
        cls,
        user_dir: Path | None = None,
        packaged_dir: Path = MANIFEST_DIR,
        architectures: Mapping[str, Architecture] | None = None,
        backends: Mapping[str, BackendLoader] | None = None,
    ) -> ModelRegistry:
        """Read the packaged manifests and a site's own.

        Parameters
        ----------
        user_dir : Path, optional
            ``<models_dir>/manifests``; ``*.yaml`` files there are added. A
            missing directory is fine (no site models).
        packaged_dir : Path
            The shipped manifests (default ``models/manifests``).
        architectures, backends : mapping, optional
            Factory tables (default: the built-in ones).

        Returns
        -------
        ModelRegistry

        Raises
        ------
        ManifestError
            If a file does not validate (naming it and the field), or a site
            manifest reuses an id (a site cannot silently replace a shipped model).
        """
        paths = sorted(packaged_dir.glob("*.yaml"))
        if user_dir is not None and user_dir.is_dir():
            paths += sorted(user_dir.glob("*.yaml"))
        registry = cls(((load_manifest(p), str(p)) for p in paths), architectures, backends)
        log.debug("model registry: %s", ", ".join(registry.ids()))
        return registry

    @property
    def backends(self) -> Factories[BackendLoader]:
        """Backend loaders by key ("onnxruntime", "torch"); built on first use."""
        if self._backends is None:
            from models.backends import builtin_backends

            self._backends = Factories("backend", builtin_backends())
        return self._backends

    def get(self, model_id: str) -> Manifest:
        """Return a manifest by id.

        Raises
        ------
        ManifestError
            If no manifest has that id.
        """
        try:
            return self._by_id[model_id]
        except KeyError:
            raise ManifestError(
                f"unknown model {model_id!r}; known: {sorted(self._by_id)}"
            ) from None

    def ids(self) -> list[str]:
        """Known model ids, sorted."""
        return sorted(self._by_id)

    def manifests(self) -> list[Manifest]:
        """Known manifests, sorted by id."""
        return [self._by_id[i] for i in self.ids()]

    def source(self, model_id: str) -> str:
        """The file a manifest was read from ("<memory>" if given directly)."""
        self.get(model_id)
        return self._sources[model_id]

    def select(self, enabled: Iterable[str] | None) -> list[Manifest]:
        """Manifests to consider: all, or the enabled ids (unknown ids raise).

        Raises
        ------
        ManifestError
            If an enabled id is unknown.
        """
        if enabled is None:
            return self.manifests()
        return [self.get(model_id) for model_id in sorted(set(enabled))]

    def __contains__(self, model_id: object) -> bool:
        return model_id in self._by_id

    def __len__(self) -> int:
        return len(self._by_id)
