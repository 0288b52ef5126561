"""`GET /openapi.json`: the document lists exactly the routes the sidecar
serves, and every body field it declares is one the sidecar really reads."""

from __future__ import annotations

import httpx
import pytest
from starlette.routing import Route

from server.rest import health_routes, open_channel, rest_routes
from server.rest.openapi import openapi_document
from server.settings import Settings
from tests.rest.conftest import FakeStack

GENERATION_FIELDS = openapi_document()["paths"]["/v1/images/generations"]["post"]["requestBody"][
    "content"
]["application/json"]["schema"]["properties"]


async def test_the_document_is_served_and_lists_every_route(fake: FakeStack) -> None:
    async with httpx.AsyncClient(base_url=fake.base_url) as http:
        response = await http.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.1")
    channel = open_channel(Settings(), "127.0.0.1:1")
    try:
        routes = [*rest_routes(channel, Settings()), *health_routes(channel)]
    finally:
        await channel.close()
    served = {
        route.path.replace("{model:path}", "{model}")
        for route in routes
        if isinstance(route, Route)
    }
    assert set(document["paths"]) == served


@pytest.mark.parametrize("field", sorted(GENERATION_FIELDS))
async def test_each_declared_field_is_read_by_the_sidecar(fake: FakeStack, field: str) -> None:
    # A value of the wrong type for the declared field is refused naming it.
    wrong = 1.5 if GENERATION_FIELDS[field]["type"] != "integer" else "many"
    body = {"model": "azure/flux-kontext-pro", "prompt": "a fox", field: wrong}
    async with httpx.AsyncClient(base_url=fake.base_url) as http:
        response = await http.post("/v1/images/generations", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == field
