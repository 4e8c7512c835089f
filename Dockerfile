# warden's container image: built from the locked dependency set, run as a non-root user.
#
#   docker build -t warden .
#   docker run -p 9080:9080 -p 9090:9090 -e WARDEN_AGENT_TOKEN=... -v warden-ca:/var/lib/warden/ca warden
#
# The config is /etc/warden/warden.yaml (deploy/docker/warden.yaml here; mount your own over
# it). The CA warden mints leaves from lives in the /var/lib/warden/ca volume, so it survives
# a new container and agents keep trusting it. `docker stop` sends SIGTERM (warden drains for
# limits.shutdown_grace; give `docker stop -t` more than that); `docker kill -s HUP` reloads.

FROM rust:1.95-slim-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake make perl pkg-config g++ libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The line tables go to a file of their own (kept in this stage, /usr/local/lib/debug), so
# the binary in the image is about a third of the size cargo leaves.
RUN cargo build --release --locked --bin warden \
 && install -d /usr/local/lib/debug \
 && objcopy --only-keep-debug target/release/warden /usr/local/lib/debug/warden.debug \
 && objcopy --strip-debug --add-gnu-debuglink=/usr/local/lib/debug/warden.debug \
      target/release/warden /usr/local/bin/warden

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/warden --shell /usr/sbin/nologin warden \
 && install -d -o warden -g warden -m 0700 /var/lib/warden/ca
COPY --from=build /usr/local/bin/warden /usr/local/bin/warden
COPY deploy/docker/warden.yaml /etc/warden/warden.yaml
USER 10001:10001
VOLUME ["/var/lib/warden/ca"]
EXPOSE 9080 9090
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:9090/healthz"]
# Exec form: warden is PID 1 and receives SIGTERM and SIGHUP itself (it handles both).
ENTRYPOINT ["/usr/local/bin/warden"]
CMD ["run", "-c", "/etc/warden/warden.yaml"]
