#!/usr/bin/env bash
# `make down`: delete the kind cluster created by `make up`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="$ROOT/bin:$PATH"
CLUSTER="${KRESIZE_CLUSTER:-kresize}"
if ! command -v kind >/dev/null; then echo "kind is not installed (nothing to delete)"; exit 0; fi
if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  kind delete cluster --name "$CLUSTER"
else
  echo "no kind cluster named $CLUSTER"
fi
