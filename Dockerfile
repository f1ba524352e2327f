# syntax=docker/dockerfile:1
#
# Every image of the project from one file: a runtime target per binary.
#
#   docker build -t chat-stack .                          # the standalone stack (the last target)
#   docker build --target auth-service -t auth-service .  # auth-service, chat-service,
#                                                         # websocket-service, chat-operator
#   docker run -p 5001-5003:5001-5003 -v chat-data:/data chat-stack
#
# Build stages: cargo-chef compiles the dependencies from a recipe of the manifests alone, so
# a source change rebuilds only the workspace's own crates; one `cargo build` then makes all
# five binaries (they share most of their dependency tree), with the `dist` profile (thin LTO). Runtime stages: distroless
# (glibc, libgcc, CA certificates, no shell, no package manager) running as the numeric
# non-root user 65532.
#
# CI builds the runtime targets without a Docker engine: `buildah build --build-context
# builder=DIR` stands in a folder of host-built binaries, laid out as below (/out/bin,
# /out/data), for the builder stage (tests/images.sh).

ARG VERSION=0.1.0

FROM docker.io/library/rust:1.95-slim-bookworm AS chef
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /app

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
ENV CARGO_PROFILE_RELEASE_STRIP=symbols
# The stack image keeps its MongoDB and RabbitMQ backends (DATABASE_URL, RABBITMQ_URL), which a
# plain `cargo build -p chat-stack` leaves out.
ARG PACKAGES="-p auth-service -p chat-service -p websocket-service -p chat-stack -p chat-operator --features chat-stack/mongo,chat-stack/amqp"
COPY --from=planner /app/recipe.json recipe.json
# hadolint ignore=SC2086
RUN cargo chef cook --profile dist --locked --recipe-path recipe.json $PACKAGES
COPY . .
# hadolint ignore=SC2086
RUN cargo build --profile dist --locked $PACKAGES --bins \
    && mkdir -p /out/bin /out/data \
    && cp target/dist/auth-service target/dist/chat-service target/dist/websocket-service \
          target/dist/chat-stack target/dist/chat-operator /out/bin/

# What every runtime image shares.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
ARG VERSION
LABEL org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="https://github.com/chat-backend/chat-backend" \
      org.opencontainers.image.url="https://github.com/chat-backend/chat-backend" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.vendor="chat-backend" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"
USER 65532:65532
# Every binary drains on SIGTERM (in-flight requests finish, sockets close) before it exits.
STOPSIGNAL SIGTERM

FROM runtime AS auth-service
LABEL org.opencontainers.image.title="auth-service" \
      org.opencontainers.image.description="Chat backend: registration, login, JWTs, username lookup (port 5001)"
COPY --from=builder /out/bin/auth-service /usr/local/bin/auth-service
EXPOSE 5001
ENTRYPOINT ["/usr/local/bin/auth-service"]

FROM runtime AS chat-service
LABEL org.opencontainers.image.title="chat-service" \
      org.opencontainers.image.description="Chat backend: stores messages, publishes new_message events (port 5002)"
COPY --from=builder /out/bin/chat-service /usr/local/bin/chat-service
EXPOSE 5002
ENTRYPOINT ["/usr/local/bin/chat-service"]

FROM runtime AS websocket-service
LABEL org.opencontainers.image.title="websocket-service" \
      org.opencontainers.image.description="Chat backend: pushes new_message events to users' WebSockets (port 5003)"
COPY --from=builder /out/bin/websocket-service /usr/local/bin/websocket-service
EXPOSE 5003
ENTRYPOINT ["/usr/local/bin/websocket-service"]

FROM runtime AS chat-operator
LABEL org.opencontainers.image.title="chat-operator" \
      org.opencontainers.image.description="Chat backend: the ChatCluster Kubernetes operator (metrics on 8080)"
COPY --from=builder /out/bin/chat-operator /usr/local/bin/chat-operator
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/chat-operator"]

# The standalone stack, last so that a plain `docker build .` makes it: the three services in
# one process, users and messages in embedded files under /data (mount a volume there).
FROM runtime AS chat-stack
LABEL org.opencontainers.image.title="chat-stack" \
      org.opencontainers.image.description="Chat backend: auth (5001), chat (5002) and websocket (5003) in one process, data in /data"
# An empty /data owned by the runtime user: a new named volume mounted there takes this
# ownership, so the non-root process can write to it.
COPY --from=builder --chown=65532:65532 /out/data /data
ENV DATA_DIR=/data
VOLUME ["/data"]
EXPOSE 5001 5002 5003
COPY --from=builder /out/bin/chat-stack /usr/local/bin/chat-stack
ENTRYPOINT ["/usr/local/bin/chat-stack"]
