# Multi-stage build: compile in the Rust image, run in a slim Debian image as a non-root user.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin sentinel-proxy

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --no-create-home sentinel-proxy
COPY --from=build /src/target/release/sentinel-proxy /usr/local/bin/sentinel-proxy
USER 10001
EXPOSE 6379 9379
# The defaults already listen on 0.0.0.0:6379 (clients) and 0.0.0.0:9379 (admin); no ENV is set
# here, so a configuration file's settings stand. The health check finds the admin address as
# the proxy does from the environment (SENTINEL_PROXY_METRICS_LISTEN, or SENTINEL_PROXY_CONFIG's
# file), else the default: name a file with SENTINEL_PROXY_CONFIG rather than --config when it
# moves the admin port.
HEALTHCHECK --interval=10s --timeout=3s CMD ["/usr/local/bin/sentinel-proxy", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/sentinel-proxy"]
