"""What a generation's stream yields: each image as it is ready, then the record."""

from __future__ import annotations

from dataclasses import dataclass

from server.domain.records import DeliveredImage, GenerationRecord


@dataclass(frozen=True)
class ImageReady:
    """An image is stored (or, if storage failed, ready inline)."""

    image: DeliveredImage


@dataclass(frozen=True)
class GenerationDone:
    """The last event of a stream: the generation record (images without data)."""

    record: GenerationRecord


StreamEvent = ImageReady | GenerationDone
