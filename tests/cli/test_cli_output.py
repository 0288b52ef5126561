"""The CLI's pure parts: requests from arguments, formatting, saving, dispatch."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import grpc
import httpx
import pytest
from chuizi.image.v1 import image_service_pb2 as pb
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

import server.cli
from server.cli import build_parser, client, files, main, output


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def saved_files(directory: Path) -> list[Path]:
    return sorted(directory.rglob("*"))


def pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def generation(**overrides: object) -> pb.Generation:
    fields: dict[str, object] = {
        "generation_id": "gen-0123456789abcdef",
        "model": "azure/flux-2-pro",
        "operation": pb.OPERATION_GENERATE,
        "prompt": "a red fox",
        "size": "1024x1024",
        "n": 2,
        "created": 1_700_000_000,
        "cost": "0.08000000",
        "latency_ms": 12345,
        "images": [
            pb.Image(
                index=1,
                url="http://media.test/media/images/gen-0123456789abcdef-1.png",
                mime_type="image/png",
                width=1024,
                height=1024,
                stored=True,
            ),
            pb.Image(
                index=0,
                url="http://media.test/media/images/gen-0123456789abcdef-0.png",
                mime_type="image/png",
                width=1024,
                height=768,
                stored=True,
            ),
        ],
    }
    fields.update(overrides)
    return pb.Generation(**fields)  # type: ignore[arg-type]


# --- requests ---------------------------------------------------------------------


def test_generate_arguments_become_the_request() -> None:
    args = parse(
        "generate",
        "--model",
        "google/imagen-4.0",
        "--prompt",
        "a fox",
        "-n",
        "3",
        "--size",
        "1536x1024",
        "--response-format",
        "b64_json",
        "--request-id",
        "req-1",
        "--seed",
        "0",
    )

    request = client.build_generate_request(args)

    assert request == pb.GenerateRequest(
        model="google/imagen-4.0",
        prompt="a fox",
        n=3,
        size="1536x1024",
        response_format=pb.RESPONSE_FORMAT_INLINE,
        request_id="req-1",
        seed=0,
    )
    assert request.HasField("seed")
    assert args.target == client.DEFAULT_TARGET
    assert args.timeout == client.DEFAULT_TIMEOUT_S
    assert args.func is client.generate_command


def test_output_flags_become_output_options() -> None:
    args = parse(
        "generate",
        "--model",
        "m",
        "--prompt",
        "p",
        "--quality",
        "high",
        "--output-format",
        "webp",
        "--output-compression",
        "0",
        "--background",
        "opaque",
        "--moderation",
        "low",
        "--user",
        "u-1",
        "--partial-images",
        "2",
    )

    assert client.build_generate_request(args).output == pb.OutputOptions(
        quality="high",
        output_format="webp",
        output_compression=0,
        background="opaque",
        moderation="low",
        user="u-1",
        partial_images=2,
    )


def test_generate_defaults_leave_optional_fields_unset() -> None:
    request = client.build_generate_request(parse("generate", "--model", "m", "--prompt", "p"))

    assert request.n == 0
    assert request.size == ""
    assert request.response_format == pb.RESPONSE_FORMAT_URL
    assert not request.HasField("seed")
    assert not request.HasField("output")


def test_edit_arguments_become_the_request() -> None:
    args = parse(
        "edit",
        "--model",
        "bedrock/stability-inpaint",
        "--image",
        "in.png",
        "--image",
        "ref.png",
        "--mask",
        "mask.png",
        "--operation",
        "inpaint",
        "--prompt",
        "a hat",
    )

    request = client.build_edit_request(args, [b"in", b"ref"], b"mask")

    assert args.image == [Path("in.png"), Path("ref.png")]
    assert list(request.images) == [b"in", b"ref"]
    assert request.mask == b"mask"
    assert request.operation == pb.OPERATION_INPAINT
    assert request.prompt == "a hat"
    assert args.func is client.edit_command


def test_edit_defaults_to_prompt_edit() -> None:
    args = parse("edit", "--model", "m", "--image", "in.png", "--prompt", "p")

    assert client.build_edit_request(args, [b"in"], None).operation == pb.OPERATION_PROMPT_EDIT


@pytest.mark.parametrize(
    "argv",
    [
        ["generate", "--model", "m", "--prompt", "p", "--size", "1024"],
        ["generate", "--model", "m", "--prompt", "p", "-n", "0"],
        ["generate", "--model", "m", "--prompt", "p", "--seed", "-1"],
        ["generate", "--model", "m", "--prompt", "p", "--timeout", "0"],
        ["generate", "--model", "m", "--prompt", "p", "--response-format", "png"],
        ["edit", "--model", "m", "--prompt", "p"],
        ["edit", "--model", "m", "--image", "a.png", "--operation", "generate"],
    ],
)
def test_bad_command_lines_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        parse(*argv)

    assert caught.value.code == 2


def test_get_and_models_commands_parse() -> None:
    get = parse("get", "gen-abc", "--out", "out", "--json", "--target", "svc:443")
    models = parse("models")

    assert (get.generation_id, get.out, get.json, get.target) == (
        "gen-abc",
        Path("out"),
        True,
        "svc:443",
    )
    assert get.func is client.get_command
    assert models.func is client.models_command


# --- formatting -----------------------------------------------------------------


def test_image_line_shows_index_size_and_url() -> None:
    image = pb.Image(index=2, url="http://m/x.png", width=512, height=768, stored=True)

    assert output.format_image_line(image) == "image 2: 512x768 http://m/x.png"


def test_image_line_for_an_unstored_image_says_inline() -> None:
    image = pb.Image(index=0, data=b"png", width=64, height=64, stored=False)

    assert output.format_image_line(image) == "image 0: 64x64 inline (not stored)"


def test_image_line_adds_the_revised_prompt() -> None:
    image = pb.Image(index=0, url="u", width=1, height=1, stored=True, revised_prompt="a fox, oil")

    assert output.format_image_line(image).splitlines() == [
        "image 0: 1x1 u",
        "  revised prompt: a fox, oil",
    ]


def test_generation_record_lists_id_cost_latency_and_failures() -> None:
    record = generation(
        n=4,
        request_id="req-1",
        filtered_count=1,
        failures=[
            pb.ImageFailure(
                image_count=1, reason="UPSTREAM_UNAVAILABLE", message="Upstream failed."
            )
        ],
    )

    assert output.format_generation(record).splitlines() == [
        "generation_id  gen-0123456789abcdef",
        "model          azure/flux-2-pro",
        "operation      generate",
        "images         2 of 4 requested",
        "cost           $0.08",
        "latency_ms     12345",
        "request_id     req-1",
        "filtered       1 image withheld by the safety filter",
        "failure        1 image: UPSTREAM_UNAVAILABLE: Upstream failed.",
    ]


def test_generation_record_with_images_adds_request_details_and_sorted_images() -> None:
    lines = output.format_generation(generation(), include_images=True).splitlines()

    assert "prompt         a red fox" in lines
    assert "size           1024x1024" in lines
    assert "created        2023-11-14T22:13:20+00:00" in lines
    assert lines[-2:] == [
        "image 0: 1024x768 http://media.test/media/images/gen-0123456789abcdef-0.png",
        "image 1: 1024x1024 http://media.test/media/images/gen-0123456789abcdef-1.png",
    ]


def test_models_table_has_one_aligned_row_per_model() -> None:
    models = [
        pb.Model(
            name="google/imagen-4.0",
            provider="Google Vertex",
            sizes=["1024x1024", "1536x1024"],
            images_per_call=4,
            operations=[pb.OPERATION_GENERATE],
            price_per_image="0.04000000",
            configured=True,
        ),
        pb.Model(
            name="bedrock/stability-inpaint",
            provider="AWS Bedrock",
            sizes=["1024x1024"],
            images_per_call=1,
            operations=[pb.OPERATION_INPAINT, pb.OPERATION_REMOVE_BACKGROUND],
            price_per_image="0.12500000",
            configured=False,
        ),
    ]

    lines = output.format_models(models).splitlines()

    assert lines[0].split() == [
        "NAME",
        "PROVIDER",
        "SIZES",
        "IMAGES/CALL",
        "OPERATIONS",
        "PRICE",
        "CONFIGURED",
    ]
    provider_column = len("bedrock/stability-inpaint") + 2
    assert lines[0].index("PROVIDER") == provider_column
    assert lines[1].index("Google Vertex") == provider_column
    assert lines[2].index("AWS Bedrock") == provider_column
    assert "1024x1024,1536x1024" in lines[1]
    assert "inpaint,remove_background" in lines[2]
    assert lines[1].split()[-2:] == ["$0.04", "yes"]
    assert lines[2].split()[-2:] == ["$0.125", "no"]
    assert all(line == line.rstrip() for line in lines)


@pytest.mark.parametrize(
    ("amount", "shown"),
    [
        ("0.04000000", "$0.04"),
        ("0.12500000", "$0.125"),
        ("0.00000000", "$0.00"),
        ("10.00000000", "$10.00"),
        ("0.00123400", "$0.001234"),
        ("not-a-number", "not-a-number"),
        ("NaN", "NaN"),
    ],
)
def test_usd_amounts_drop_trailing_zeros_but_keep_cents(amount: str, shown: str) -> None:
    assert output.format_usd(amount) == shown


def test_json_keeps_proto_field_names_and_zero_values() -> None:
    image = pb.Image(index=0, url="u", stored=False, data=b"\x00\x01")

    body = json.loads(output.to_json(image))

    assert body["mime_type"] == ""
    assert body["stored"] is False
    assert body["revised_prompt"] == ""
    assert body["data"] == "AAE="


def test_stream_json_is_one_line_per_message() -> None:
    message = pb.StreamGenerateResponse(generation=generation(prompt="一只狐狸"))

    text = output.to_json(message, indent=None)

    assert "\n" not in text
    assert "一只狐狸" in text
    assert json.loads(text)["generation"]["generation_id"] == "gen-0123456789abcdef"


# --- errors -----------------------------------------------------------------------


def rich_error_status() -> status_pb2.Status:
    return status_pb2.Status(
        code=code_pb2.INVALID_ARGUMENT,
        message="size: must be one of the model's sizes",
        details=[
            pack(
                error_details_pb2.ErrorInfo(
                    reason="INVALID_ARGUMENT",
                    domain="image.chuizi.ai",
                    metadata={"model": "google/imagen-4.0"},
                )
            ),
            pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field="size", description="must be one of the model's sizes"
                        )
                    ]
                )
            ),
            pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=12))),
            pack(error_details_pb2.Help()),
        ],
    )


def test_rpc_error_lists_the_status_details() -> None:
    text = output.format_rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        "size: must be one of the model's sizes",
        rich_error_status(),
    )

    assert text.splitlines() == [
        "error: INVALID_ARGUMENT: size: must be one of the model's sizes",
        "  reason: INVALID_ARGUMENT (image.chuizi.ai) model=google/imagen-4.0",
        "  size: must be one of the model's sizes",
        "  retry after: 12s",
        "  detail: type.googleapis.com/google.rpc.Help",
    ]


def test_rpc_error_without_details_is_one_line() -> None:
    text = output.format_rpc_error(grpc.StatusCode.UNAVAILABLE, "connection refused", None)

    assert text == "error: UNAVAILABLE: connection refused"


def aio_error(
    code: grpc.StatusCode, details: str, status: status_pb2.Status | None
) -> grpc.aio.AioRpcError:
    trailers = (
        grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString()))
        if status is not None
        else grpc.aio.Metadata()
    )
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailers, details, None)


def test_rich_status_is_read_from_an_aio_error() -> None:
    status = rich_error_status()
    error = aio_error(grpc.StatusCode.INVALID_ARGUMENT, status.message, status)

    assert output.rich_status(error) == status


def test_rich_status_is_none_when_absent_or_inconsistent() -> None:
    status = rich_error_status()

    assert output.rich_status(aio_error(grpc.StatusCode.INTERNAL, "x", None)) is None
    assert output.rich_status(aio_error(grpc.StatusCode.INTERNAL, status.message, status)) is None


@pytest.mark.parametrize(
    ("code", "exit_code"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, 2),
        (grpc.StatusCode.NOT_FOUND, 2),
        (grpc.StatusCode.ALREADY_EXISTS, 2),
        (grpc.StatusCode.UNAVAILABLE, 1),
        (grpc.StatusCode.DEADLINE_EXCEEDED, 1),
        (grpc.StatusCode.FAILED_PRECONDITION, 1),
        (grpc.StatusCode.INTERNAL, 1),
    ],
)
def test_exit_codes_separate_caller_errors(code: grpc.StatusCode, exit_code: int) -> None:
    assert client.exit_code_for(code) == exit_code


# --- saving -----------------------------------------------------------------------


def test_filename_uses_the_mime_type_then_the_url() -> None:
    png = pb.Image(index=0, mime_type="image/png", url="http://m/x.webp")
    from_url = pb.Image(index=1, url="http://m/images/x.JPG?sig=1")
    unknown = pb.Image(index=2, mime_type="image/gif", url="http://m/x")

    assert files.image_filename("gen-a", png) == "gen-a-0.png"
    assert files.image_filename("gen-a", from_url) == "gen-a-1.jpg"
    assert files.image_filename("gen-a", unknown) == "gen-a-2.bin"


def test_filename_cannot_escape_the_output_directory() -> None:
    image = pb.Image(index=0, mime_type="image/png")

    assert files.image_filename("../../etc/x", image) == "______etc_x-0.png"
    assert files.image_filename("", image) == "generation-0.png"


def test_images_to_save_prefers_streamed_copies_with_bytes() -> None:
    record = generation()
    streamed = {
        0: pb.Image(index=0, data=b"inline", stored=True, url="u0"),
        1: pb.Image(index=1, url="u1", stored=True),
        3: pb.Image(index=3, data=b"unstored", stored=False),
    }

    images = files.images_to_save(record, streamed)

    assert [image.index for image in images] == [0, 1, 3]
    assert images[0].data == b"inline"
    assert images[1] == record.images[0]
    assert images[2].data == b"unstored"


async def test_save_image_writes_inline_bytes_into_a_new_directory(tmp_path: Path) -> None:
    out = tmp_path / "out" / "nested"
    image = pb.Image(index=1, data=b"bytes", mime_type="image/webp")

    async with httpx.AsyncClient() as http:
        path = await files.save_image(out, "gen-a", image, http)

    assert path == out / "gen-a-1.webp"
    assert path.read_bytes() == b"bytes"


async def test_save_image_downloads_the_url(tmp_path: Path) -> None:
    requested: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requested.append(str(request.url))
        return httpx.Response(200, content=b"downloaded")

    image = pb.Image(index=0, url="http://media.test/media/images/gen-a-0.png", stored=True)
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        path = await files.save_image(tmp_path, "gen-a", image, http)

    assert requested == ["http://media.test/media/images/gen-a-0.png"]
    assert path == tmp_path / "gen-a-0.png"
    assert path.read_bytes() == b"downloaded"


async def test_save_image_fails_on_http_errors_and_on_nothing_to_save(tmp_path: Path) -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(404))
    async with httpx.AsyncClient(transport=transport) as http:
        with pytest.raises(httpx.HTTPStatusError):
            await files.save_image(tmp_path, "gen-a", pb.Image(url="http://m/a.png"), http)
        with pytest.raises(ValueError):
            await files.save_image(tmp_path, "gen-a", pb.Image(index=0), http)

    assert saved_files(tmp_path) == []


async def test_save_images_saves_what_it_can_and_reports_failure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = [pb.Image(index=0), pb.Image(index=1, data=b"ok", mime_type="image/png")]

    ok = await files.save_images(tmp_path, "gen-a", images, http_timeout=5, quiet=False)

    assert not ok
    assert (tmp_path / "gen-a-1.png").read_bytes() == b"ok"
    captured = capsys.readouterr()
    assert captured.out == f"saved {tmp_path / 'gen-a-1.png'}\n"
    assert (
        captured.err == "error: could not save image 0: image 0 has neither inline data nor a URL\n"
    )


# --- dispatch ---------------------------------------------------------------------


def test_main_runs_sync_and_async_handlers(monkeypatch: pytest.MonkeyPatch) -> None:
    def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        def sync_handler(args: argparse.Namespace) -> int:
            return 3

        async def async_handler(args: argparse.Namespace) -> int:
            return 4

        def none_handler(args: argparse.Namespace) -> None:
            return None

        subparsers.add_parser("sync-cmd").set_defaults(func=sync_handler)
        subparsers.add_parser("async-cmd").set_defaults(func=async_handler)
        subparsers.add_parser("none-cmd").set_defaults(func=none_handler)

    monkeypatch.setattr(server.cli.run, "register", register)

    assert main(["sync-cmd"]) == 3
    assert main(["async-cmd"]) == 4
    assert main(["none-cmd"]) == 0


def test_main_maps_ctrl_c_to_130(monkeypatch: pytest.MonkeyPatch) -> None:
    def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        async def interrupted(args: argparse.Namespace) -> int:
            raise KeyboardInterrupt

        subparsers.add_parser("interrupted").set_defaults(func=interrupted)

    monkeypatch.setattr(server.cli.run, "register", register)

    assert main(["interrupted"]) == 130


def test_main_without_a_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main([])

    assert caught.value.code == 2
    assert "COMMAND" in capsys.readouterr().err
