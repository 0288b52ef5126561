"""AzureFluxBackend when the BFL route names its image instead of carrying it,
against the Azure FLUX emulator over real sockets.

Microsoft documents "a URL or base64-encoded image data"; BFL's own API
answers `{"id", "polling_url"}` and is polled until Ready. Each such answer
is one paid generation: whatever happens after it (a failed poll, a
moderated task, the deadline) must never submit the generation again, so
every test counts the submissions the emulator saw.
"""

from __future__ import annotations

import contextlib
import io

import httpx
import pytest
from PIL import Image
from pydantic import SecretStr

from server.domain.catalogue import Catalogue
from server.domain.deadline import Deadline
from server.domain.errors import ContentRejected, UpstreamTimeout, UpstreamUnavailable
from server.domain.ports import UpstreamCall
from server.domain.requests import Size
from server.providers.azure_flux.backend import AzureFluxBackend
from server.sandbox.azure_flux import AzureFluxEmulator
from server.sandbox.azure_flux_tasks import Answer
from server.sandbox.server import SandboxServer
from tests.providers.backends import azure_flux as make_backend
from tests.providers.conftest import FAST_RETRY, backend_fixture

FLUX2 = Catalogue.load().get("azure/flux-2-pro")
# Another name for the sandbox's 127.0.0.1: a host that is not the endpoint's.
FOREIGN_HOST = "localhost"

backend = backend_fixture(make_backend)


@pytest.fixture
def emulator(sandbox: SandboxServer) -> AzureFluxEmulator:
    emulator = sandbox.azure_flux
    emulator.delivery_host = FOREIGN_HOST
    return emulator


def call(prompt: str = "a red fox") -> UpstreamCall:
    return UpstreamCall(model=FLUX2, prompt=prompt, size=Size(1792, 1024), count=1, seed=3)


def submissions(emulator: AzureFluxEmulator) -> int:
    # The fault plan wraps only the generation route: one count per POST.
    return emulator.faults.stats.received


def png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        return image.size


async def test_a_url_answer_is_fetched_without_our_key(
    backend: AzureFluxBackend, emulator: AzureFluxEmulator
) -> None:
    emulator.answers.answer = Answer.URL

    result = await backend.run(call(), Deadline.after(10))

    assert [png_size(image.data) for image in result.images] == [(1440, 816)]
    assert result.images[0].mime_type == "image/png"
    assert submissions(emulator) == 1
    assert emulator.tasks.stats.deliveries == 1
    assert emulator.tasks.stats.deliveries_with_credentials == 0


async def test_a_url_on_the_endpoints_own_host_gets_the_key(
    backend: AzureFluxBackend, emulator: AzureFluxEmulator
) -> None:
    emulator.delivery_host = None
    emulator.answers.answer = Answer.URL

    result = await backend.run(call(), Deadline.after(10))

    assert len(result.images) == 1
    assert emulator.tasks.stats.deliveries_with_credentials == 1


async def test_a_polling_answer_is_polled_to_ready_then_fetched(
    backend: AzureFluxBackend, emulator: AzureFluxEmulator
) -> None:
    result = await backend.run(
        call("a red fox [sandbox:answer=polling] [sandbox:pending_polls=3]"), Deadline.after(10)
    )

    assert [png_size(image.data) for image in result.images] == [(1440, 816)]
    assert submissions(emulator) == 1
    # Three Pending answers, then Ready.
    assert emulator.tasks.stats.polls == 4
    assert (emulator.tasks.stats.deliveries, emulator.tasks.stats.deliveries_with_credentials) == (
        1,
        0,
    )


async def test_a_failed_poll_is_retried_as_a_poll_not_a_submission(
    backend: AzureFluxBackend, emulator: AzureFluxEmulator
) -> None:
    emulator.answers.answer = Answer.POLLING
    emulator.answers.pending_polls = 0
    emulator.tasks.failing_polls = 2

    result = await backend.run(call(), Deadline.after(10))

    assert len(result.images) == 1
    assert submissions(emulator) == 1
    # The two 500s are answered before the task is looked at, so not counted.
    assert emulator.tasks.stats.polls == 1


