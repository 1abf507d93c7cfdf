# syntax=docker/dockerfile:1
# Build stage: compile the release binary from the locked dependency set.
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin ctwa-leads

# Runtime stage: a slim image, a non-root user, the database on a volume.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /app --create-home ctwa \
    && mkdir -p /app/data && chown ctwa /app/data
COPY --from=build /src/target/release/ctwa-leads /usr/local/bin/ctwa-leads
COPY config.example.toml /app/config.toml
WORKDIR /app
USER ctwa
ENV CTWA_SERVER__LISTEN=0.0.0.0:8080 \
    CTWA_DATABASE__URL=sqlite:///app/data/ctwa-leads.db \
    CTWA_LOG__FORMAT=json
VOLUME ["/app/data"]
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=5s --start-period=5s --retries=3 \
    CMD ["ctwa-leads", "healthcheck", "--url", "http://127.0.0.1:8080/healthz"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["ctwa-leads"]
CMD ["serve", "--config", "/app/config.toml"]
