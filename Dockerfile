# syntax=docker/dockerfile:1
# braid: multi-stage build. The first stage compiles a release binary; the runtime image is distroless
# (glibc, CA certificates, no shell) and runs as a non-root user. No HEALTHCHECK: Kubernetes probes
# /api/ping (liveness) and /api/ready (readiness), see charts/braid.
#
#   docker build -t braid .
#   docker run -p 36789:36789 -p 36790:36790 braid

ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits do not rebuild them: a stub crate with the real manifests.
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
RUN mkdir -p src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src target/release/deps/braid-* target/release/deps/libbraid-* \
       target/release/.fingerprint/braid-* target/release/braid*
COPY src ./src
COPY migrations ./migrations
# COPY keeps the files' old modification times; touch them so cargo rebuilds the crate.
RUN touch src/main.rs src/lib.rs && cargo build --release --locked && cp target/release/braid /braid

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /braid /usr/local/bin/braid
# The embedded SQLite store (when no --store is given) lives here; mount a volume to keep it.
WORKDIR /home/nonroot
USER nonroot:nonroot
EXPOSE 36789 36790
ENTRYPOINT ["/usr/local/bin/braid"]
CMD ["serve"]
