"""The shared HTTP helpers: status and transport mapping, Retry-After, retries."""

from __future__ import annotations

import email.utils
import logging
import time

import httpx
import pytest

from server.domain.deadline import Deadline
from server.domain.errors import (
    BackendNotConfigured,
    ContentRejected,
    ImageServiceError,
    RateLimited,
    UpstreamAuthFailed,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from server.domain.retry import RetryPolicy
from server.providers._shared.http import (
    _target,
    error_for_status,
    new_client,
    parse_retry_after,
    send_with_retry,
    transport_errors,
)
from server.providers._shared.upstream import WHOLE_REQUEST, Upstream

UP = Upstream(
    key="demo",
    name="Demo",
    credential_setting="IMAGE_SERVICE_DEMO_API_KEY",
    endpoint_setting="IMAGE_SERVICE_DEMO_ENDPOINT",
)
URL = "https://upstream.test/v1/images"
SECRET_BODY = '{"error":{"code":"BadThing","message":"width is bad; internal trace id 42"}}'


def response(
    status: int, text: str = SECRET_BODY, headers: dict[str, str] | None = None
) -> httpx.Response:
    return httpx.Response(
        status,
        text=text,
        headers={"content-type": "application/json", **(headers or {})},
        request=httpx.Request("POST", URL),
    )


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, UpstreamRejected),
        (413, UpstreamRejected),
        (422, UpstreamRejected),
        (401, UpstreamAuthFailed),
        (403, UpstreamAuthFailed),
        (404, BackendNotConfigured),
        (408, UpstreamTimeout),
        (504, UpstreamTimeout),
        (429, RateLimited),
        (500, UpstreamUnavailable),
        (502, UpstreamUnavailable),
        (503, UpstreamUnavailable),
    ],
)
def test_status_mapping(status: int, kind: type[ImageServiceError]) -> None:
    error = error_for_status(response(status), UP)
    assert type(error) is kind
    assert "internal trace id" not in error.message
    assert "width is bad" not in error.message
    assert len(error.message) < 120
    assert error.metadata["upstream_status"] == str(status)
    assert error.metadata["upstream_code"] == "BadThing"


def test_rejection_blames_the_named_field() -> None:
    error = error_for_status(response(400), UP)
    assert isinstance(error, UpstreamRejected)
    assert [v.field for v in error.violations] == ["size"]
    vague = error_for_status(response(400, '{"error":{"message":"nope"}}'), UP)
    assert isinstance(vague, UpstreamRejected)
    assert [v.field for v in vague.violations] == [WHOLE_REQUEST]
    not_json = error_for_status(response(400, "<html>bad</html>"), UP)
    assert isinstance(not_json, UpstreamRejected)


def test_auth_and_config_messages_name_the_setting() -> None:
    assert "IMAGE_SERVICE_DEMO_API_KEY" in error_for_status(response(401), UP).message
    missing = error_for_status(response(404), UP)
    assert missing.metadata["setting"] == "IMAGE_SERVICE_DEMO_ENDPOINT"


def test_unsafe_upstream_codes_stay_out_of_metadata() -> None:
    body = '{"error":{"code":"has spaces and <html>","message":"x"}}'
    assert "upstream_code" not in error_for_status(response(500, body), UP).metadata


def test_classifier_runs_first() -> None:
    def classify(resp: httpx.Response) -> ImageServiceError | None:
        return ContentRejected("refused") if resp.status_code == 400 else None

    assert isinstance(error_for_status(response(400), UP, classify=classify), ContentRejected)
    assert isinstance(error_for_status(response(500), UP, classify=classify), UpstreamUnavailable)


def test_error_bodies_are_logged_without_credentials(caplog: pytest.LogCaptureFixture) -> None:
    body = '{"error":{"message":"bad header Authorization: Bearer sk-live-123 api-key=abc"}}'
    with caplog.at_level(logging.DEBUG, logger="server.providers._shared.http"):
        error_for_status(response(400, body), UP)
    logged = caplog.text
    assert "HTTP 400" in logged
    assert "bad header" in logged
    assert "sk-live-123" not in logged
    assert "abc" not in logged


