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
# The defaults already listen on 0.0.0.0:6379 (clients) and 0.0.0.0:9379 (admin). Listen is
# not set here: a config file with [[group]] tables gives each group its own, and a top-level
# listen beside them is an error.
ENV SENTINEL_PROXY_METRICS_LISTEN=0.0.0.0:9379
HEALTHCHECK --interval=10s --timeout=3s CMD ["/usr/local/bin/sentinel-proxy", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/sentinel-proxy"]
