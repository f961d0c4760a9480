# syntax=docker/dockerfile:1
# conduit's image: dependencies compiled in their own cached layer
# (cargo-chef), the release build by the same script CI runs, and a final
# stage with the binary alone on distroless (glibc, CA certificates, no
# shell), run as a numeric non-root user. Probes are Kubernetes' (see k8s/),
# so there is no HEALTHCHECK.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS chef
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /src

# The dependency recipe changes only when manifests or the lock file do.
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
RUN SQLX_OFFLINE=true cargo chef cook --release --locked --recipe-path recipe.json --bin conduit
COPY . .
RUN scripts/build-release.sh \
    # Smoke step: the binary starts and parses its settings.
    && target/release/conduit --help >/dev/null

FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="conduit" \
      org.opencontainers.image.description="The RealWorld Conduit API as gRPC, gRPC-Web, Connect and JSON on one port" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"
COPY --from=builder /src/target/release/conduit /usr/local/bin/conduit
# 65532 is distroless's "nonroot"; numeric so that runAsNonRoot can verify it.
USER 65532:65532
# 8080: gRPC, gRPC-Web, Connect and JSON; 8079: /metrics, /healthz, /readyz.
EXPOSE 8080 8079
ENTRYPOINT ["/usr/local/bin/conduit"]
CMD ["serve"]
