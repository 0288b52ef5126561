"""MAI-Image-2.6 prompt edits: AzureMaiBackend's multipart call to
/mai/v1/images/edits against the MAI emulator, over real sockets."""

from __future__ import annotations

from dataclasses import replace

import pytest

from server.domain.catalogue import Catalogue
from server.domain.deadline import Deadline
from server.domain.errors import InvalidArgument, UpstreamRejected
from server.domain.ports import UpstreamCall
from server.domain.requests import Operation, Size
from server.providers.azure_mai.backend import AzureMaiBackend
from server.providers.azure_mai.request import edit_form
from server.sandbox.server import SandboxServer
from tests.providers import backends
from tests.providers.conftest import backend_fixture
from tests.support.images import png, size_of

CATALOGUE = Catalogue.load()
MAI_26 = CATALOGUE.get("azure/mai-image-2.6")

backend = backend_fixture(backends.azure_mai)


def edit(**changes: object) -> UpstreamCall:
    base = UpstreamCall(
        model=MAI_26,
        prompt="put a hat on the fox",
        size=None,
        count=1,
        operation=Operation.PROMPT_EDIT,
        images=(png(1200, 800), png(64, 64, (0, 0, 200))),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_the_form_repeats_image_parts_and_names_the_deployment() -> None:
    body, content_type = edit_form(edit())
    assert content_type.startswith("multipart/form-data; boundary=")
    assert body.count(b'name="image[]"') == 2
    assert b'name="model"\r\n\r\nMAI-Image-2.6\r\n' in body
    assert b"Content-Type: image/png" in body
    # No size or seed field: the route takes neither.
    assert b'name="size"' not in body and b'name="seed"' not in body


@pytest.mark.parametrize(
    ("changes", "field"),
    [({"size": Size(1024, 1024)}, "size"), ({"images": (png(),) * 6}, "images")],
)
def test_what_the_edit_route_cannot_take_is_refused_naming_the_field(
    changes: dict[str, object], field: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        edit_form(edit(**changes))
    assert [v.field for v in caught.value.violations] == [field]


async def test_an_edit_keeps_the_first_images_proportions(
    backend: AzureMaiBackend, sandbox: SandboxServer
) -> None:
    result = await backend.run(edit(), Deadline.after(30))
    (image,) = result.images
    width, height = size_of(image.data)
    assert width * height <= 1024 * 1024 and abs(width / height - 1.5) < 0.02
    (received,) = sandbox.azure_mai.received
    assert received.body == {
        "model": "MAI-Image-2.6",
        "prompt": "put a hat on the fox",
        "images": 2,
        "edit": True,
    }


async def test_a_model_without_edits_is_refused_by_the_upstream(
    backend: AzureMaiBackend, sandbox: SandboxServer
) -> None:
    # A catalogue row claiming edits for a deployment of MAI-Image-2.
    mai_2 = replace(MAI_26, upstream_id="MAI-Image-2")
    with pytest.raises(UpstreamRejected):
        await backend.run(edit(model=mai_2), Deadline.after(30))
    assert sandbox.azure_mai.faults.stats.received == 1
