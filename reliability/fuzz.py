"""Seeded, bounded fuzzers for both surfaces, driven by Hypothesis.

Each fuzzer is a Hypothesis property run for a fixed number of examples
from a fixed seed (no example database, generation only: no shrinking, so
the count and the time are bounded and a run is repeatable). The property
never fails: it sends one request and files the answer in a `Tally`.

What counts against the service: a REST 5xx, or a 4xx that is not an
OpenAI error body with a non-null `code`; a gRPC INTERNAL / UNKNOWN /
DATA_LOSS, or any status without the service's details. No upstream fault
is injected while fuzzing, so none of those is excusable. Valid requests
among the hostile ones really generate (against the sandbox), so the
fuzzers also cover the success paths.

Calls are synchronous (httpx.Client, a blocking gRPC channel) and run in a
worker thread: the suite's event loop keeps serving the emulators.
"""

from __future__ import annotations

import json
import random
import re
import time
from typing import Any

import grpc
import httpx
from chuizi.image.v1 import image_service_pb2 as pb
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from reliability.inputs import png_declaring
from reliability.tally import SERVER_FAULT_CODES, Tally
from server.domain.catalogue import Catalogue
from tests.support.images import alpha_mask, png

MODELS = [spec.name for spec in Catalogue.load()]
# Valid requests render real images in the sandbox: keep them small.
SIZES = ["1024x1024", "auto", "", "512x512", "1792x1024", "0x0", "-1x5", "99999x99999", "big"]
_SURROGATES = st.sampled_from(["\ud800", "\udfff", "\udbff\udc00"])
# Python will not print an int of over 4,300 digits, and json.dumps prints
# ints with it: such a number is drawn as a marker and spliced into the text.
_BIG = re.compile(r'"@@big:(\d+)@@"')
_ANY_INT = st.one_of(
    st.integers(-3, 10),
    st.integers(-(2**64), 2**64),
    st.builds(lambda digits: f"@@big:{digits}@@", st.integers(20, 6000)),
)


# Likewise nesting deeper than json.dumps itself can recurse.
_DEEP = re.compile(r'"@@deep:(\d+)@@"')


def _dumps(value: Any) -> bytes:
    text = json.dumps(value, ensure_ascii=True)
    text = _BIG.sub(lambda m: "9" * int(m.group(1)), text)
    return _DEEP.sub(lambda m: "[" * int(m.group(1)) + "]" * int(m.group(1)), text).encode()


def _text(max_size: int = 64) -> st.SearchStrategy[str]:
    return st.text(max_size=max_size)


def _hostile_text(max_size: int = 64) -> st.SearchStrategy[str]:
    # Lone surrogates are legal in JSON ("\ud800") and in Python, never in UTF-8.
    return st.one_of(
        _text(max_size),
        st.builds(lambda a, s, b: a + s + b, _text(8), _SURROGATES, _text(8)),
        st.just("x" * 4001),
    )


def _nested(depth: int) -> Any:
    value: Any = "deep"
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


_JSON_VALUES: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    _ANY_INT,
    st.floats(allow_nan=True, allow_infinity=True),
    _hostile_text(),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(_text(5), st.integers(), max_size=2),
    st.builds(_nested, st.sampled_from([3, 40, 200])),
    st.sampled_from([1000, 100_000]).map(lambda depth: f"@@deep:{depth}@@"),
)


