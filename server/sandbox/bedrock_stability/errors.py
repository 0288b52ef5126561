"""Bedrock's error responses, and what each fault of the plan answers.

Errors come back as boto3 parses them for this protocol: the status, an
`x-amzn-ErrorType: <Code>:<namespace>` header and a `{"message": ...}` body,
so `ClientError.response["Error"]["Code"]` is the real code. The fault
variants are listed in the package docstring.
"""

from __future__ import annotations

import math
import uuid

from starlette.responses import JSONResponse, Response

from server.sandbox.bedrock_stability.validation import Job
from server.sandbox.faults import DroppedResponse, Fault, FaultMode

ERROR_NAMESPACE = "http://internal.amazon.com/coral/com.amazon.bedrock/"

CONTENT_FILTER_INPUT = "input"
CONTENT_FILTER_OUTPUT = "output"
ACCESS_DENIED = "access_denied"
NOT_FOUND = "not_found"
QUOTA = "quota"
MODEL_NOT_READY = "model_not_ready"
UNAVAILABLE = "unavailable"
MODEL_ERROR = "model_error"
INFERENCE_ERROR = "inference_error"
MODEL_TIMEOUT = "model_timeout"


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> Response:
    """An error as Bedrock's restJson1 protocol sends it."""
    return JSONResponse(
        {"message": message},
        status,
        headers={
            "x-amzn-ErrorType": f"{code}:{ERROR_NAMESPACE}",
            "x-amzn-RequestId": str(uuid.uuid4()),
            **(headers or {}),
        },
    )


# (mode, variant) → the error response's status, code and message.
_ERRORS: dict[tuple[FaultMode, str], tuple[int, str, str]] = {
    (FaultMode.BAD_REQUEST, ""): (
        400,
        "ValidationException",
        "The request is invalid (sandbox fault).",
    ),
    (FaultMode.BAD_REQUEST, ACCESS_DENIED): (
        403,
        "AccessDeniedException",
        "You don't have access to the model with the specified model ID.",
    ),
    (FaultMode.BAD_REQUEST, NOT_FOUND): (
        404,
        "ResourceNotFoundException",
        "The requested resource could not be found.",
    ),
    (FaultMode.BAD_REQUEST, QUOTA): (
        400,
        "ServiceQuotaExceededException",
        "Your request exceeds the service quota for your account.",
    ),
    (FaultMode.RATE_LIMIT, ""): (
        429,
        "ThrottlingException",
        "Too many requests, please wait before trying again.",
    ),
    (FaultMode.RATE_LIMIT, MODEL_NOT_READY): (
        429,
        "ModelNotReadyException",
        "The model is not ready to serve inference requests. Retry your request.",
    ),
    (FaultMode.SERVER_ERROR, ""): (
        500,
        "InternalServerException",
        "The server encountered an internal error.",
    ),
    (FaultMode.SERVER_ERROR, UNAVAILABLE): (
        503,
        "ServiceUnavailableException",
        "The service is unavailable. Try again later.",
    ),
    (FaultMode.SERVER_ERROR, MODEL_ERROR): (
        424,
        "ModelErrorException",
        "The model failed to process the request.",
    ),
    (FaultMode.SERVER_ERROR, MODEL_TIMEOUT): (
        408,
        "ModelTimeoutException",
        "The model took too long to respond.",
    ),
    (FaultMode.TIMEOUT, ""): (
        408,
        "ModelTimeoutException",
        "The model took too long to respond.",
    ),
}


def fault_response(fault: Fault, job: Job) -> Response:
    """What `fault` answers instead of rendering `job`."""
    mode, variant = fault.mode, fault.variant
    if mode is FaultMode.CONTENT_FILTER:
        target = {CONTENT_FILTER_INPUT: "input image", CONTENT_FILTER_OUTPUT: "output image"}
        reason = f"Filter reason: {target.get(variant, 'prompt')}"
        return JSONResponse({"seeds": [job.seed], "finish_reasons": [reason]})
    if mode is FaultMode.SERVER_ERROR and variant == INFERENCE_ERROR:
        return JSONResponse({"seeds": [job.seed], "finish_reasons": ["Inference error"]})
    if mode is FaultMode.DROP_CONNECTION:
        partial = f'{{"seeds":[{job.seed}],"finish_reasons":[null],"images":["iVBOR'
        return DroppedResponse(
            partial=partial.encode(), content_length=64 * 1024, media_type="application/json"
        )
    status, code, message = _ERRORS.get((mode, variant)) or _ERRORS[(mode, "")]
    headers = {}
    if mode is FaultMode.RATE_LIMIT and fault.retry_after is not None:
        headers["Retry-After"] = str(math.ceil(fault.retry_after))
    return error_response(status, code, message, headers)
