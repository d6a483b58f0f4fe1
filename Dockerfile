# Tally's container image, in three stages:
#   1. the dependencies alone, compiled from Cargo.toml and Cargo.lock with stub sources, so
#      this layer is cached until the dependencies change;
#   2. Tally itself;
#   3. a slim runtime image with only the binary, run as an unprivileged user.
# docker build -t tally .   (docker-compose.yml builds it as the `tally` service)
ARG RUST_VERSION=1.92

FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked --bin tally \
    && rm -rf src
COPY src src
COPY migrations migrations
COPY config config
# COPY keeps the files' times, which may be older than the stub build: touch so cargo rebuilds.
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin tally

FROM debian:bookworm-slim AS runtime
RUN groupadd --system --gid 10001 tally \
    && useradd --system --uid 10001 --gid tally --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin tally
WORKDIR /app
COPY --from=build /src/target/release/tally /usr/local/bin/tally
COPY config /app/config
USER 10001:10001
ENV TALLY__HTTP__BIND=0.0.0.0:8080
EXPOSE 8080
# `tally healthcheck` asks the local instance's /health/ready (no curl in the image).
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 CMD ["tally", "healthcheck"]
# SIGTERM (Docker's default stop signal) starts the graceful shutdown.
ENTRYPOINT ["tally"]
CMD ["serve"]
