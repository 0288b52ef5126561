#!/usr/bin/env bash
# Build the image's two base images from Debian packages, for machines that
# reach only the package registries (no Docker Hub, no gcr.io).
#
#   <name>:runtime  what the service runs on: Python 3.11 and its standard
#                   library, CA certificates and a `nonroot` (65532) user, the
#                   same contents as gcr.io/distroless/python3-debian12:nonroot.
#                   Extracted, not installed: no shell, no apt, no dpkg.
#   <name>:builder  Debian minbase plus python3.11-venv, where the venv is made,
#                   and binutils, whose strip takes the debug information out
#                   of the venv's extension modules.
#
# Both come from the same Debian suite at the same moment, so the builder's
# /usr/bin/python3.11 is the runtime's, which is what the venv's symlink needs.
# Idempotent: an existing tag is kept unless REBUILD=1 or its package list
# (recorded in a label) is not the one below.
#
# Usage: scripts/build_base_image.sh [NAME]   (default: localhost/image-service-base)
set -euo pipefail

NAME="${1:-localhost/image-service-base}"
SUITE="${DEBIAN_SUITE:-bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
PODMAN="${PODMAN:-podman}"
# libstdc++6: grpcio's extension links it (distroless python3 carries it too).
RUNTIME_PACKAGES="python3.11-minimal,libpython3.11-stdlib,libstdc++6,ca-certificates,tzdata,netbase"

PACKAGES_LABEL=org.chuizi.base.packages
have() { # tag packages
	[[ "${REBUILD:-0}" != 1 ]] && $PODMAN image exists "$NAME:$1" &&
		[[ "$($PODMAN image inspect --format "{{index .Labels \"$PACKAGES_LABEL\"}}" "$NAME:$1")" == "$2" ]]
}

STAGE="$(mktemp -d)"
trap 'rm -rf "$STAGE"' EXIT

# Runs on the host with the root filesystem in $1: what a package's maintainer
# scripts would have done (extract runs none), then what the image must not carry.
cat >"$STAGE/runtime-hook.sh" <<'HOOK'
#!/bin/sh
set -eu
root="$1"
mkdir -p "$root/etc/ssl/certs" "$root/tmp" "$root/home/nonroot"
chmod 1777 "$root/tmp"
cat "$root"/usr/share/ca-certificates/mozilla/*.crt >"$root/etc/ssl/certs/ca-certificates.crt"
ln -sf /usr/share/zoneinfo/Etc/UTC "$root/etc/localtime"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$root/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
chown 65532:65532 "$root/home/nonroot"
rm -rf "$root"/usr/share/doc "$root"/usr/share/man "$root"/usr/share/info "$root"/usr/share/lintian \
	"$root"/var/lib/dpkg "$root"/var/lib/apt "$root"/var/cache/* "$root"/var/log/*
HOOK

cat >"$STAGE/builder-hook.sh" <<'HOOK'
#!/bin/sh
set -eu
rm -rf "$1"/usr/share/doc "$1"/usr/share/man "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*
HOOK
chmod +x "$STAGE"/*.sh

build() { # tag variant packages hook-option hook
	if have "$1" "$3"; then
		echo "base image $NAME:$1 exists (REBUILD=1 to rebuild)"
		return
	fi
	echo "building $NAME:$1 from Debian $SUITE with mmdebstrap ($2: $3)"
	mmdebstrap --quiet --variant="$2" --include="$3" "$4=$5 \"\$1\"" \
		"$SUITE" "$STAGE/$1.tar" "$MIRROR"
	$PODMAN import --quiet \
		--change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
		--change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
		--change "LABEL $PACKAGES_LABEL=$3" \
		"$STAGE/$1.tar" "$NAME:$1" >/dev/null
	echo "imported $NAME:$1"
}

# The extract variant runs no customize hooks: its last hook is --extract-hook.
build runtime extract "$RUNTIME_PACKAGES" --extract-hook "$STAGE/runtime-hook.sh"
build builder minbase "python3.11-venv,ca-certificates,binutils" --customize-hook "$STAGE/builder-hook.sh"
