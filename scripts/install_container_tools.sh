#!/usr/bin/env bash
# Install what `make image` and `make image-test` need from Debian's packages:
# podman (and buildah, which podman build uses), runc, and mmdebstrap for the
# offline base images. Does nothing when they are all on PATH.
set -euo pipefail
missing=()
for tool in podman buildah runc mmdebstrap; do
	command -v "$tool" >/dev/null || missing+=("$tool")
done
((${#missing[@]} == 0)) && exit 0
if ! command -v apt-get >/dev/null; then
	echo "install_container_tools.sh: install ${missing[*]} with your package manager" >&2
	exit 1
fi
SUDO=()
((EUID == 0)) || SUDO=(sudo)
echo "installing ${missing[*]} (and uidmap) from Debian packages"
"${SUDO[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq \
	"${missing[@]}" uidmap >/dev/null
