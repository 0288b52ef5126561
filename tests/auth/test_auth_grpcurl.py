"""The README's grpcurl lines with the real grpcurl binary: the key goes in
`-H 'authorization: Bearer ck-...'`; without it the error names the reason."""

from __future__ import annotations

import asyncio
import json
import pathlib
import sys

import grpc
import pytest

from tests.auth.conftest import AuthStack

pytestmark = pytest.mark.spawns_processes

GRPCURL = pathlib.Path(sys.executable).parent / "grpcurl"
SERVICE = "chuizi.image.v1.ImageService"


async def grpcurl(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        str(GRPCURL), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode or 0, out.decode(), err.decode()


def details(output: str) -> tuple[int, dict[str, dict[str, object]]]:
    error = json.loads(output)
    return error["code"], {d["@type"].rsplit("/", 1)[-1]: d for d in error.get("details", [])}


async def test_grpcurl_with_and_without_a_key(auth_stack: AuthStack) -> None:
    key = await auth_stack.new_key(images_per_day=1)
    target = auth_stack.stack.target
    request = json.dumps({"model": "azure/flux-kontext-pro", "prompt": "a red fox"})
    method = f"{SERVICE}/Generate"

    # Reflection needs no key.
    code, out, err = await grpcurl("-plaintext", target, "list")
    assert code == 0 and SERVICE in out.split(), err

    code, out, err = await grpcurl("-plaintext", "-format-error", "-d", request, target, method)
    status, kinds = details(out or err)
    assert status == grpc.StatusCode.UNAUTHENTICATED.value[0]
    assert kinds["google.rpc.ErrorInfo"]["reason"] == "INVALID_API_KEY"

    auth = ["-H", f"authorization: Bearer {key}"]
    code, out, err = await grpcurl("-plaintext", *auth, "-d", request, target, method)
    assert code == 0, err
    generation = json.loads(out)
    assert generation.get("generationId", generation.get("generation_id", "")).startswith("gen-")

    code, out, err = await grpcurl(
        "-plaintext", "-format-error", *auth, "-d", request, target, method
    )
    status, kinds = details(out or err)
    assert status == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert kinds["google.rpc.ErrorInfo"]["reason"] == "INSUFFICIENT_QUOTA"
    assert "google.rpc.QuotaFailure" in kinds and "google.rpc.RetryInfo" in kinds
