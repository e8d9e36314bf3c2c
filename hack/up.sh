#!/usr/bin/env bash
# `make up`: a kind cluster with kresize installed, the examples' sample images, then a sample job. Needs Docker
# and Python 3.11+ (for the virtualenv that seeds the samples). Idempotent.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CLUSTER="${KRESIZE_CLUSTER:-kresize}"
NAMESPACE="${KRESIZE_NAMESPACE:-kresize}"
TAG="${KRESIZE_TAG:-dev}"
API="http://localhost:30080"
SAMPLES="${KRESIZE_SAMPLES:-$ROOT/../shared/corpus/photos}"

say() { printf '\n==> %s\n' "$*"; }
command -v docker >/dev/null || { echo "make up needs Docker (docker CLI and a running engine)" >&2; exit 1; }
docker info >/dev/null 2>&1 || { echo "Docker is installed but its engine is not reachable (docker info failed)" >&2; exit 1; }

say "tools: kind, kubectl, helm (pinned, into ./bin)"
bash hack/tools.sh dev >/dev/null
export PATH="$ROOT/bin:$PATH"

say "kind cluster '$CLUSTER'"
if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  echo "exists"
else
  kind create cluster --name "$CLUSTER" --config manifests/kind-config.yaml --wait 120s
fi
kubectl config use-context "kind-$CLUSTER" >/dev/null

say "images"
for component in api operator resizer; do
  dir="$component"; [[ "$component" == resizer ]] && dir=resizer-image
  docker build --quiet -f "$dir/Dockerfile" -t "kresize/$component:$TAG" . >/dev/null
  kind load docker-image --name "$CLUSTER" "kresize/$component:$TAG" >/dev/null
  echo "kresize/$component:$TAG built and loaded"
done

say "helm upgrade --install kresize"
# --take-ownership: a cluster made with chart 0.1 has a CRD that Helm did not manage yet.
helm upgrade --install kresize charts/kresize --namespace "$NAMESPACE" --create-namespace --take-ownership \
  -f charts/kresize/values-kind.yaml --set image.tag="$TAG" --wait --timeout 5m
# Pods of a re-built :dev image must restart to pick it up.
for deployment in kresize-api kresize-operator; do
  kubectl -n "$NAMESPACE" rollout restart "deployment/$deployment" >/dev/null
  kubectl -n "$NAMESPACE" rollout status "deployment/$deployment" --timeout=180s
done

say "waiting for $API/readyz"
for _ in $(seq 1 90); do
  if curl -fsS "$API/readyz" >/dev/null 2>&1; then break; fi
  sleep 2
done
curl -fsS "$API/readyz" >/dev/null || { echo "the API is not ready: kubectl -n $NAMESPACE logs deploy/kresize-api" >&2; exit 1; }

say "sample images for manifests/examples/ (s3://kresize/samples/)"
make --no-print-directory install >/dev/null
.venv/bin/python hack/samples.py --endpoint localhost:30900 --namespace "$NAMESPACE"

say "the main job: every photo in $SAMPLES through the API"
shopt -s nullglob
photos=("$SAMPLES"/*.jpg "$SAMPLES"/*.jpeg "$SAMPLES"/*.png)
[[ ${#photos[@]} -gt 0 ]] || { echo "no images in $SAMPLES" >&2; exit 1; }
export KRESIZE_TOKEN KRESIZE_API_URL="$API"
KRESIZE_TOKEN="$(kubectl -n "$NAMESPACE" get secret kresize-api-tokens -o jsonpath='{.data.admin}' | base64 -d)"
targets="$(mktemp)"
trap 'rm -f "$targets"' EXIT
cat >"$targets" <<'JSON'
[{"name": "thumb", "width": 320, "height": 320, "fit": "cover", "format": "webp"},
 {"name": "large", "width": 1600, "height": 1600, "fit": "inside", "format": "jpeg"}]
JSON
# Exit code 3 (some files failed) still shows a working platform; anything else does not.
code=0
.venv/bin/kresize submit --wait --targets "$targets" "${photos[@]}" || code=$?
[[ $code -eq 0 || $code -eq 3 ]] || { echo "the sample job did not run (kresize exit code $code)" >&2; exit 1; }

cat <<TXT

kresize is up:
  Web page    $API/   (sign in with the admin token below)
  API         $API   (docs: $API/docs)
              TOKEN=\$(kubectl -n $NAMESPACE get secret kresize-api-tokens -o jsonpath='{.data.admin}' | base64 -d)
              curl -H "Authorization: Bearer \$TOKEN" -F files=@photo.jpg -F width=320 $API/v1/jobs
  CLI         KRESIZE_TOKEN=\$TOKEN .venv/bin/kresize submit --width 320 --wait photo.jpg   (kresize --help)
  S3          http://localhost:30900   (the bundled server: s3.server, MinIO by default)
  kubectl get rj -n $NAMESPACE     make e2e     make down
TXT
