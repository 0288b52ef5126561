"""SigV4 verification: the emulator accepts only the sandbox's key, signed as boto3 does.

A request without a SigV4 `Authorization` header is refused (403
`MissingAuthenticationTokenException`), and so is one whose credential is
not the sandbox's key id (`UnrecognizedClientException`), not scoped to
`bedrock` in the sandbox's region, or whose signature does not verify
against the sandbox's secret (`InvalidSignatureException`). Bedrock API
keys (bearer tokens) are not emulated.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from urllib.parse import quote

from starlette.requests import Request

_AUTH_PARTS = re.compile(r"(Credential|SignedHeaders|Signature)=([^,\s]+)")


class AuthError(Exception):
    """The signature check failed; `code` and `message` are the 403's."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode("utf-8"), hashlib.sha256).digest()


def _canonical_headers(request: Request, names: list[str]) -> str:
    lines = []
    for name in names:
        value = request.headers.get(name)
        if value is None:
            raise AuthError(
                "InvalidSignatureException", f"Signed header {name} is missing from the request."
            )
        lines.append(f"{name}:{' '.join(value.split())}\n")
    return "".join(lines)


def _canonical_query(request: Request) -> str:
    pairs = sorted(
        (quote(k, safe="-_.~"), quote(v, safe="-_.~"))
        for k, v in request.query_params.multi_items()
    )
    return "&".join(f"{k}={v}" for k, v in pairs)


def verify_sigv4(
    request: Request,
    raw_path: str,
    body: bytes,
    *,
    access_key_id: str,
    secret_access_key: str,
    region: str,
) -> None:
    """Check the request's SigV4 signature for service `bedrock`; `AuthError` if not."""
    header = request.headers.get("authorization")
    if not header:
        raise AuthError("MissingAuthenticationTokenException", "Missing Authentication Token")
    algorithm, _, rest = header.partition(" ")
    parts = dict(_AUTH_PARTS.findall(rest))
    if algorithm != "AWS4-HMAC-SHA256" or set(parts) != {
        "Credential",
        "SignedHeaders",
        "Signature",
    }:
        raise AuthError(
            "IncompleteSignatureException",
            "Authorization header requires 'Credential', 'Signature' and 'SignedHeaders' "
            "parameters (AWS4-HMAC-SHA256; the sandbox accepts SigV4 only).",
        )
    scope = parts["Credential"].split("/")
    if len(scope) != 5 or scope[4] != "aws4_request":
        raise AuthError("IncompleteSignatureException", "Credential is malformed.")
    key_id, date, scope_region, service, _ = scope
    if not hmac.compare_digest(key_id.encode(), access_key_id.encode()):
        raise AuthError(
            "UnrecognizedClientException", "The security token included in the request is invalid."
        )
    if service != "bedrock":
        raise AuthError(
            "InvalidSignatureException",
            "Credential should be scoped to correct service: 'bedrock'.",
        )
    if scope_region != region:
        raise AuthError(
            "InvalidSignatureException",
            f"Credential should be scoped to a valid region, not '{scope_region}'.",
        )
    amz_date = request.headers.get("x-amz-date", "")
    if not amz_date.startswith(date):
        raise AuthError("InvalidSignatureException", "Date in Credential scope does not match.")
    names = parts["SignedHeaders"].split(";")
    if "host" not in names:
        raise AuthError("InvalidSignatureException", "The host header must be signed.")
    payload_hash = request.headers.get("x-amz-content-sha256") or hashlib.sha256(body).hexdigest()
    canonical = "\n".join(
        [
            request.method,
            # Non-S3 services sign the path URI-encoded twice; the raw path
            # is the once-encoded form the client sent.
            quote(raw_path, safe="/~"),
            _canonical_query(request),
            _canonical_headers(request, names),
            parts["SignedHeaders"],
            payload_hash,
        ]
    )
    to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256",
            amz_date,
            f"{date}/{region}/bedrock/aws4_request",
            hashlib.sha256(canonical.encode()).hexdigest(),
        ]
    )
    key = _hmac(("AWS4" + secret_access_key).encode(), date)
    for step in (region, "bedrock", "aws4_request"):
        key = _hmac(key, step)
    expected = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, parts["Signature"]):
        raise AuthError(
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided. "
            "Check your AWS Secret Access Key and signing method. Consult the service "
            "documentation for details.",
        )
