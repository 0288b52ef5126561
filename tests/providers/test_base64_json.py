"""JSON bodies whose base64 images are lifted out before parsing."""

from __future__ import annotations

import base64
import binascii
import json
import os

import pytest

from server.providers._shared.base64_json import b64decode, loads_with_base64

IMAGE = os.urandom(3000)
B64 = base64.b64encode(IMAGE).decode()


def _decoded(payload: dict[str, object]) -> list[bytes | None]:
    items = payload["data"]
    assert isinstance(items, list)
    out: list[bytes | None] = []
    for item in items:
        value = item.get("b64_json")
        out.append(None if value is None else b64decode(value))
    return out


def test_members_come_back_as_bytes_and_the_rest_as_json() -> None:
    body = json.dumps(
        {
            "data": [{"b64_json": B64}, {"b64_json": B64, "revised_prompt": "a fox"}],
            "request_meta": {"cost": 3.0, "note": 'text "b64_json":"not an image"'},
        },
        separators=(",", ":"),
    ).encode()
    payload = loads_with_base64(body, "b64_json")
    assert isinstance(payload["data"][0]["b64_json"], memoryview)
    assert _decoded(payload) == [IMAGE, IMAGE]
    assert payload["data"][1]["revised_prompt"] == "a fox"
    assert payload["request_meta"] == {"cost": 3.0, "note": 'text "b64_json":"not an image"'}


def test_whitespace_around_the_colon_is_allowed() -> None:
    body = f'{{ "data" : [ {{ "b64_json" :  "{B64}" }} ] }}'.encode()
    assert _decoded(loads_with_base64(body, "b64_json")) == [IMAGE]


def test_escaped_slashes_fall_back_to_the_plain_parser() -> None:
    escaped = B64.replace("/", "\\/")
    body = ('{"data":[{"b64_json":"' + escaped + '"}]}').encode()
    assert "\\/" in body.decode()
    assert _decoded(loads_with_base64(body, "b64_json")) == [IMAGE]


def test_null_and_missing_members_are_left_alone() -> None:
    body = b'{"data":[{"b64_json":null},{"finish_reason":"content_filter"}]}'
    payload = loads_with_base64(body, "b64_json")
    assert payload["data"] == [{"b64_json": None}, {"finish_reason": "content_filter"}]


def test_not_json_raises_value_error() -> None:
    with pytest.raises(ValueError):
        loads_with_base64(b'{"data":[{"b64_json":"QUJD"}', "b64_json")
    with pytest.raises(ValueError):
        loads_with_base64(b"<html>bad gateway</html>", "b64_json")


@pytest.mark.parametrize("value", [b"QUJ", b"QU=D", b"QUJD!", b"QU JD"])
def test_invalid_base64_is_refused(value: bytes) -> None:
    with pytest.raises(binascii.Error):
        b64decode(value)
