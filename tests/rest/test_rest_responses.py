"""Generation protos -> the seed's JSON, byte for byte where it shows a shape."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from chuizi.image.v1 import image_service_pb2 as pb

from server.rest import responses, streaming
from tests.rest.conftest import FAKE_IMAGE, sample_generation, sample_image


def _body(generation: pb.Generation, *, b64: bool) -> bytes:
    return b"".join(responses.generation_chunks(generation, b64=b64))


def test_the_seed_response_byte_for_byte() -> None:
    """The seed's shape, with `x_chuizi` extended by what served the request."""
    generation = sample_generation(1)
    generation.images[0].url = "https://media.chuizi.ai/images/gen-xxxxxxxxxxxxxxxx.png"
    generation.generation_id = "gen-xxxxxxxxxxxxxxxx"
    generation.upstream_model = "FLUX.1-Kontext-pro"
    assert _body(generation, b64=False) == (
        b'{"created":1712000000,'
        b'"data":[{"url":"https://media.chuizi.ai/images/gen-xxxxxxxxxxxxxxxx.png"}],'
        b'"size":"1024x1024","x_chuizi":{"generation_id":"gen-xxxxxxxxxxxxxxxx","cost":"0.05000000",'
        b'"latency_ms":8500,"model":"azure/flux-kontext-pro",'
        b'"served_by":"azure/flux-kontext-pro","upstream_model":"FLUX.1-Kontext-pro",'
        b'"images":[{"index":0,"width":1024,"height":1024,"seed":null}]}}'
    )


def test_x_chuizi_says_a_routed_call_was_routed_and_an_unknown_cost_is_null() -> None:
    generation = sample_generation(2)
    generation.model = "azure/mai-image-2"
    generation.served_by = "azure/mai-image-2.6"
    generation.upstream_model = "MAI-Image-2.6"
    generation.cost = ""
    generation.warnings.append("azure/mai-image-2 was retired on 2026-08-15; served by ...")
    generation.images[1].seed = 8
    block = json.loads(_body(generation, b64=False))["x_chuizi"]
    assert block["cost"] is None
    assert (block["model"], block["served_by"], block["upstream_model"]) == (
        "azure/mai-image-2",
        "azure/mai-image-2.6",
        "MAI-Image-2.6",
    )
    assert block["warnings"] == ["azure/mai-image-2 was retired on 2026-08-15; served by ..."]
    assert [(i["index"], i["seed"]) for i in block["images"]] == [(0, None), (1, 8)]


