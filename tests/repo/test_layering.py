"""The dependency rules of DESIGN.md, enforced on every import statement.

rpc -> domain -> (ports); providers and storage implement the ports. The
domain imports no grpc, generated code, HTTP client or cloud SDK; providers
do not import each other (shared code lives in `server/providers/http.py`
and friends); only `server/rpc`, `server/rest`, `server/cli` and the
composition root touch generated code.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SERVER = ROOT / "server"

FORBIDDEN_IN_DOMAIN = (
    "grpc",
    "grpc_status",
    "grpc_health",
    "grpc_reflection",
    "chuizi",
    "google",
    "httpx",
    "aiohttp",
    "boto3",
    "botocore",
    "starlette",
    "uvicorn",
    "server.rpc",
    "server.rest",
    "server.providers",
    "server.storage",
    "server.sandbox",
    "server.app",
    "server.cli",
)
# Modules shared by several providers (not backends themselves).
SHARED_PROVIDER_MODULES = {
    "http",
    "registry",
    "limits",
    "base64_json",
    "azure_images",
    "aiohttp_transport",
    "__init__",
}


def _imports(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _modules(package: str) -> list[pathlib.Path]:
    return sorted((SERVER / package).rglob("*.py"))


def _hits(imports: set[str], prefixes: tuple[str, ...]) -> list[str]:
    return sorted(i for i in imports if any(i == p or i.startswith(p + ".") for p in prefixes))


@pytest.mark.parametrize("path", _modules("domain"), ids=lambda p: p.name)
def test_domain_imports_no_transport_or_sdk(path: pathlib.Path) -> None:
    assert _hits(_imports(path), FORBIDDEN_IN_DOMAIN) == []


def _backend_modules() -> list[pathlib.Path]:
    return [
        p
        for p in _modules("providers")
        if p.stem not in SHARED_PROVIDER_MODULES or p.parent.name != "providers"
    ]


@pytest.mark.parametrize("path", _backend_modules(), ids=lambda p: p.stem)
def test_providers_do_not_import_each_other(path: pathlib.Path) -> None:
    own = path.stem if path.parent.name == "providers" else path.parent.name
    others = {
        p.stem if p.parent.name == "providers" else p.parent.name for p in _backend_modules()
    } - {own}
    prefixes = tuple(f"server.providers.{name}" for name in others)
    assert _hits(_imports(path), prefixes) == []
    # grpc itself is allowed: it is the Vertex SDK's upstream transport. Our
    # own contract (generated code, the rpc layer) is not.
    assert _hits(_imports(path), ("chuizi", "server.rpc", "server.rest", "server.sandbox")) == []


@pytest.mark.parametrize("package", ["domain", "providers", "storage", "sandbox"], ids=str)
def test_generated_code_stays_at_the_edges(package: str) -> None:
    offenders = [
        str(p.relative_to(ROOT)) for p in _modules(package) if _hits(_imports(p), ("chuizi",))
    ]
    assert offenders == []


def test_rest_sidecar_is_only_a_grpc_client() -> None:
    prefixes = ("server.domain", "server.providers", "server.storage", "server.sandbox")
    offenders = [str(p.relative_to(ROOT)) for p in _modules("rest") if _hits(_imports(p), prefixes)]
    assert offenders == []


def test_composition_root_leaves_the_grpc_server_to_rpc() -> None:
    # server/app.py wires parts together; assembling the gRPC server (options,
    # health, reflection, drain) is server/rpc/server.py's job.
    imports = _imports(SERVER / "app.py")
    assert _hits(imports, ("grpc", "grpc_health", "grpc_reflection", "chuizi")) == []