def _field(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a plausible value, sometimes anything at all."""
    return st.one_of(valid, valid, _JSON_VALUES)


_GENERATION = st.fixed_dictionaries(
    {},
    optional={
        "model": _field(st.sampled_from(MODELS)),
        "prompt": _field(st.sampled_from(["a red fox", "a lighthouse at dusk"])),
        "n": _field(st.integers(0, 6)),
        "size": _field(st.sampled_from(SIZES)),
        "response_format": _field(st.sampled_from(["url", "b64_json", "png"])),
        "stream": _field(st.booleans()),
        "seed": _field(st.integers(-1, 2**32)),
        "quality": _JSON_VALUES,
        "user": _JSON_VALUES,
    },
)
_VALID_MODELS = [
    "azure/flux-kontext-pro",
    "google/imagen-4.0-fast",
    "azure/mai-image-2",
    "bedrock/stability-stable-image-core",
    "bailian/wan2.7-image",
]
# A real request (it generates against the sandbox), with OpenAI's extras.
_VALID_GENERATION = st.fixed_dictionaries(
    {"model": st.sampled_from(_VALID_MODELS), "prompt": st.just("a red fox")},
    optional={
        "n": st.integers(1, 2),
        "response_format": st.sampled_from(["url", "b64_json"]),
        "stream": st.booleans(),
        "size": st.sampled_from(["1024x1024", "auto"]),
        "quality": st.sampled_from(["high", "auto"]),
    },
)
_AUTHORIZATION = st.one_of(
    st.none(),
    st.none(),
    st.none(),
    st.just(b"Bearer ck-reliability"),
    st.builds(lambda k: b"Bearer " + b"k" * k, st.integers(5000, 20_000)),
    # Any bytes HTTP allows in a header value (h11 refuses to send others).
    st.lists(
        st.sampled_from([*range(0x21, 0x7F), *range(0x80, 0x100)]), min_size=1, max_size=40
    ).map(bytes),
)


@st.composite
def _generation_body(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["valid"] * 3 + ["object"] * 14 + ["not-object", "bytes", "deep"]))
    if kind == "valid":
        return _dumps(draw(_VALID_GENERATION))
    if kind == "object":
        return _dumps(draw(_GENERATION))
    if kind == "not-object":
        return _dumps(draw(_JSON_VALUES))
    if kind == "deep":
        depth = draw(st.sampled_from([1000, 100_000]))
        return b'{"prompt": ' + b"[" * depth + b"]" * depth + b"}"
    return draw(st.binary(max_size=256))


_IMAGES = st.sampled_from(["png", "png", "mask", "bomb-9000", "bomb-50000", "junk", "empty"])
_IMAGE_BYTES: dict[str, bytes] = {}


def _image(kind: str) -> bytes:
    if kind not in _IMAGE_BYTES:
        _IMAGE_BYTES[kind] = {
            "png": lambda: png(64, 64),
            "mask": lambda: alpha_mask(64, 64),
            "bomb-9000": lambda: png_declaring(9000, 9000),
            "bomb-50000": lambda: png_declaring(50_000, 50_000),
            "junk": lambda: b"\x89PNG\r\n\x1a\n" + random.Random(7).randbytes(200),
            "empty": lambda: b"",
        }[kind]()
    return _IMAGE_BYTES[kind]


_FORM_TEXT = st.one_of(
    st.sampled_from(["1", "0", "5", "true", "auto", "inpaint", "url", "b64_json"]),
    st.text(max_size=30).filter(lambda t: not any("\ud800" <= c <= "\udfff" for c in t)),
    st.builds(lambda d: "9" * d, st.integers(30, 6000)),
)
_EDIT_MODELS = st.sampled_from(
    ["azure/flux-kontext-pro", "bedrock/stability-inpaint", "bedrock/stability-fast-upscale"]
)


@st.composite
def _edit_form(draw: st.DrawFn) -> tuple[list[tuple[str, Any]], dict[str, str]]:
    if draw(st.integers(0, 9)) == 0:  # a real edit, one in ten
        return [("image", ("image.png", _image("png"), "image/png"))], {
            "model": "azure/flux-kontext-pro",
            "prompt": "make it blue",
        }
    files: list[tuple[str, Any]] = []
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from(["image", "image[]", "image[0]", "mask", "other"]))
        files.append((name, (f"{name}.png", _image(draw(_IMAGES)), "image/png")))
    data = {
        name: draw(value)
        for name, value in (
            ("model", st.one_of(_EDIT_MODELS, _FORM_TEXT)),
            ("prompt", st.one_of(st.just("make it blue"), _FORM_TEXT)),
            ("n", _FORM_TEXT),
            ("size", st.sampled_from(SIZES)),
            ("operation", _FORM_TEXT),
            ("stream", _FORM_TEXT),
            ("seed", _FORM_TEXT),
        )
        if draw(st.booleans())
    }
    return files, data


def _settings(examples: int) -> settings:
    """Bounded and repeatable: a fixed count, no example database, no shrinking."""
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
    )


def _rest_outcome(tally: Tally, response: httpx.Response, what: str) -> None:
    status = response.status_code
    if status < 400:
        tally.add(f"{status}")
        return
    try:
        code = response.json()["error"]["code"]
    except Exception:
        code = None
    if status >= 500 or code is None:
        tally.add(f"{status}", server_error=True, example=f"{what}: {status} code={code}")
    else:
        tally.add(f"{status} {code}")


def fuzz_rest(base_url: str, examples: int, run_seed: int) -> Tally:
    """`examples` generation bodies and as many edit forms at the sidecar."""
    tally = Tally("REST fuzz")
    started = time.monotonic()
    client = httpx.Client(base_url=base_url, timeout=60)

    @seed(run_seed)
    @_settings(examples)
    @given(body=_generation_body(), authorization=_AUTHORIZATION)
    def generations(body: bytes, authorization: bytes | None) -> None:
        headers = {"content-type": "application/json"}
        if authorization is not None:
            headers["authorization"] = authorization  # type: ignore[assignment]
        try:
            response = client.post("/v1/images/generations", content=body, headers=headers)
        except httpx.HTTPError as error:
            tally.add("transport error", server_error=True, example=type(error).__name__)
            return
        _rest_outcome(tally, response, "generations")

    @seed(run_seed + 1)
    @_settings(examples)
    @given(form=_edit_form())
    def edits(form: tuple[list[tuple[str, Any]], dict[str, str]]) -> None:
        files, data = form
        try:
            response = client.post("/v1/images/edits", files=files or None, data=data)
        except httpx.HTTPError as error:
            tally.add("transport error", server_error=True, example=type(error).__name__)
            return
        _rest_outcome(tally, response, "edits")

    with client:
        generations()
        edits()
    tally.seconds = time.monotonic() - started
    return tally


# --- gRPC ---------------------------------------------------------------------

_PROTO_TEXT = st.one_of(
    st.text(max_size=40).filter(lambda t: not any("\ud800" <= c <= "\udfff" for c in t)),
    st.just("x" * 4001),
)
_INT32 = st.one_of(st.integers(-3, 8), st.integers(-(2**31), 2**31 - 1))
_ENUM = st.one_of(st.integers(0, 4), st.integers(-(2**31), 2**31 - 1))


def _generate_request(draw: st.DrawFn) -> pb.GenerateRequest:
    request = pb.GenerateRequest(
        model=draw(st.one_of(st.sampled_from(MODELS), _PROTO_TEXT)),
        prompt=draw(st.one_of(st.just("a red fox"), _PROTO_TEXT)),
        size=draw(st.one_of(st.sampled_from(SIZES), _PROTO_TEXT)),
        n=draw(_INT32),
        response_format=draw(_ENUM),
        request_id=draw(st.one_of(st.just(""), _PROTO_TEXT, st.just("r" * 200))),
    )
    if draw(st.booleans()):
        request.seed = draw(st.integers(0, 2**32 - 1))
    return request


def _edit_request(draw: st.DrawFn) -> pb.EditRequest:
    request = pb.EditRequest(
        model=draw(st.one_of(_EDIT_MODELS, _PROTO_TEXT)),
        prompt=draw(st.one_of(st.just("make it blue"), _PROTO_TEXT)),
        images=[_image(draw(_IMAGES)) for _ in range(draw(st.integers(0, 3)))],
        operation=draw(_ENUM),
        size=draw(st.sampled_from(SIZES)),
        n=draw(_INT32),
        response_format=draw(_ENUM),
    )
    if draw(st.booleans()):
        request.mask = _image(draw(_IMAGES))
    return request


@st.composite
def _grpc_call(draw: st.DrawFn) -> tuple[str, bytes]:
    """A method and a serialized body (sometimes not a valid message at all)."""
    method = draw(
        st.sampled_from(
            ["Generate", "StreamGenerate", "Edit", "StreamEdit", "GetGeneration", "ListModels"]
        )
    )
    kind = draw(st.sampled_from(["message"] * 8 + ["bytes", "truncated"]))
    if method in ("Generate", "StreamGenerate"):
        message: Any = _generate_request(draw)
    elif method in ("Edit", "StreamEdit"):
        message = _edit_request(draw)
    elif method == "GetGeneration":
        message = pb.GetGenerationRequest(
            generation_id=draw(st.one_of(st.just("gen-0123456789abcdef"), _PROTO_TEXT))
        )
    else:
        message = pb.ListModelsRequest()
    body = message.SerializeToString()
    if kind == "bytes":
        body = draw(st.binary(max_size=256))
    elif kind == "truncated" and len(body) > 2:
        body = body[: draw(st.integers(1, len(body) - 1))]
    return method, body


def fuzz_grpc(target: str, examples: int, run_seed: int) -> Tally:
    """`examples` calls, each a random method with a hostile body."""
    tally = Tally("gRPC fuzz")
    started = time.monotonic()
    limit = 64 * 1024 * 1024
    channel = grpc.insecure_channel(
        target,
        options=[
            ("grpc.max_send_message_length", limit),
            ("grpc.max_receive_message_length", limit),
        ],
    )
    service = "/chuizi.image.v1.ImageService/"

    @seed(run_seed + 2)
    @_settings(examples)
    @given(call=_grpc_call())
    def calls(call: tuple[str, bytes]) -> None:
        method, body = call
        try:
            if method.startswith("Stream"):
                for _ in channel.unary_stream(service + method)(body, timeout=60):
                    pass
            else:
                channel.unary_unary(service + method)(body, timeout=60)
        except grpc.RpcError as error:
            code = error.code().name  # type: ignore[attr-defined]
            details = dict(error.trailing_metadata() or ())  # type: ignore[attr-defined]
            # A status too large for the client's metadata limit arrives as
            # RESOURCE_EXHAUSTED: a retryable code in place of the real one.
            unexplained = "grpc-status-details-bin" not in details or (
                "metadata size exceeds" in (error.details() or "")  # type: ignore[attr-defined]
            )
            bad = code in SERVER_FAULT_CODES or (unexplained and code != "DEADLINE_EXCEEDED")
            example = f"{method}: {code} {error.details()!r}"[:160]  # type: ignore[attr-defined]
            tally.add(code, server_error=bad, example=example)
            return
        tally.add("OK")

    with channel:
        calls()
    tally.seconds = time.monotonic() - started
    return tally
