# syntax=docker/dockerfile:1
# One image with the three programs: cutover-proxy (the default command), cutover
# (the migration controller) and cutover-load (the load generator).
#   docker build -t cutover:0.1.0 .
#   docker run -p 8080:8080 -p 9901:9901 -v "$PWD/cutover.toml:/etc/cutover/config/cutover.toml:ro" cutover:0.1.0

# The toolchain the suite is tested with; the builder and runtime share Debian
# bookworm, so the binaries link against the same glibc.
ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-slim-bookworm AS builder
RUN apt-get update \
 && apt-get install -y --no-install-recommends pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The same script CI runs: cargo build --release --locked, binaries copied to /dist.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    scripts/build-release.sh /dist

FROM debian:bookworm-slim AS runtime
# ca-certificates: upstream TLS verifies against the system's roots by default.
# curl: the HEALTHCHECK. postgresql-client: pg_dump and psql for `cutover db`.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl postgresql-client \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 cutover \
 && useradd --uid 10001 --gid cutover --no-create-home --shell /usr/sbin/nologin cutover \
 && mkdir -p /etc/cutover/config /run/cutover \
 && chown cutover:cutover /run/cutover
COPY --from=builder /dist/cutover-proxy /dist/cutover /dist/cutover-load /usr/local/bin/
USER 10001:10001
# Data plane (listen.http) and admin API (admin.listen).
EXPOSE 8080 9901
HEALTHCHECK --interval=10s --timeout=2s --start-period=5s --retries=3 \
  CMD curl -fsS http://127.0.0.1:9901/healthz || exit 1
ENTRYPOINT ["cutover-proxy"]
CMD ["--config", "/etc/cutover/config/cutover.toml"]
