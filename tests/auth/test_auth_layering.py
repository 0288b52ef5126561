"""Where authentication may live: the domain knows a `Caller` and two ports,
never Redis, SQLite or the key store; only server/rpc imports grpc; the REST
sidecar never checks a key itself."""

from __future__ import annotations

import ast
import pathlib

import pytest

SERVER = pathlib.Path(__file__).resolve().parents[2] / "server"


def imports(path: pathlib.Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def hits(names: set[str], prefixes: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names if any(n == p or n.startswith(p + ".") for p in prefixes))


@pytest.mark.parametrize("path", sorted((SERVER / "domain").rglob("*.py")), ids=lambda p: p.name)
def test_the_domain_knows_no_key_store(path: pathlib.Path) -> None:
    assert hits(imports(path), ("redis", "sqlite3", "server.auth")) == []


@pytest.mark.parametrize("path", sorted((SERVER / "auth").rglob("*.py")), ids=lambda p: p.name)
def test_the_key_store_speaks_no_grpc(path: pathlib.Path) -> None:
    assert hits(imports(path), ("grpc", "chuizi", "server.rpc", "server.rest")) == []


@pytest.mark.parametrize("path", sorted((SERVER / "rest").rglob("*.py")), ids=lambda p: p.name)
def test_the_rest_sidecar_decides_nothing_about_keys(path: pathlib.Path) -> None:
    assert hits(imports(path), ("server.auth", "redis", "sqlite3")) == []
