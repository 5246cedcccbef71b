# Multi-stage build: compile with the Rust toolchain, run on a small Debian image as non-root.
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin portbot

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /app portbot
WORKDIR /app
COPY --from=build /src/target/release/portbot /usr/local/bin/portbot
# Defaults and the demo catalog; mount your own over /app/config (or pass --config).
COPY config ./config
COPY message-templates ./message-templates
RUN mkdir -p /data && chown portbot /data
USER portbot
ENV PORTBOT__STORAGE__PATH=/data/portbot.db \
    PORTBOT__SERVER__BIND=0.0.0.0:3000
VOLUME ["/data"]
EXPOSE 3000
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s \
    CMD curl -fsS http://127.0.0.1:3000/healthz || exit 1
ENTRYPOINT ["portbot"]
CMD ["serve"]
