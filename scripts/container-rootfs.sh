#!/usr/bin/env bash
# Assembles the host image's root filesystem: the `tessera` binary (debug
# info stripped) with the shared libraries it links and their loader, the
# shipped plugins, the container configs and quickstart events, CA
# certificates, and a non-root `tessera` user (uid 10001). The Dockerfile's build stage runs it, and so does the
# test suite on the binary it built (then `FROM scratch` needs no registry).
# It writes OUT_DIR/rootfs (owned by root) and OUT_DIR/state, the empty
# state directory the image copies to /var/lib/tessera owned by the user.
# Usage: scripts/container-rootfs.sh TESSERA_BINARY PLUGIN_DIR OUT_DIR
set -euo pipefail
bin=$1 plugins=$2 dir=$3
root=$(cd "$(dirname "$0")/.." && pwd)
rm -rf "$dir"
out=$dir/rootfs
mkdir -p "$dir/state" "$out"/{usr/local/bin,opt/tessera/plugins,opt/tessera/data,etc/tessera,etc/ssl/certs,var/lib,tmp}
chmod 1777 "$out/tmp"
objcopy --strip-debug "$bin" "$out/usr/local/bin/tessera"
# The libraries the binary links, at the paths the loader looks them up.
for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
    mkdir -p "$out$(dirname "$lib")"
    cp -L "$lib" "$out$lib"
done
for p in json_parser windowed_counter late_default; do
    cp "$plugins/$p.wasm" "$out/opt/tessera/plugins/"
done
cp "$root/container/tessera.toml" "$out/etc/tessera/"
# The quickstart, pointed at the image's paths.
sed -e 's#data/events.ndjson#/opt/tessera/data/events.ndjson#' \
    -e 's#\.\./target/wasm32-wasip2/release/#/opt/tessera/plugins/#' \
    -e 's#"out/#"/var/lib/tessera/quickstart/#' \
    "$root/examples/quickstart.toml" > "$out/etc/tessera/quickstart.toml"
cp "$root/examples/data/events.ndjson" "$out/opt/tessera/data/"
cp -L /etc/ssl/certs/ca-certificates.crt "$out/etc/ssl/certs/"
printf 'root:x:0:0:root:/root:/sbin/nologin\ntessera:x:10001:10001:tessera:/var/lib/tessera:/sbin/nologin\n' > "$out/etc/passwd"
printf 'root:x:0:\ntessera:x:10001:\n' > "$out/etc/group"
