# fedbft container image: Debian 12 slim, two stages.  See README.md, "Docker
# and Docker Compose".  Build:  docker build -t fedbft:0.1.0 .
#
# The build stage runs deploy/docker/build-stage.sh, which the test suite also
# runs directly on a Debian 12 host (tests/integration/deploy_test.sh); the
# runtime stage holds the stripped binary, its shared libraries and a non-root
# user, nothing else (no compiler, no shell tools beyond Debian's base).

FROM debian:bookworm-slim AS build
# The packages first, in their own layer: a source change does not refetch them.
COPY deploy/docker/build-stage.sh /src/deploy/docker/build-stage.sh
RUN /src/deploy/docker/build-stage.sh --deps-only
COPY . /src
RUN SRC=/src BUILD=/build DESTDIR=/out PREFIX=/usr /src/deploy/docker/build-stage.sh

FROM debian:bookworm-slim
# Exactly the libraries `ldd fedbft` names beyond libc (the test checks this
# list against ldd and dpkg -S).
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
        libsodium23 libuv1 libprotobuf-c1 libxxhash0 libsqlite3-0 libjansson4 libhttp-parser2.9 \
 && rm -rf /var/lib/apt/lists/*
# A fixed uid/gid, so volumes and Kubernetes' runAsUser/fsGroup can name it.
# /etc/fedbft is the user's so that a fresh volume mounted there (Compose's
# init step) is writable by it; the key file must be its, mode 0600.
RUN groupadd --system --gid 10001 fedbft \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/fedbft \
            --no-create-home --shell /usr/sbin/nologin fedbft \
 && install -d -o 10001 -g 10001 -m 0700 /var/lib/fedbft \
 && install -d -o 10001 -g 10001 -m 0750 /etc/fedbft
COPY --from=build /out/usr/bin/fedbft /usr/bin/fedbft
COPY --from=build /out/usr/share/doc/fedbft/examples/ /usr/share/doc/fedbft/examples/

USER 10001:10001
WORKDIR /var/lib/fedbft
# data_dir: fedbft.db* (log, checkpoints, state) and admin.sock.
VOLUME ["/var/lib/fedbft"]
# The ports `fedbft cluster init --hosts ...` gives every replica (base 7000):
# replicas 7000, clients 7100, HTTP 7200 (/health, /ready, /metrics, /v1).
EXPOSE 7000 7100 7200
# Healthy = ready: connected to a quorum, in an active view, not fetching state.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["fedbft", "probe", "--host", "127.0.0.1", "--port", "7200", "--path", "/ready", "--timeout-ms", "3000"]
ENTRYPOINT ["fedbft"]
CMD ["run", "--config", "/etc/fedbft/node.json"]