def test_retry_after_parsing() -> None:
    assert parse_retry_after(httpx.Headers({"retry-after-ms": "250"})) == 0.25
    assert parse_retry_after(httpx.Headers({"retry-after-ms": "250", "retry-after": "9"})) == 0.25
    assert parse_retry_after(httpx.Headers({"retry-after": "3"})) == 3
    assert parse_retry_after(httpx.Headers({"retry-after": "1.5"})) == 1.5
    now = time.time()
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after(httpx.Headers({"retry-after": date}), now=now) == pytest.approx(
        30, abs=1
    )
    past = email.utils.formatdate(now - 30, usegmt=True)
    assert parse_retry_after(httpx.Headers({"retry-after": past}), now=now) == 0
    assert parse_retry_after(httpx.Headers({"retry-after": "soon"})) is None
    assert parse_retry_after(httpx.Headers({"retry-after": "-1"})) is None
    assert parse_retry_after(httpx.Headers()) is None
    rate_limited = error_for_status(response(429, headers={"retry-after": "7"}), UP)
    assert rate_limited.retry_after == 7


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (httpx.ConnectError("refused"), UpstreamUnavailable),
        (httpx.ConnectTimeout("slow connect"), UpstreamUnavailable),
        (httpx.RemoteProtocolError("peer closed"), UpstreamUnavailable),
        (httpx.ReadError("reset"), UpstreamUnavailable),
        (httpx.ReadTimeout("slow"), UpstreamTimeout),
        (httpx.WriteTimeout("slow"), UpstreamTimeout),
    ],
)
def test_transport_mapping(exc: Exception, kind: type[ImageServiceError]) -> None:
    with pytest.raises(kind), transport_errors(UP):
        raise exc


def test_other_exceptions_pass_through() -> None:
    with pytest.raises(KeyError), transport_errors(UP):
        raise KeyError("not ours")


async def test_send_with_retry_retries_transport_errors_then_succeeds() -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) < 3:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, json={"ok": True})

    async with new_client(timeout_s=5, transport=httpx.MockTransport(handler)) as client:
        result = await send_with_retry(
            client,
            "POST",
            URL,
            upstream=UP,
            policy=RetryPolicy(attempts=3, base_delay=0.001),
            deadline=Deadline.after(5),
            timeout_s=5,
            parse=lambda r: r.json(),
            json_body={"prompt": "x"},
            headers={"Authorization": "Bearer k"},
        )
    assert result == {"ok": True}
    assert len(calls) == 3
    assert calls[-1].headers["content-type"] == "application/json"
    assert calls[-1].headers["user-agent"].startswith("chuizi-image-service/")
    assert calls[-1].content == b'{"prompt":"x"}'


async def test_send_with_retry_does_not_retry_permanent_errors() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(400, json={"error": {"message": "prompt empty"}})

    async with new_client(timeout_s=5, transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(UpstreamRejected) as caught:
            await send_with_retry(
                client,
                "POST",
                URL,
                upstream=UP,
                policy=RetryPolicy(attempts=4, base_delay=0.001),
                deadline=Deadline.after(5),
                timeout_s=5,
                parse=lambda r: r,
            )
    assert calls == 1
    assert [v.field for v in caught.value.violations] == ["prompt"]


async def test_expired_deadline_fails_without_sending() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("must not be sent")

    async with new_client(timeout_s=5, transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(UpstreamTimeout):
            await send_with_retry(
                client,
                "GET",
                URL,
                upstream=UP,
                policy=RetryPolicy(),
                deadline=Deadline.after(0),
                timeout_s=5,
                parse=lambda r: r,
            )


@pytest.mark.parametrize(
    ("url", "params"),
    [
        ("https://upstream.test/v1/images", {"api-version": "2025-04-01"}),
        ("https://upstream.test/v1/images?x=1", {"api-version": "preview", "y": "a b"}),
        ("https://upstream.test/v1/tasks/abc", {}),
    ],
)
async def test_a_parsed_target_is_the_url_httpx_would_send_and_is_parsed_once(
    url: str, params: dict[str, str]
) -> None:
    async with new_client(timeout_s=5) as client:
        expected = client.build_request("POST", url, params=params or None).url

    first = _target(url, tuple(params.items()))

    assert first == expected
    assert str(first) == str(expected)
    assert _target(url, tuple(params.items())) is first
