"""The backends this deployment configured, looked up by catalogue entry."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from server.domain.catalogue import ModelSpec
from server.domain.errors import BackendNotConfigured
from server.domain.ports import ImageBackend


@dataclass(frozen=True)
class ModelListing:
    """A catalogue entry and whether this deployment can serve it."""

    spec: ModelSpec
    configured: bool
    # The catalogue name that serves calls naming this model, when a retired
    # model is routed to its successor on this deployment.
    routes_to: str = ""


class Backends:
    """The configured backends by registry key, and what the others lack."""

    def __init__(
        self,
        configured: Mapping[str, ImageBackend],
        missing_settings: Mapping[str, str] | None = None,
    ) -> None:
        self._configured = dict(configured)
        self._missing = dict(missing_settings or {})

    def is_configured(self, backend: str) -> bool:
        return backend in self._configured

    def get(self, spec: ModelSpec) -> ImageBackend:
        """The backend serving `spec`; `BackendNotConfigured` naming the
        missing setting when this deployment has none."""
        try:
            return self._configured[spec.backend]
        except KeyError:
            setting = self._missing.get(spec.backend, f"the {spec.backend} backend settings")
            raise BackendNotConfigured(
                f"{spec.name} is not configured on this deployment; set {setting}.",
                metadata={"model": spec.name, "backend": spec.backend, "setting": setting},
            ) from None

    async def aclose(self) -> None:
        for backend in self._configured.values():
            await backend.aclose()
