# The Tessera host image: build the host and the shipped plugins, then a
# runtime image FROM scratch holding only the stripped binary, the libraries
# it links, the plugins, configs and CA certificates (scripts/container-rootfs.sh),
# running as the non-root user `tessera` (uid 10001).
#
#   docker build -t tessera .
#   docker run --rm -p 8080:8080 -e KAFKA_BOOTSTRAP=broker:9092 tessera
#   docker run --rm tessera run --config /etc/tessera/quickstart.toml   # the quickstart, offline
#
# Config: /etc/tessera/tessera.toml (mount your own, or set TESSERA_CONFIG),
# with ${VAR:-default} references filled from the environment (see README).
# State (tile store, plugin registry, dead letters) lives in /var/lib/tessera.

FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake binutils ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN rustup target add wasm32-wasip2
WORKDIR /src
COPY . .
RUN ./scripts/build-plugins.sh --quiet \
 && cargo build --release --locked -p tessera --bin tessera \
 && ./scripts/container-rootfs.sh target/release/tessera target/wasm32-wasip2/release /image

# The runtime stage (the test suite builds this stage from its own build).
FROM scratch
COPY --from=build /image/rootfs/ /
COPY --from=build --chown=10001:10001 /image/state/ /var/lib/tessera/
USER 10001:10001
WORKDIR /var/lib/tessera
ENV TESSERA_CONFIG=/etc/tessera/tessera.toml
VOLUME ["/var/lib/tessera"]
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/tessera"]
CMD ["run", "--serve"]
