# syntax=docker/dockerfile:1
#
# fluent-ai-candle server image: build with the workspace, run the stripped binary on a slim
# Debian. Models are not baked in: mount a model directory on /models.
#
#   docker build -t fluent-ai-candle:0.1.0 .
#   docker run --rm -p 8080:8080 \
#       -v "$HOME/.cache/fluent-ai-candle/models:/models:ro" fluent-ai-candle:0.1.0
#
# The server listens on 0.0.0.0:8080 inside the container (the container's network is its
# boundary; set --api-key or put it behind an authenticating proxy before exposing it). Models
# are found by name in /models (FLUENT_AI_CANDLE_MODELS), e.g. `--model gemma3-270m`, or by a
# path under it. See docs/DEPLOY.md (not built in CI: no container engine or registry there).

ARG RUST_VERSION=1.89
ARG DEBIAN_RELEASE=bookworm
# The repository builds for the building machine's CPU (.cargo/config.toml: target-cpu=native);
# an image runs elsewhere, so it names a CPU level instead (x86-64-v3: AVX2/FMA, any x86 server
# since ~2015). Use x86-64-v4 for AVX-512 fleets, x86-64-v2 for old ones.
ARG TARGET_CPU=x86-64-v3

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
ARG TARGET_CPU
ENV RUSTFLAGS="-C target-cpu=${TARGET_CPU}"
WORKDIR /src
# The cache mounts keep the registry and target/ between builds (BuildKit), so a rebuild after
# a source change recompiles our crates only.
COPY Cargo.toml Cargo.lock ./
COPY crates crates
COPY benches benches
COPY xtask xtask
# The facade crate includes the README in its docs.
COPY README.md ./
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p fluent-ai-candle-cli \
    && install -D -m 0755 target/release/fluent-ai-candle /out/fluent-ai-candle \
    && strip /out/fluent-ai-candle

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# An unprivileged user; the model volume only needs to be readable by it.
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin fluent \
    && mkdir -p /models && chown 10001:10001 /models
COPY --from=build /out/fluent-ai-candle /usr/local/bin/fluent-ai-candle
ENV FLUENT_AI_CANDLE_MODELS=/models
# Loading copies each tensor out of the file and converts it; with glibc's defaults every
# large temporary is a fresh mmap whose pages the kernel zeroes, which doubled an 8B load
# (docs/DEPLOY.md, "Load time"). Keeping them on the heap for reuse avoids that.
ENV GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=17179869184
VOLUME ["/models"]
USER 10001:10001
EXPOSE 8080
# SIGTERM drains: new requests get 503, streams in flight finish (bounded), then it exits.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/fluent-ai-candle", "serve", "--host", "0.0.0.0", "--port", "8080", "--device", "cpu"]
CMD ["--model", "smollm2-135m-instruct"]
