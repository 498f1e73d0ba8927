# distill-guard container image: built with the official Rust image, run on
# Debian slim as an unprivileged user (uid 10001), no shell needed at run
# time (the health check is the binary itself).
#
#   docker build --build-arg GIT_COMMIT="$(git rev-parse --short HEAD)" -t distill-guard .
#   docker run --rm -p 8080:8080 -p 9901:9901 \
#     -e DISTILL_GUARD_HASH_SECRET="$(openssl rand -hex 32)" \
#     -e DISTILL_GUARD_ADMIN_TOKEN="$(openssl rand -hex 32)" distill-guard
#
# The build context leaves .git out (.dockerignore), so build.rs cannot ask
# git: GIT_COMMIT is what `distill-guard --version` reports ("unknown"
# without it). The config is deploy/container/distill-guard.toml; mount
# another over /etc/distill-guard/distill-guard.toml to change it.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
ARG GIT_COMMIT=
ENV DISTILL_GUARD_GIT_COMMIT=${GIT_COMMIT}
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin distill-guard \
    && install -D -m 0755 target/release/distill-guard /out/distill-guard \
    && /out/distill-guard --version

FROM debian:${DEBIAN_RELEASE}-slim
# Upstream TLS trusts the web PKI roots compiled into the binary: no
# ca-certificates package needed.
RUN groupadd --system --gid 10001 distill-guard \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin distill-guard \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/distill-guard
COPY --from=build /out/distill-guard /usr/local/bin/distill-guard
COPY deploy/container/distill-guard.toml /etc/distill-guard/distill-guard.toml
USER 10001:10001
# 8080: the proxy listener; 9901: the admin listener (health, metrics).
EXPOSE 8080 9901
VOLUME ["/var/lib/distill-guard"]
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/distill-guard", "healthcheck", "--address", "127.0.0.1:9901", "--path", "/healthz"]
ENTRYPOINT ["/usr/local/bin/distill-guard"]
CMD ["serve", "--config", "/etc/distill-guard/distill-guard.toml"]
