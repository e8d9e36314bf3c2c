#!/usr/bin/env bash
# Builds the three kresize images from their Dockerfiles, unmodified, with no Docker engine, and unpacks
# each one so tests can run it under container rules (tests/test_images.py, with bubblewrap).
#
#   hack/build-images.sh OUTDIR
#
# Needs root, Debian's buildah, debootstrap and python3; the network only to PyPI and the Debian mirror.
#
#   1. A stand-in for the Dockerfiles' base (python:3.11.14-slim-bookworm, which cannot be pulled here):
#      Debian bookworm minbase with Debian's python3 (3.11) and pip, made to look like the python slim
#      image to our Dockerfiles (`python` and `pip` in /usr/local/bin, pip may install as root), tagged
#      localhost/kresize-python-base:3.11. It is built once and reused while its key (a hash of this
#      script and the mirror) is unchanged: the key is an annotation of the image.
#   2. `buildah bud` of api/, operator/ and resizer-image/Dockerfile against that base, tagged
#      kresize/<component>:ci; an image whose inputs did not change since it was built is reused.
#   3. For each image: OUTDIR/<api|operator|resizer>/rootfs/ (its root filesystem), config.json (the
#      image config's Entrypoint, Env, User, WorkingDir) and a line in OUTDIR/sizes.txt (uncompressed MB).
#
# Idempotent: a rerun rebuilds only the images whose inputs changed and re-exports a rootfs only when its
# image changed. Every buildah call uses the vfs storage driver and chroot isolation (no overlayfs, no
# runc needed). Environment: BUILDAH_STORAGE_ROOT / BUILDAH_RUNROOT to keep the images elsewhere than
# buildah's default storage, DEBIAN_MIRROR to override the mirror taken from /etc/apt.
set -euo pipefail

