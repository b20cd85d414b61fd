#!/usr/bin/env bash
# Builds the host image without a daemon or a registry, with Debian's
# buildah: the Dockerfile's runtime stage (FROM scratch) over a root
# filesystem assembled from an existing build (scripts/container-rootfs.sh),
# instead of the Dockerfile's build stage (which needs the rust image).
# BUILDAH_ROOT, if set, keeps the image storage there (the tests use a
# temporary one). Usage: scripts/build-image.sh TAG [TESSERA_BINARY] [PLUGIN_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
tag=$1
target=${CARGO_TARGET_DIR:-target}
bin=${2:-$target/release/tessera}
plugins=${3:-$target/wasm32-wasip2/release}
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
./scripts/container-rootfs.sh "$bin" "$plugins" "$ctx"
# The runtime stage, copying from the context instead of the build stage.
sed -n '/^# The runtime stage/,$p' Dockerfile | sed 's#--from=build ##; s# /image/# #' > "$ctx/Containerfile"
args=(--storage-driver vfs)
if [ -n "${BUILDAH_ROOT:-}" ]; then
    args+=(--root "$BUILDAH_ROOT/storage" --runroot "$BUILDAH_ROOT/run")
fi
buildah "${args[@]}" bud --isolation chroot --quiet -t "$tag" -f "$ctx/Containerfile" "$ctx"
