"""Azure FLUX's 2xx answers: images, image links, or a task to poll.

Microsoft's FLUX page says the BFL route answers with "a URL or
base64-encoded image data"; Black Forest Labs' own API answers a submission
with `{"id", "polling_url"}` and a poll with `{"status", "result":
{"sample": <signed URL>}}`. So a submission's 2xx is one of:

- `{"data":[{"b64_json": ...}]}`: the images (`UpstreamResult`);
- `{"data":[{"url": ...}]}`: `ImageLinks`, fetched by the backend;
- `{"id", "polling_url"}` (no `data`): a `PollingLink`, polled by the backend
  to a `Ready` status whose `result.sample` is then fetched.

Each of the last two is a paid generation: what follows (polls, fetches) is
retried on its own and never by submitting again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from server.domain.errors import ImageServiceError, UpstreamUnavailable
from server.domain.imaging import sniff_mime_type
from server.domain.ports import ProducedImage, UpstreamResult
from server.providers._shared.azure_images import filtered_categories, parse_images
from server.providers._shared.base64_json import b64decode, loads_with_base64
from server.providers._shared.downloads import is_http_url
from server.providers._shared.upstream import unavailable
from server.providers.azure_flux.errors import UPSTREAM, content_rejected

# BFL's poll statuses (its get_result schema): Pending until Ready, or one
# of the terminal failures. Anything else (a status added later) is
# treated as still running; the deadline bounds the wait.
READY = "Ready"
MODERATED = frozenset({"Request Moderated", "Content Moderated"})
FAILED = frozenset({"Error", "Failed", "Task not found"})


@dataclass(frozen=True)
class ImageLinks:
    """A 2xx naming its images by URL; `filtered` items were withheld."""

    urls: tuple[str, ...]
    filtered: int = 0


@dataclass(frozen=True)
class PollingLink:
    """A 2xx saying the generation runs on: poll `url` for it."""

    url: str
    task_id: str


SubmissionAnswer = UpstreamResult | ImageLinks | PollingLink


def _decode_image(b64: object) -> ProducedImage | None:
    # `loads_with_base64` hands the strings over as bytes, undecoded.
    if not isinstance(b64, bytes | memoryview) or not b64:
        return None
    data = b64decode(b64)
    return ProducedImage(data=data, mime_type=sniff_mime_type(data))


def _load(response: httpx.Response) -> Any:
    try:
        return loads_with_base64(response.content, "b64_json")
    except (ValueError, UnicodeDecodeError):
        raise unavailable(UPSTREAM, "Azure FLUX returned an unreadable response.") from None


def _polling_link(payload: dict[str, Any]) -> PollingLink | None:
    url = payload.get("polling_url")
    if not isinstance(url, str) or payload.get("data"):
        return None
    # Even a malformed link is followed (and fails) rather than answered by
    # submitting again: the generation it names is already paid for.
    task_id = payload.get("id")
    return PollingLink(url=url, task_id=task_id if isinstance(task_id, str) else "")


def _image_links(payload: dict[str, Any]) -> ImageLinks | None:
    """The URLs of a `data` list with no base64 image in it, else None.
    Malformed URLs are kept: their fetch fails, the generation is not redone."""
    items = payload.get("data")
    if not isinstance(items, list):
        return None
    items = [item for item in items if isinstance(item, dict)]
    if any(item.get("b64_json") for item in items):
        return None
    urls: list[str] = []
    filtered = 0
    for item in items:
        url = item.get("url")
        if item.get("finish_reason") == "content_filter" or (
            not url and filtered_categories(item.get("content_filter_results"))
        ):
            filtered += 1
        elif isinstance(url, str) and url:
            urls.append(url)
    return ImageLinks(tuple(urls), filtered) if urls else None


def parse_submission(response: httpx.Response) -> SubmissionAnswer:
    """A submission's 2xx: images, links to them, or a task to poll.

    An item the filter withheld counts as filtered; with nothing else left
    the answer is `ContentRejected`. A body with none of the three shapes
    is `UpstreamUnavailable` (most likely cut on the way back).
    """
    payload = _load(response)
    if isinstance(payload, dict):
        link = _polling_link(payload)
        if link is not None:
            return link
        links = _image_links(payload)
        if links is not None:
            return links
    return parse_images(
        payload, upstream=UPSTREAM, decode=_decode_image, content_rejected=content_rejected
    )


@dataclass(frozen=True)
class PollState:
    """One poll's answer: still running (`sample` empty) or the image's URL."""

    status: str
    sample: str = ""


def parse_poll(response: httpx.Response, task_id: str = "") -> PollState:
    """A poll's 2xx; a moderated or failed task raises (never resubmitted)."""
    try:
        payload = response.json()
    except (ValueError, UnicodeDecodeError):
        raise unavailable(UPSTREAM, "Azure FLUX returned an unreadable poll answer.") from None
    status = payload.get("status") if isinstance(payload, dict) else None
    if not isinstance(status, str):
        raise unavailable(UPSTREAM, "Azure FLUX returned a poll answer with no status.")
    if status == READY:
        result = payload.get("result")
        sample = result.get("sample") if isinstance(result, dict) else None
        if not isinstance(sample, str) or not is_http_url(sample):
            raise unavailable(UPSTREAM, "Azure FLUX's finished task named no image.")
        return PollState(status, sample)
    if status in MODERATED:
        raise content_rejected()
    if status in FAILED:
        raise task_failed(status, task_id)
    return PollState(status)


def task_failed(status: str, task_id: str) -> ImageServiceError:
    """A task that ended without an image. Not retryable: the generation
    was submitted (and may be billed); another try would be a new one."""
    error = UpstreamUnavailable(
        "Azure FLUX's generation failed; try again.",
        metadata={"upstream": UPSTREAM.key, "task_status": status.replace(" ", "_")},
    )
    if task_id:
        error.metadata["task_id"] = task_id
    error.retryable = False
    return error


def malformed_link(task_id: str = "") -> ImageServiceError:
    """A polling link that is no http(s) URL. Not retryable, as `task_failed`."""
    error = UpstreamUnavailable(
        "Azure FLUX returned a malformed polling URL.", metadata={"upstream": UPSTREAM.key}
    )
    if task_id:
        error.metadata["task_id"] = task_id
    error.retryable = False
    return error
