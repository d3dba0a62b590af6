# calldesk's container image: one statically linked binary in an otherwise empty image.
#
#   scripts/image [TAG]        builds it with buildah (see deploy/README.md); or, with a registry:
#   docker build -t calldesk:0.1.0 .
#
# The runtime image is FROM scratch: the binary is linked statically against glibc (static-pie,
# `-C target-feature=+crt-static`), so the image holds no shell, no libc, no package manager,
# nothing to patch but calldesk itself. What glibc would otherwise load at run time is not needed:
# user names are never looked up (the user is numeric), and host names are resolved by the
# `files` and `dns` lookups that glibc (2.34 and later) builds into libc itself, reading the
# /etc/hosts and /etc/resolv.conf that the container runtime provides. scripts/image-check proves
# it by resolving `localhost` from inside the image.
#
# The image runs as uid/gid 65532 (the user the manifests in deploy/ run as), writes only to
# /data (its volume: the SQLite store) and /tmp (SQLite's temporary files; an emptyDir or a
# tmpfs), and works with a read-only root file system. No HEALTHCHECK: Kubernetes probes use
# gRPC health (grpc.health.v1.Health, open without a token).

# The build stage's image. scripts/image builds on the host instead (BINARY_FROM=host) where no
# registry is reachable; the result is the same binary.
ARG RUST_IMAGE=docker.io/library/rust:1.95-bookworm
# Where the runtime stage takes /out from: `build` (compiled in RUST_IMAGE) or `host`
# (target/image-root, prepared by scripts/image).
ARG BINARY_FROM=build

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
RUN RUSTFLAGS="-C target-feature=+crt-static" \
      cargo build --release --locked --target x86_64-unknown-linux-gnu \
 && mkdir -p /out/usr/local/bin /out/etc/ssl/certs /out/data /out/tmp \
 && cp target/x86_64-unknown-linux-gnu/release/calldesk /out/usr/local/bin/calldesk \
 && cp /etc/ssl/certs/ca-certificates.crt /out/etc/ssl/certs/ca-certificates.crt \
 && chmod 1777 /out/tmp

FROM scratch AS host
COPY target/image-root/ /out/

FROM ${BINARY_FROM} AS binary

FROM scratch AS runtime
# The binary, and the CA roots that --jwt-jwks https://…, --otlp-endpoint https://… and
# PostgreSQL's verify-full without sslrootcert trust (Debian's ca-certificates bundle).
COPY --from=binary /out/usr/ /usr/
COPY --from=binary /out/etc/ /etc/
COPY --from=binary /out/tmp/ /tmp/
COPY --from=binary --chown=65532:65532 /out/data/ /data/
# A name for uid 65532 in `ps` and `ls -l` (calldesk itself never looks one up).
COPY deploy/image/passwd deploy/image/group /etc/
USER 65532:65532
WORKDIR /data
VOLUME /data
# gRPC, gRPC-Web and the console (--listen); Prometheus metrics (--metrics-listen); SIP
# (--sip-listen, with --telephony sip: UDP and TCP).
EXPOSE 50051/tcp 9090/tcp 5060/udp 5060/tcp
ENTRYPOINT ["/usr/local/bin/calldesk"]
# Listening on every address needs --auth-tokens or --jwt-jwks (else calldesk refuses to start,
# saying so): give the whole command, as deploy/kubernetes.yaml does.
CMD ["serve", "--listen", "0.0.0.0:50051", "--data-dir", "/data", "--metrics-listen", "0.0.0.0:9090", "--log-format", "json"]
