#!/usr/bin/env bash
# Report an image's size and fail when it is over its budget.
# Usage: scripts/image_size.sh IMAGE BUDGET_MB
set -euo pipefail
image="$1"
budget_mb="$2"
bytes="$(${PODMAN:-podman} image inspect --format '{{.Size}}' "$image")"
mb=$((bytes / 1000000))
echo "image $image: ${mb} MB uncompressed (budget ${budget_mb} MB)"
if ((mb > budget_mb)); then
	echo "image_size.sh: $image is over its ${budget_mb} MB budget" >&2
	exit 1
fi
