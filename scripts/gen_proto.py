"""Generate Python code (or a descriptor set for buf) from protos/.

Usage:
    python scripts/gen_proto.py OUT_DIR            # *_pb2.py, *_pb2.pyi, *_pb2_grpc.py
    python scripts/gen_proto.py --descriptor-set F # image for `buf lint`

The google/api protos come from the installed googleapis-common-protos
package, and the well-known types from grpcio-tools, so nothing is vendored.
The proto tree mirrors the Python package, so the output needs no import
rewriting; the script only adds the `__init__.py` files protoc does not write.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import google.api
from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"


def include_dirs() -> list[str]:
    googleapis = pathlib.Path(google.api.__path__[0]).parent.parent
    well_known = pathlib.Path(protoc.__file__).parent / "_proto"
    return [str(PROTOS), str(googleapis), str(well_known)]


def proto_files() -> list[str]:
    return sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))


def run_protoc(args: list[str]) -> None:
    argv = ["protoc", *(f"-I{d}" for d in include_dirs()), *args, *proto_files()]
    if protoc.main(argv) != 0:
        sys.exit("protoc failed")


def generate(out: pathlib.Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    run_protoc([f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}"])
    for proto in proto_files():
        package = (out / proto).parent
        while package != out:
            (package / "__init__.py").touch()
            package = package.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=pathlib.Path)
    parser.add_argument("--descriptor-set", type=pathlib.Path)
    args = parser.parse_args()
    if args.descriptor_set:
        args.descriptor_set.parent.mkdir(parents=True, exist_ok=True)
        run_protoc(
            [
                f"--descriptor_set_out={args.descriptor_set}",
                "--include_imports",
                "--include_source_info",
            ]
        )
    elif args.out:
        generate(args.out)
    else:
        parser.error("give OUT_DIR or --descriptor-set")


if __name__ == "__main__":
    main()
