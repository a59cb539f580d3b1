# Images for MIC and NMI, one build stage for both (as the original's Dockerfile):
#   docker build --target mic -t aadpodid/mic:v1.8.17 .
#   docker build --target nmi -t aadpodid/nmi:v1.8.17 .
# The chart's default image is "<image.repository>/<mic|nmi>.image>:<tag>" (values.yaml).
#
# Binaries link glibc dynamically (rustls with aws-lc-rs, no OpenSSL); the runtime images are
# the same Debian release as the builder so the glibc versions match.

ARG RUST_IMAGE=rust:1.95-slim-trixie

FROM ${RUST_IMAGE} AS builder
# aws-lc-sys builds C code with cmake.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake make g++ \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The toolchain is the one rust-toolchain.toml pins; --locked builds exactly Cargo.lock.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p aadpodid-mic -p aadpodid-nmi \
 && install -D -m 0755 target/release/mic /out/mic \
 && install -D -m 0755 target/release/nmi /out/nmi

# MIC only talks to the API server and ARM: no shell, no package manager, non-root by default.
# (With --cloudconfig on a hostPath azure.json the chart runs it as uid 0 to read that file.)
FROM gcr.io/distroless/cc-debian13:nonroot AS mic
COPY --from=builder /out/mic /bin/mic
USER 65532:65532
ENTRYPOINT ["/bin/mic"]

# NMI programs the node's nat table, so the image carries iptables; the DaemonSet runs it as
# uid 0 with NET_ADMIN/NET_RAW only (charts/aad-pod-identity/templates/nmi-daemonset.yaml).
# Debian's iptables is the nft backend; on nodes still on iptables-legacy switch it with
# `update-alternatives --set iptables /usr/sbin/iptables-legacy` in a derived image.
FROM debian:trixie-slim AS nmi
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin nonroot
COPY --from=builder /out/nmi /bin/nmi
USER 10001
ENTRYPOINT ["/bin/nmi"]
