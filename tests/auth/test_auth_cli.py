"""`image-service keys ...` as an operator runs it, against the store a
running server reads; and the client commands' `--api-key`."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import sys

import grpc
import pytest
from chuizi.image.v1 import image_service_pb2 as pb

from server.auth.keys import KEY_PATTERN, key_id_of
from tests.auth.conftest import AuthStack
from tests.auth.status_details import bearer

pytestmark = pytest.mark.spawns_processes

CLI = str(pathlib.Path(sys.executable).parent / "image-service")


async def cli(*args: str, db: pathlib.Path, **env: str) -> tuple[int, str, str]:
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith("IMAGE_SERVICE_")},
        "IMAGE_SERVICE_AUTH_DB": str(db),
        **env,
    }
    process = await asyncio.create_subprocess_exec(
        CLI,
        *args,
        env=environment,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode or 0, out.decode(), err.decode()


async def test_create_list_use_usage_and_revoke(auth_stack: AuthStack) -> None:
    db = auth_stack.db
    code, out, err = await cli(
        "keys",
        "create",
        "checkout-team",
        "--owner",
        "checkout@example.com",
        "--rpm",
        "60",
        "--images-per-day",
        "2000",
        "--monthly-budget",
        "500",
        "--models",
        "azure/*,google/*",
        db=db,
    )
    assert code == 0, err
    key = out.strip()
    assert KEY_PATTERN.fullmatch(key)
    key_id = key_id_of(key)
    assert key_id in err and key not in err

    code, out, _ = await cli("keys", "list", "--json", db=db)
    assert code == 0
    [listed] = json.loads(out)
    assert listed == {
        "key_id": key_id,
        "name": "checkout-team",
        "owner": "checkout@example.com",
        "created": listed["created"],
        "revoked": None,
        "rpm": 60,
        "images_per_day": 2000,
        "monthly_budget": "500.00000000",
        "models": ["azure/*", "google/*"],
    }
    assert key not in out and key.removeprefix("ck-")[:12] not in out

    stub = auth_stack.stack.stub
    generation = await stub.Generate(
        pb.GenerateRequest(model="google/imagen-4.0-fast", prompt="a fox", n=2),
        metadata=bearer(key),
    )
    code, out, _ = await cli("keys", "usage", key_id, "--json", db=db)
    assert code == 0
    usage = json.loads(out)
    assert {(p["images"], p["cost"]) for p in usage["usage"]} == {(2, generation.cost)}
    assert len(usage["usage"]) == 2

    code, _, err = await cli("keys", "revoke", key_id, db=db)
    assert code == 0, err
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ListModels(pb.ListModelsRequest(), metadata=bearer(key))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    code, out, _ = await cli("keys", "list", db=db)
    assert "revoked" in out


async def test_unknown_key_ids_and_bad_limits_are_refused(tmp_path: pathlib.Path) -> None:
    db = tmp_path / "auth.sqlite3"
    code, _, err = await cli("keys", "revoke", "key_000000000000", db=db)
    assert code == 2 and "no key" in err
    code, _, err = await cli("keys", "create", "x", "--monthly-budget", "lots", db=db)
    assert code == 2 and "--monthly-budget" in err


async def test_the_client_commands_send_the_api_key(auth_stack: AuthStack) -> None:
    key = await auth_stack.new_key()
    target = auth_stack.stack.target
    code, out, _ = await cli("models", "--target", target, "--api-key", key, db=auth_stack.db)
    assert code == 0 and "azure/flux-kontext-pro" in out
    code, out, _ = await cli(
        "models", "--target", target, db=auth_stack.db, IMAGE_SERVICE_API_KEY=key
    )
    assert code == 0 and "azure/flux-kontext-pro" in out
    code, _, err = await cli("models", "--target", target, db=auth_stack.db)
    assert code != 0 and "UNAUTHENTICATED" in err


async def test_an_unreachable_store_is_one_line_not_a_traceback(tmp_path: pathlib.Path) -> None:
    code, out, err = await cli(
        "keys", "list", db=tmp_path / "x", IMAGE_SERVICE_REDIS_URL="redis://127.0.0.1:1/0"
    )
    assert code == 1 and out == ""
    assert err.startswith("error: the key store is unavailable") and "Traceback" not in err
