"""DashScope's error bodies, result storage's OSS-style errors, and submission faults.

Errors are `{"request_id", "code", "message"}` with DashScope's HTTP
statuses; the result storage answers as OSS does, in XML.
"""

from __future__ import annotations

import math
import uuid

from starlette.responses import JSONResponse, Response

from server.sandbox.bailian_wan.tasks import AT_DOWNLOAD, AT_POLL, IN_TASK, PARTIAL, PARTIAL_RESULTS
from server.sandbox.faults import DroppedResponse, Fault, FaultMode


def request_id() -> str:
    """A fresh `request_id`, as every DashScope answer carries."""
    return str(uuid.uuid4())


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> Response:
    """A DashScope error: `{"request_id", "code", "message"}` with `status`."""
    body = {"request_id": request_id(), "code": code, "message": message}
    return JSONResponse(body, status, headers=headers)


def oss_error(status: int, code: str, message: str) -> Response:
    """An error as the result storage (Alibaba OSS) answers, in XML."""
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        f"<RequestId>{uuid.uuid4().hex.upper()[:24]}</RequestId></Error>"
    )
    return Response(xml, status, media_type="application/xml")


def submit_fault(fault: Fault) -> Response | None:
    """The error response for a fault that shows at submission, else None."""
    mode, variant = fault.mode, fault.variant
    if mode is FaultMode.BAD_REQUEST and variant != IN_TASK:
        return error_response(
            400, "InvalidParameter", "The parameters are invalid (sandbox fault)."
        )
    if mode is FaultMode.CONTENT_FILTER and variant not in (IN_TASK, PARTIAL, PARTIAL_RESULTS):
        return error_response(
            400, "DataInspectionFailed", "Input data may contain inappropriate content."
        )
    if mode is FaultMode.RATE_LIMIT:
        headers = {}
        if fault.retry_after is not None:
            headers["Retry-After"] = str(math.ceil(fault.retry_after))
        return error_response(
            429,
            "Throttling.RateQuota",
            "Requests rate limit exceeded, please try again later.",
            headers,
        )
    if mode is FaultMode.SERVER_ERROR and variant != IN_TASK:
        return error_response(
            500,
            "InternalError",
            "An internal error has occured, please try again later or contact service support.",
        )
    if mode is FaultMode.DROP_CONNECTION and variant not in (AT_POLL, AT_DOWNLOAD):
        return DroppedResponse(
            partial=b'{"request_id":"', content_length=256, media_type="application/json"
        )
    return None
