"""API keys over REST with the real openai SDK: the sidecar forwards the
`Authorization` header and maps the service's refusals onto OpenAI's
classes, codes and Retry-After."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import httpx
import openai
import pytest

from server.asgi import AsgiServer
from server.rest import create_app, open_channel
from tests.auth.conftest import AuthStack

FLUX = "azure/flux-kontext-pro"


@contextlib.asynccontextmanager
async def sidecar(auth_stack: AuthStack) -> AsyncIterator[str]:
    settings = auth_stack.stack.service.settings
    channel = open_channel(settings, auth_stack.stack.target)
    server = AsgiServer(create_app(channel, settings))
    await server.start()
    try:
        yield f"{server.base_url}/v1"
    finally:
        await server.stop()
        await channel.close()


def client(base_url: str, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0)


@pytest.mark.parametrize("key", ["WRONG", "ck-" + "b" * 40, "x"], ids=["wrong", "unknown", "short"])
async def test_bad_keys_are_authentication_errors(auth_stack: AuthStack, key: str) -> None:
    async with sidecar(auth_stack) as base_url, client(base_url, key) as sdk:
        with pytest.raises(openai.AuthenticationError) as caught:
            await sdk.images.generate(model=FLUX, prompt="a fox")
    assert caught.value.status_code == 401
    assert caught.value.code == "invalid_api_key"
    assert caught.value.type == "authentication_error"


async def test_no_or_garbage_authorization_header_is_401(auth_stack: AuthStack) -> None:
    body = {"model": FLUX, "prompt": "a fox"}
    async with sidecar(auth_stack) as base_url, httpx.AsyncClient() as http:
        for headers in ({}, {"Authorization": "garbage"}, {"Authorization": "Bearer WRONG"}):
            response = await http.post(f"{base_url}/images/generations", json=body, headers=headers)
            assert response.status_code == 401, headers
            assert response.json()["error"]["code"] == "invalid_api_key"
    assert auth_stack.stack.sandbox.azure_flux.faults.stats.received == 0


async def test_a_forbidden_model_is_permission_denied(auth_stack: AuthStack) -> None:
    key = await auth_stack.new_key(models=("google/*",))
    async with sidecar(auth_stack) as base_url, client(base_url, key) as sdk:
        with pytest.raises(openai.PermissionDeniedError) as caught:
            await sdk.images.generate(model=FLUX, prompt="a fox")
    assert caught.value.status_code == 403
    assert caught.value.code == "model_not_allowed"


async def test_rate_limit_is_a_rate_limit_error_with_retry_after(auth_stack: AuthStack) -> None:
    key = await auth_stack.new_key(rpm=1)
    async with sidecar(auth_stack) as base_url, client(base_url, key) as sdk:
        await sdk.images.generate(model=FLUX, prompt="a fox")
        with pytest.raises(openai.RateLimitError) as caught:
            await sdk.images.generate(model=FLUX, prompt="a fox")
    assert caught.value.code == "rate_limit_exceeded"
    assert 1 <= int(caught.value.response.headers["Retry-After"]) <= 60


async def test_a_spent_quota_is_insufficient_quota_and_not_retried(auth_stack: AuthStack) -> None:
    key = await auth_stack.new_key(images_per_day=1)
    async with sidecar(auth_stack) as base_url, client(base_url, key) as sdk:
        await sdk.images.generate(model=FLUX, prompt="a fox")
        with pytest.raises(openai.RateLimitError) as caught:
            await sdk.images.generate(model=FLUX, prompt="a fox")
    error = caught.value
    assert (error.status_code, error.code, error.type) == (
        429,
        "insufficient_quota",
        "insufficient_quota",
    )
    assert int(error.response.headers["Retry-After"]) >= 1
    assert error.response.headers["x-should-retry"] == "false"


async def test_another_keys_generation_is_404(auth_stack: AuthStack) -> None:
    alice, bob = await auth_stack.new_key("alice"), await auth_stack.new_key("bob")
    async with sidecar(auth_stack) as base_url, client(base_url, alice) as sdk:
        done = await sdk.images.generate(model=FLUX, prompt="a fox")
        generation_id = (done.model_extra or {})["x_chuizi"]["generation_id"]
        async with httpx.AsyncClient() as http:
            url = f"{base_url}/generations/{generation_id}"
            mine = await http.get(url, headers={"Authorization": f"Bearer {alice}"})
            theirs = await http.get(url, headers={"Authorization": f"Bearer {bob}"})
    assert mine.status_code == 200
    assert theirs.status_code == 404


async def test_idempotency_keys_are_per_api_key(auth_stack: AuthStack) -> None:
    alice, bob = await auth_stack.new_key("alice"), await auth_stack.new_key("bob")
    body = {"model": FLUX, "prompt": "a fox"}
    async with sidecar(auth_stack) as base_url, httpx.AsyncClient(timeout=60) as http:

        async def post(key: str) -> str:
            response = await http.post(
                f"{base_url}/images/generations",
                json=body,
                headers={"Authorization": f"Bearer {key}", "Idempotency-Key": "same"},
            )
            assert response.status_code == 200, response.text
            generation_id: str = response.json()["x_chuizi"]["generation_id"]
            return generation_id

        first, replay, bobs = await post(alice), await post(alice), await post(bob)
    assert first == replay
    assert bobs != first


async def test_the_sidecar_logs_no_key_at_debug(
    auth_stack: AuthStack, caplog: pytest.LogCaptureFixture
) -> None:
    key = await auth_stack.new_key(rpm=1)
    caplog.set_level(logging.DEBUG)
    async with sidecar(auth_stack) as base_url, client(base_url, key) as sdk:
        await sdk.images.generate(model=FLUX, prompt="a fox")
        with pytest.raises(openai.RateLimitError):
            await sdk.images.generate(model=FLUX, prompt="a fox")
    secret = key.removeprefix("ck-")
    assert caplog.records
    for record in caplog.records:
        assert secret[:12] not in record.getMessage() + str(record.args)
