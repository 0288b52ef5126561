"""What a call answers: rendered predictions, filtered ones, or a fault's status.

A success renders each image at the model's pixel table size showing the
prompt: `{"bytesBase64Encoded", "mimeType"[, "prompt": the rewritten prompt
when enhancePrompt is on, its default]}`. The fault variants are described
in the package docstring.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import grpc
from google.protobuf import duration_pb2
from google.protobuf.message import Message as ProtoMessage
from google.rpc import error_details_pb2

from server.sandbox.faults import Fault, FaultMode, strip_directives
from server.sandbox.render import render_image
from server.sandbox.vertex_imagen.errors import RpcError, error_info, invalid
from server.sandbox.vertex_imagen.gemini import GeminiJob
from server.sandbox.vertex_imagen.validation import Job

CONTENT_FILTER_PROMPT = "prompt"
CONTENT_FILTER_PARTIAL = "partial"
CONTENT_FILTER_ALL = "all"
CONTENT_FILTER_SILENT = "silent"
SERVER_ERROR_UNAVAILABLE = "unavailable"

BLOCKED_PROMPT_MESSAGE = (
    "Image generation failed with the following error: The prompt could not be submitted. "
    "Your current safety filter threshold prohibited one or more words in this prompt. "
    "If you think this was an error, send feedback. Support codes: 61493863"
)
RAI_FILTERED_REASON = (
    "This image was filtered out because it violated Vertex AI's usage guidelines. "
    "You will not be charged for blocked images. Try rephrasing the prompt. If you think "
    "this was an error, send feedback. Support codes: 56562880"
)


def _render_one(job: Job, index: int) -> dict[str, Any]:
    label = f"sandbox {job.model} {job.width}x{job.height} #{index + 1}"
    if job.seed is not None:
        label += f" seed {job.seed}"
    prompt = strip_directives(job.prompt)
    data = render_image(
        job.width,
        job.height,
        prompt,
        label=label,
        image_format="jpeg" if job.mime_type == "image/jpeg" else "png",
    )
    prediction = {"bytesBase64Encoded": base64.b64encode(data).decode("ascii")}
    prediction["mimeType"] = job.mime_type
    if job.enhance:
        prediction["prompt"] = f"{prompt}, richly detailed, soft natural light (sandbox rewrite)"
    return prediction


async def render_predictions(job: Job, fault: Fault) -> list[dict[str, Any]]:
    """The predictions of a success, with the images a CONTENT_FILTER fault withholds."""
    filtered = 0
    if fault.mode is FaultMode.CONTENT_FILTER:
        filtered = job.count if fault.variant == CONTENT_FILTER_ALL else max(1, job.count // 2)
    rendered = await asyncio.gather(
        *(asyncio.to_thread(_render_one, job, i) for i in range(job.count - filtered))
    )
    predictions = list(rendered)
    if job.include_rai_reason and fault.variant != CONTENT_FILTER_SILENT:
        predictions += [{"raiFilteredReason": RAI_FILTERED_REASON}] * filtered
    return predictions


def fault_error(fault: Fault, job: Job | GeminiJob) -> RpcError | None:
    """The status a fault answers with, or None when it shapes a success."""
    mode = fault.mode
    if mode is FaultMode.BAD_REQUEST:
        return invalid("Request contains an invalid argument. (sandbox fault)")
    if mode is FaultMode.CONTENT_FILTER and fault.variant in ("", CONTENT_FILTER_PROMPT):
        return invalid(BLOCKED_PROMPT_MESSAGE)
    if mode is FaultMode.RATE_LIMIT:
        details: list[ProtoMessage] = [
            error_info("RATE_LIMIT_EXCEEDED", "aiplatform.googleapis.com", model=job.model)
        ]
        if fault.retry_after is not None:
            delay = duration_pb2.Duration()
            delay.FromNanoseconds(round(fault.retry_after * 1e9))
            details.append(error_details_pb2.RetryInfo(retry_delay=delay))
        return RpcError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "Quota exceeded for aiplatform.googleapis.com/"
            "online_prediction_requests_per_base_model with base model: "
            f"{job.model}. Please submit a quota increase request.",
            *details,
        )
    if mode is FaultMode.SERVER_ERROR:
        if fault.variant == SERVER_ERROR_UNAVAILABLE:
            return RpcError(grpc.StatusCode.UNAVAILABLE, "The service is currently unavailable.")
        return RpcError(grpc.StatusCode.INTERNAL, "Internal error encountered.")
    if mode is FaultMode.TIMEOUT:
        return RpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline expired before operation.")
    return None