if [[ $# -ne 1 ]]; then
  echo "usage: $0 OUTDIR" >&2
  exit 2
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mkdir -p "$1"
OUTDIR="$(cd "$1" && pwd)"

for tool in buildah debootstrap python3; do
  command -v "$tool" >/dev/null || { echo "$0: $tool is required (apt-get install -y buildah debootstrap)" >&2; exit 1; }
done
if [[ $(id -u) -ne 0 ]]; then
  echo "$0: run as root (debootstrap and buildah's vfs storage need it)" >&2
  exit 1
fi

BASE_IMAGE="localhost/kresize-python-base:3.11"
SUITE="bookworm"
# The Debian mirror the machine's apt uses (the deb822 sources first, then the one-line format).
mirror_from_apt() {
  local file uri
  for file in /etc/apt/sources.list.d/*.sources; do
    [[ -f $file ]] || continue
    uri=$(awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i ~ /\/debian\/?$/) { print $i; exit } }' "$file")
    [[ -n $uri ]] && { echo "$uri"; return; }
  done
  uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
    | awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /\/debian\/?$/) { print $i; exit } }')
  echo "${uri:-http://deb.debian.org/debian}"
}
MIRROR="${DEBIAN_MIRROR:-$(mirror_from_apt)}"
BASE_KEY="$( { cat "${BASH_SOURCE[0]}"; echo "$MIRROR"; } | sha256sum | cut -c1-16)"

STORAGE=(--storage-driver vfs)
[[ -n ${BUILDAH_STORAGE_ROOT:-} ]] && STORAGE+=(--root "$BUILDAH_STORAGE_ROOT")
[[ -n ${BUILDAH_RUNROOT:-} ]] && STORAGE+=(--runroot "$BUILDAH_RUNROOT")
bah() { buildah "${STORAGE[@]}" "$@"; }

START=$(date +%s)
STEP_START=$START
step() { STEP_START=$(date +%s); echo "==> $*"; }
done_step() { echo "    $* in $(( $(date +%s) - STEP_START ))s"; }

# Containers this run made, removed on exit (also on failure).
CONTAINERS=()
cleanup() {
  local ctr
  for ctr in "${CONTAINERS[@]}"; do
    [[ -n $ctr ]] || continue
    bah umount "$ctr" >/dev/null 2>&1 || true
    bah rm "$ctr" >/dev/null 2>&1 || true
  done
}
trap cleanup EXIT

# ---- 1. the base image ----------------------------------------------------------------------------------
build_base() {
  local ctr mnt old_id
  ctr=$(bah from --name "kresize-base-$BASE_KEY-$$" scratch)
  CONTAINERS+=("$ctr")
  mnt=$(bah mount "$ctr")
  # debootstrap mounts /proc and /sys in the target while it installs; they are gone when it returns.
  debootstrap --variant=minbase --include=python3,python3-pip,ca-certificates \
    --keyring=/usr/share/keyrings/debian-archive-keyring.gpg "$SUITE" "$mnt" "$MIRROR" >"$OUTDIR/debootstrap.log" 2>&1 \
    || { tail -n 30 "$OUTDIR/debootstrap.log" >&2; echo "$0: debootstrap failed (log: $OUTDIR/debootstrap.log)" >&2; return 1; }

  # Like the python slim image: `python` and `pip` on PATH in /usr/local/bin, and pip may install into
  # the system's Python (no PEP 668 marker).
  ln -sf /usr/bin/python3 "$mnt/usr/local/bin/python"
  ln -sf /usr/bin/pip3 "$mnt/usr/local/bin/pip"
  rm -f "$mnt"/usr/lib/python3.*/EXTERNALLY-MANAGED
  # TLS to PyPI goes through this network's CA: the machine's bundle, configured the way the host's pip is
  # (its cert and timeout; none of the host's local wheel folders or indexes).
  install -m 0644 /etc/ssl/certs/ca-certificates.crt "$mnt/etc/ssl/certs/ca-certificates.crt"
  cat >"$mnt/etc/pip.conf" <<'EOF'
[global]
cert = /etc/ssl/certs/ca-certificates.crt
default-timeout = 180
EOF
  # What the slim images leave out too.
  rm -rf "$mnt"/var/lib/apt/lists/* "$mnt"/var/cache/apt/*.bin "$mnt"/var/cache/apt/archives/*.deb \
    "$mnt"/usr/share/doc/* "$mnt"/usr/share/man/* "$mnt"/usr/share/info/* "$mnt"/var/log/*.log \
    "$mnt"/var/cache/debconf/*-old "$mnt"/var/lib/dpkg/*-old
  chroot "$mnt" python -c 'import ssl, pip; print("base: python", __import__("sys").version.split()[0], "pip", pip.__version__)'
  bah umount "$ctr" >/dev/null

  bah config --created-by "hack/build-images.sh (debootstrap $SUITE minbase)" \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env LANG=C.UTF-8 \
    --cmd python3 --annotation "dev.kresize.base-key=$BASE_KEY" "$ctr"
  old_id=$(bah inspect --type image --format '{{.FromImageID}}' "$BASE_IMAGE" 2>/dev/null || true)
  bah commit --quiet --rm "$ctr" "$BASE_IMAGE" >/dev/null
  [[ -n $old_id ]] && { bah rmi "$old_id" >/dev/null 2>&1 || true; }
  CONTAINERS=("${CONTAINERS[@]/$ctr}")
}

step "base image $BASE_IMAGE (key $BASE_KEY, mirror $MIRROR)"
have_key=$(bah inspect --type image --format '{{index .ImageAnnotations "dev.kresize.base-key"}}' "$BASE_IMAGE" 2>/dev/null || true)
if [[ $have_key == "$BASE_KEY" ]]; then
  done_step "cached"
else
  build_base
  done_step "built"
fi

# ---- 2. the component images ----------------------------------------------------------------------------
# No --layers: buildah 1.28 (bookworm) mishandles `RUN --mount=type=bind,from=builder` with its layer cache.
# When the builder stage comes from the cache the mount is empty (containers/buildah#4375), and the RUN
# step's cache ignores changes of the builder stage, so a stale install would be reused (#4522). Instead an
# image is rebuilt whole when its inputs changed and reused as it is otherwise: the key of its inputs (the
# base image, this script, .dockerignore, and the files of common/ and the component that the build
# context holds) is an annotation of the image.
inputs_key() {
  local dir=$1
  {
    echo "base $(bah inspect --type image --format '{{.FromImageID}}' "$BASE_IMAGE")"
    sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1
    # What .dockerignore keeps out of the context stays out of the key.
    cd "$ROOT" && find .dockerignore common "$dir" \( -name .git -o -name __pycache__ -o -name '*.egg-info' \
        -o -name .pytest_cache -o -name .ruff_cache -o -name .mypy_cache -o -name .venv -o -name build \
        -o -name dist -o -name tests -o -name node_modules \) -prune -o -type f ! -name '*.py[cod]' \
        ! -name .gitignore ! -name .env ! -name '*.pem' ! -name '*.key' ! -name 'kubeconfig*' -print0 \
      | LC_ALL=C sort -z | xargs -0 sha256sum
  } | sha256sum | cut -c1-16
}

# component name -> Dockerfile folder
declare -A DIRS=([api]=api [operator]=operator [resizer]=resizer-image)
COMPONENTS=(api operator resizer)
for name in "${COMPONENTS[@]}"; do
  image="kresize/$name:ci"
  key=$(inputs_key "${DIRS[$name]}")
  step "image $image from ${DIRS[$name]}/Dockerfile (inputs key $key)"
  old_id=$(bah inspect --type image --format '{{.FromImageID}}' "$image" 2>/dev/null || true)
  have_key=$(bah inspect --type image --format '{{index .ImageAnnotations "dev.kresize.inputs-key"}}' "$image" 2>/dev/null || true)
  if [[ $have_key == "$key" ]]; then
    done_step "cached"
    continue
  fi
  bah bud --isolation chroot --pull=never --no-cache --force-rm --build-arg "PYTHON_IMAGE=$BASE_IMAGE" \
    --annotation "dev.kresize.inputs-key=$key" \
    -f "$ROOT/${DIRS[$name]}/Dockerfile" -t "$image" "$ROOT" >"$OUTDIR/build-$name.log" 2>&1 \
    || { tail -n 40 "$OUTDIR/build-$name.log" >&2; echo "$0: building $image failed (log: $OUTDIR/build-$name.log)" >&2; exit 1; }
  # The image this one replaces would be left behind, untagged (a full copy of its root filesystem on vfs).
  if [[ -n $old_id && $old_id != "$(bah inspect --type image --format '{{.FromImageID}}' "$image")" ]]; then
    bah rmi "$old_id" >/dev/null 2>&1 || true
  fi
  done_step "built (log: $OUTDIR/build-$name.log)"
done

# ---- 3. root filesystems, configs, sizes ----------------------------------------------------------------
: >"$OUTDIR/sizes.txt.new"
for name in "${COMPONENTS[@]}"; do
  image="kresize/$name:ci"
  dest="$OUTDIR/$name"
  step "export $image to $dest"
  mkdir -p "$dest"
  id=$(bah inspect --type image --format '{{.FromImageID}}' "$image")
  if [[ -d $dest/rootfs && -f $dest/image-id && $(cat "$dest/image-id") == "$id" ]]; then
    done_step "unchanged"
  else
    rm -rf "$dest/rootfs" "$dest/image-id"
    ctr=$(bah from --pull=never --name "kresize-export-$name-$$" "$image")
    CONTAINERS+=("$ctr")
    mnt=$(bah mount "$ctr")
    rm -rf "$dest/rootfs.new" && mkdir -p "$dest/rootfs.new"
    cp -a "$mnt/." "$dest/rootfs.new/"
    mv "$dest/rootfs.new" "$dest/rootfs"
    bah umount "$ctr" >/dev/null
    bah rm "$ctr" >/dev/null
    CONTAINERS=("${CONTAINERS[@]/$ctr}")
    echo "$id" >"$dest/image-id"
    done_step "exported"
  fi
  bah inspect --type image "$image" | python3 -c '
import json, sys
config = json.load(sys.stdin)["OCIv1"]["config"]
out = {key: config.get(key) for key in ("Entrypoint", "Env", "User", "WorkingDir")}
json.dump({"Image": sys.argv[1], "Id": sys.argv[2], **out}, open(sys.argv[3], "w"), indent=2)
' "$image" "$id" "$dest/config.json"
  bytes=$(du -sb "$dest/rootfs" | cut -f1)
  awk -v n="$name" -v i="$image" -v b="$bytes" 'BEGIN { printf "%-9s %-22s %7.1f MB\n", n, i, b / 1e6 }' >>"$OUTDIR/sizes.txt.new"
done
mv "$OUTDIR/sizes.txt.new" "$OUTDIR/sizes.txt"
echo "==> sizes (uncompressed root filesystems):"
cat "$OUTDIR/sizes.txt"
echo "==> done in $(( $(date +%s) - START ))s"
