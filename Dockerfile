# syntax=docker/dockerfile:1
#
# calmplane container image: a release build on Debian, run on distroless.
#
#   docker build -t ghcr.io/calmplane/calmplane:0.1.0 .
#
# The runtime image has no shell and no package manager, and runs as the
# distroless `nonroot` user (65532), the UID the Deployment in
# manifests/base expects.

# Keep in step with `rust-version` in Cargo.toml.
ARG RUST_VERSION=1.89

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
# The whole (filtered, see .dockerignore) tree: Cargo.toml names bench and
# example targets by path, and the binary embeds manifests/base/webhook.yaml.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin calmplane \
    && install -D -m 0755 target/release/calmplane /out/calmplane

# cc: glibc and libgcc, which the Rust binary links dynamically.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/calmplane /usr/local/bin/calmplane
USER 65532:65532
# mimalloc gives freed memory back to the OS at once instead of up to a
# second later: calmplane's memory bounds (src/budget.rs) assume it, since a
# client sending large bodies frees memory as fast as it can send them.
ENV MIMALLOC_PURGE_DELAY=0
# 9091: `calmplane lease-monitor`'s metrics port (manifests/monitoring).
EXPOSE 8443 9090 9091
ENTRYPOINT ["/usr/local/bin/calmplane"]
CMD ["serve", "--listen=0.0.0.0:8443", "--metrics-listen=0.0.0.0:9090", "--cert=/etc/calmplane/tls/tls.crt", "--key=/etc/calmplane/tls/tls.key"]
