#!/usr/bin/env bash
# Download the image's runtime dependencies (plus hatchling, to build the
# project, and a current pip, to install) as wheels for the image's Python into container/wheels/.
#
# This runs pip on the host, so it uses the host's package index configuration
# as it is (pip.conf, PIP_* variables, a proxy's CA certificate), and the image
# build then installs with --no-index: nothing about the index has to be copied
# into the build. The wheels are chosen for the image's interpreter (CPython
# 3.11, glibc x86_64 as in Debian 12), not the host's, so any host Python works.
#
# Usage: scripts/stage_wheels.sh [PYTHON]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${1:-python3}"
DEST=container/wheels
STAGE="$(mktemp -d "$DEST/.stage.XXXXXX")"
trap 'rm -rf "$STAGE"' EXIT

"$PYTHON" -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' >"$STAGE/requirements.txt"
platforms=()
for tag in manylinux2014_x86_64 manylinux_2_17_x86_64 manylinux_2_24_x86_64 manylinux_2_28_x86_64 \
	manylinux_2_31_x86_64 manylinux_2_34_x86_64 manylinux_2_36_x86_64; do
	platforms+=(--platform "$tag")
done
# pip evaluates environment markers with the host's own interpreter, not the
# target's: redis needs async-timeout only below Python 3.11.3, which Debian
# 12's 3.11.2 is and a newer host is not. Such marker-only dependencies of the
# image's Python are named here.
TARGET_ONLY=("async-timeout>=4.0.3")
echo "staging runtime wheels for CPython 3.11 linux x86_64 into $DEST/"
"$PYTHON" -m pip download --quiet --dest "$STAGE" --only-binary=:all: \
	--implementation cp --python-version 3.11 --abi cp311 "${platforms[@]}" \
	-r "$STAGE/requirements.txt" "${TARGET_ONLY[@]}" hatchling pip 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2)
# Replace the old set only once the new one is complete.
find "$DEST" -maxdepth 1 -name '*.whl' -delete
mv "$STAGE"/*.whl "$DEST"/
echo "staged $(find "$DEST" -maxdepth 1 -name '*.whl' | wc -l) wheels ($(du -sh "$DEST" | cut -f1))"
