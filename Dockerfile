# wasmcast in a container: docker build -t wasmcast . && docker compose up
# Build stage: the toolchain rust-toolchain.toml pins.
FROM rust:1.95-slim-bookworm AS build
# openh264 is C++ with nasm assembly; libopus (AAC to Opus) builds with cmake; jemalloc with make.
# Debian's point releases replace package versions, so a pinned version would stop resolving; the base image's tag pins the release instead.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends g++ nasm cmake make \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The plugins built into the binary are WASI 0.2 components.
RUN rustup target add wasm32-wasip2
RUN cargo build --release --locked --bin wasmcast \
 && strip target/release/wasmcast

# Runtime stage: the binary, the default config and the sample clip, run as a non-root user.
FROM debian:bookworm-slim
RUN groupadd --system --gid 10001 wasmcast \
 && useradd --system --uid 10001 --gid 10001 --home-dir /srv/wasmcast --shell /usr/sbin/nologin wasmcast
WORKDIR /srv/wasmcast
COPY --from=build /src/target/release/wasmcast /usr/local/bin/wasmcast
COPY --chown=wasmcast:wasmcast config/ config/
COPY --chown=wasmcast:wasmcast media/sample.mp4 media/sample.mp4
# Numeric, so that a mounted volume's owner can be matched on the host (chown 10001).
USER 10001:10001
# RTSP, HTTP (push, player, API), RTP/RTCP over UDP, ICE over UDP.
EXPOSE 8554/tcp 8090/tcp 30000-30999/udp 8189/udp 8189/tcp
ENTRYPOINT ["wasmcast"]
CMD ["serve", "--config", "/srv/wasmcast/config/wasmcast.toml"]
