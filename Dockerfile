# Build stage: compile the release binary from the locked dependency set.
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin ctwa-leads

# Runtime stage: a slim image, a numeric non-root user (Kubernetes' runAsNonRoot needs a
# number), the database on a volume. Settings live in /app/config.toml, not in ENV, so a
# mounted file is what runs; CTWA_<SECTION>__<KEY> variables still win over it.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 ctwa \
    && useradd --system --uid 10001 --gid 10001 --home-dir /app --create-home ctwa \
    && mkdir -p /app/data && chown 10001:10001 /app/data
COPY --from=build /src/target/release/ctwa-leads /usr/local/bin/ctwa-leads
COPY docker/config.toml /app/config.toml
WORKDIR /app
USER 10001:10001
VOLUME ["/app/data"]
EXPOSE 8080 9091
# The probe reads the same settings as serve (file plus CTWA_ variables), so it follows the port.
# Start-up applies migrations first (an index rebuild on a large database takes seconds), so
# failures in the first minute do not count; the first success ends that period.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["ctwa-leads", "healthcheck", "--config", "/app/config.toml"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["ctwa-leads"]
CMD ["serve", "--config", "/app/config.toml"]
