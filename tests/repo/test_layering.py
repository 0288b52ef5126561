"""The dependency rules of DESIGN.md, enforced on every import statement.

rpc -> domain -> (ports); providers and storage implement the ports. The
domain imports no grpc, generated code, HTTP client or cloud SDK; a backend
imports only the domain and the shared plumbing (`server/providers/_shared`),
never another backend, the registry, the settings or the sandbox; only
`server/rpc`, `server/rest`, `server/cli` and the composition root touch
generated code.
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
PROVIDERS = SERVER / "providers"
# What a backend may import from this project.
BACKEND_MAY_IMPORT = ("server.domain", "server.providers._shared")


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


def _backends() -> list[str]:
    """Every backend package: each directory of `providers` but the shared one."""
    return sorted(p.name for p in PROVIDERS.iterdir() if p.is_dir() and p.name[0] not in "_.")


def _backend_modules() -> list[pathlib.Path]:
    return [p for name in _backends() for p in sorted((PROVIDERS / name).rglob("*.py"))]


def _own_project_imports(imports: set[str]) -> set[str]:
    return {i for i in imports if i == "server" or i.startswith("server.")}


@pytest.mark.parametrize("path", _backend_modules(), ids=lambda p: str(p.relative_to(PROVIDERS)))
def test_a_backend_imports_only_the_domain_and_the_shared_plumbing(path: pathlib.Path) -> None:
    own = f"server.providers.{path.relative_to(PROVIDERS).parts[0]}"
    allowed = (*BACKEND_MAY_IMPORT, own)
    project = _own_project_imports(_imports(path))
    assert sorted(project - set(_hits(project, allowed))) == []
    # grpc itself is allowed: it is the Vertex SDK's upstream transport. Our
    # own contract (generated code) is not.
    assert _hits(_imports(path), ("chuizi",)) == []


@pytest.mark.parametrize(
    "path", sorted((PROVIDERS / "_shared").rglob("*.py")), ids=lambda p: p.stem
)
def test_the_shared_plumbing_imports_no_backend(path: pathlib.Path) -> None:
    project = _own_project_imports(_imports(path))
    allowed = ("server.domain", "server.providers._shared")
    assert sorted(project - set(_hits(project, allowed))) == []


def test_every_backend_package_has_the_same_shape() -> None:
    for name in _backends():
        modules = {p.stem for p in (PROVIDERS / name).glob("*.py")}
        assert {"__init__", "backend", "request", "response", "errors"} <= modules, name


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