def _count_encodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The length of each input base64-encoded from now on."""
    calls: list[int] = []
    real = base64.b64encode

    def counting(data: bytes) -> bytes:
        calls.append(len(data))
        return real(data)

    monkeypatch.setattr(responses.pybase64, "b64encode", counting)
    return calls


def test_b64_json_items_are_the_bytes_encoded_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _count_encodes(monkeypatch)
    real = base64.b64encode
    generation = sample_generation(3, inline=True)
    chunks = responses.generation_chunks(generation, b64=True)
    body = json.loads(b"".join(chunks))
    assert body["data"] == [{"b64_json": real(FAKE_IMAGE).decode()}] * 3
    assert calls == [len(FAKE_IMAGE)] * 3
    # Each encoded image is a chunk of its own, not copied into a joined body.
    assert chunks.count(real(FAKE_IMAGE)) == 3


def test_items_are_in_index_order_with_revised_prompt_only_when_set() -> None:
    generation = sample_generation(0)
    generation.images.extend([sample_image(1), sample_image(0)])
    generation.images[0].revised_prompt = "a red fox, watercolour"
    data = json.loads(_body(generation, b64=False))["data"]
    assert data == [
        {"url": "https://media.test/images/gen-0123456789abcdef-0.png"},
        {
            "url": "https://media.test/images/gen-0123456789abcdef-1.png",
            "revised_prompt": "a red fox, watercolour",
        },
    ]


def test_an_unstored_image_comes_inline_even_for_url_requests() -> None:
    generation = sample_generation(1)
    generation.images.append(sample_image(1, data=FAKE_IMAGE, stored=False))
    data = json.loads(_body(generation, b64=False))["data"]
    assert data[1] == {"b64_json": base64.b64encode(FAKE_IMAGE).decode()}
    assert None not in data[1].values()


def test_a_records_unstored_image_without_bytes_is_left_out() -> None:
    generation = sample_generation(1)
    generation.images.insert(0, sample_image(1, stored=False))
    assert json.loads(_body(generation, b64=False))["data"] == [
        {"url": "https://media.test/images/gen-0123456789abcdef-0.png"}
    ]


def test_failures_appear_only_on_partial_results() -> None:
    assert "failures" not in json.loads(_body(sample_generation(1), b64=False))["x_chuizi"]
    generation = sample_generation(1)
    generation.failures.add(image_count=2, reason="UPSTREAM_UNAVAILABLE", message="Upstream down.")
    assert json.loads(_body(generation, b64=False))["x_chuizi"]["failures"] == [
        {"image_count": 2, "code": "upstream_unavailable", "message": "Upstream down."}
    ]


def test_model_list_shape() -> None:
    model = pb.Model(
        name="google/imagen-4.0",
        provider="Google Vertex",
        max_size="2048x2048",
        sizes=["1024x1024", "2048x2048"],
        images_per_call=4,
        max_images_per_request=4,
        operations=[pb.OPERATION_GENERATE],
        price_per_image="0.04000000",
        configured=False,
        description="Google Imagen 4",
        status=pb.MODEL_STATUS_RETIRED,
        retirement_date="2026-08-17",
        successor="google/gemini-3.1-flash-image",
    )
    assert responses.model_list([model]) == {
        "object": "list",
        "data": [
            {
                "id": "google/imagen-4.0",
                "object": "model",
                "created": 0,
                "owned_by": "Google Vertex",
                "provider": "Google Vertex",
                "description": "Google Imagen 4",
                "max_size": "2048x2048",
                "sizes": ["1024x1024", "2048x2048"],
                "images_per_call": 4,
                "max_images_per_request": 4,
                "operations": ["generate"],
                "price_per_image": "0.04000000",
                "configured": False,
                "status": "retired",
                "retirement_date": "2026-08-17",
                "successor": "google/gemini-3.1-flash-image",
                "routes_to": None,
            }
        ],
    }


def test_an_active_model_with_an_unknown_price_lists_nulls_not_zero() -> None:
    listed = responses.model_object(pb.Model(name="azure/mai-image-2.6", price_per_image=""))
    assert (listed["status"], listed["price_per_image"], listed["successor"]) == (
        "active",
        None,
        None,
    )


def _event(chunks: list[bytes]) -> tuple[str, dict[str, Any]]:
    text = b"".join(chunks).decode()
    assert text.endswith("\n\n") and text.count("\n") == 3
    name_line, data_line, _, _ = text.split("\n")
    assert name_line.startswith("event: ") and data_line.startswith("data: ")
    return name_line[7:], json.loads(data_line[6:])


def test_image_event() -> None:
    image = sample_image(2, data=FAKE_IMAGE)
    image.revised_prompt = "line one\nline two"  # must not break the SSE framing
    name, data = _event(streaming.image_event("image_generation.completed", image, b64=True))
    assert name == "image_generation.completed"
    assert data.pop("created_at") > 1_700_000_000
    assert data == {
        "type": "image_generation.completed",
        "index": 2,
        "size": "1024x1024",
        "output_format": "png",
        "b64_json": base64.b64encode(FAKE_IMAGE).decode(),
        "revised_prompt": "line one\nline two",
    }
    _, url_data = _event(streaming.image_event("image_edit.completed", image, b64=False))
    assert url_data["url"] == image.url and "b64_json" not in url_data


def test_record_event_carries_urls_only() -> None:
    chunks = streaming.record_event(sample_generation(2, inline=True))
    # OpenAI's SDKs stop at [DONE]: the record after it is for raw readers.
    done, _, rest = b"".join(chunks).partition(b"\n\n")
    assert done == b"data: [DONE]"
    name, data = _event([rest])
    assert name == "x_chuizi.generation"
    assert data["type"] == "x_chuizi.generation"
    assert [set(item) for item in data["data"]] == [{"url"}, {"url"}]
    assert data["x_chuizi"]["generation_id"] == "gen-0123456789abcdef"


def test_a_large_image_is_encoded_piece_by_piece_as_it_is_sent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = _count_encodes(monkeypatch)
    real = base64.b64encode
    large = bytes(range(256)) * (responses.B64_PIECE * 5 // 2 // 256) + b"odd"
    generation = sample_generation(2, inline=True)
    generation.images[1].data = large
    chunks = responses.generation_chunks(generation, b64=True)
    assert calls == [len(FAKE_IMAGE)]  # the small image at once, the large one not yet
    blobs = [c for c in chunks if isinstance(c, responses.Base64Blob)]
    assert len(blobs) == 1 and len(blobs[0]) == len(real(large))
    body = b"".join(responses.body_pieces(chunks))
    # Each byte encoded once, in pieces of whole 3-byte groups but the last.
    assert calls[1:] == [responses.B64_PIECE, responses.B64_PIECE, len(large) % responses.B64_PIECE]
    assert json.loads(body)["data"] == [
        {"b64_json": real(FAKE_IMAGE).decode()},
        {"b64_json": real(large).decode()},
    ]
    assert len(body) == sum(len(c) for c in chunks)  # what Content-Length says