@pytest.mark.parametrize("outcome", ["content_moderated", "request_moderated"])
async def test_a_moderated_task_is_a_content_refusal(
    backend: AzureFluxBackend, emulator: AzureFluxEmulator, outcome: str
) -> None:
    prompt = f"a red fox [sandbox:answer=polling] [sandbox:poll_outcome={outcome}]"
    with pytest.raises(ContentRejected):
        await backend.run(call(prompt), Deadline.after(10))
    assert submissions(emulator) == 1
    assert emulator.tasks.stats.deliveries == 0


@pytest.mark.parametrize("outcome", ["error", "failed", "task_not_found"])
async def test_a_failed_task_is_reported_and_not_resubmitted(
    backend: AzureFluxBackend, emulator: AzureFluxEmulator, outcome: str
) -> None:
    prompt = f"a red fox [sandbox:answer=polling] [sandbox:poll_outcome={outcome}]"
    with pytest.raises(UpstreamUnavailable) as caught:
        await backend.run(call(prompt), Deadline.after(10))
    assert not caught.value.retryable
    assert caught.value.metadata["task_id"]
    assert submissions(emulator) == 1


async def test_the_deadline_ends_polling_without_resubmitting(
    backend: AzureFluxBackend, emulator: AzureFluxEmulator
) -> None:
    emulator.answers.answer = Answer.POLLING
    emulator.answers.pending_polls = None  # Pending for ever

    with pytest.raises(UpstreamTimeout) as caught:
        await backend.run(call(), Deadline.after(0.5))

    assert submissions(emulator) == 1
    assert emulator.tasks.stats.polls >= 1
    assert emulator.tasks.stats.deliveries == 0
    assert caught.value.metadata["task_id"]


async def test_an_expired_result_url_fails_without_resubmitting(
    backend: AzureFluxBackend, emulator: AzureFluxEmulator
) -> None:
    emulator.answers.answer = Answer.URL
    emulator.tasks.urls_expired = True

    with pytest.raises(UpstreamUnavailable):
        await backend.run(call(), Deadline.after(10))

    assert submissions(emulator) == 1
    # The GET is retried (a fetch costs nothing); the generation is not.
    assert emulator.tasks.stats.deliveries == FAST_RETRY.attempts


# --- answers the emulator never gives: a narrow check with a scripted transport ---


@pytest.mark.parametrize(
    "answer",
    [
        {"id": "t-1", "polling_url": "ftp://elsewhere/result"},
        {"data": [{"url": "not a url"}]},
    ],
    ids=["malformed-polling-url", "malformed-image-url"],
)
async def test_a_malformed_link_fails_without_submitting_again(answer: dict[str, object]) -> None:
    submissions = 0

    def upstream(request: httpx.Request) -> httpx.Response:
        nonlocal submissions
        assert request.method == "POST"
        submissions += 1
        return httpx.Response(200, json=answer)

    backend = AzureFluxBackend(
        endpoint="http://flux.test",
        api_key=SecretStr("k"),
        retry=FAST_RETRY,
        transport=httpx.MockTransport(upstream),
    )
    async with contextlib.aclosing(backend):
        with pytest.raises(UpstreamUnavailable) as caught:
            await backend.run(call(), Deadline.after(5))
    assert "malformed" in caught.value.message
    assert submissions == 1


async def test_a_polling_link_on_another_host_never_gets_our_key(
    backend: AzureFluxBackend, emulator: AzureFluxEmulator
) -> None:
    emulator.answers.answer = Answer.POLLING
    emulator.polling_host = FOREIGN_HOST

    result = await backend.run(call(), Deadline.after(10))

    assert len(result.images) == 1
    stats = emulator.tasks.stats
    assert stats.polls >= 1
    assert (stats.polls_with_credentials, stats.deliveries_with_credentials) == (0, 0)
    assert submissions(emulator) == 1


async def test_a_polling_link_on_the_endpoints_host_gets_our_key(
    backend: AzureFluxBackend, emulator: AzureFluxEmulator
) -> None:
    emulator.answers.answer = Answer.POLLING
    await backend.run(call(), Deadline.after(10))
    assert emulator.tasks.stats.polls_with_credentials == emulator.tasks.stats.polls >= 1
