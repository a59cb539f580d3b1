# Images for MIC and NMI, for users with Docker (one build stage for both, as the original's):
#   docker build --target mic -t aadpodid/mic:v1.8.17 .
#   docker build --target nmi -t aadpodid/nmi:v1.8.17 .
# The chart's default image is "<image.repository>/<mic|nmi>.image>:<tag>" (values.yaml).
#
# Kept in step with hack/images.sh, which builds the same images without a Docker daemon: the
# same Debian suite (SUITE) and package lists (MIC_PACKAGES, NMI_PACKAGES), the same last step
# (hack/images/finish-rootfs.sh: users, CA bundle, the iptables wrapper), the same paths, users
# and entrypoints; crates/sandbox/tests/images.rs compares the two files. The one difference:
# here NMI starts from debian:<suite>-slim (which also carries apt), there from Debian's
# essential set.
#
# Binaries link glibc dynamically (rustls with aws-lc-rs, no OpenSSL); the runtime images are
# the same Debian release as the builder (or newer), so the glibc they need is there.

ARG SUITE=trixie
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

# MIC only talks to the API server and ARM: distroless style, Debian packages unpacked without
# their maintainer scripts (no shell, no package manager), the CA bundle from ca-certificates'
# data alone, non-root by default. (With --cloudconfig on a hostPath azure.json the chart runs
# it as uid 0 to read that file.)
FROM debian:${SUITE}-slim AS mic-rootfs
ARG MIC_PACKAGES="base-files libc6 libgcc-s1"
COPY hack/images/ /images/
RUN apt-get update \
 && mkdir /debs /rootfs && cd /debs \
 && apt-get download $(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts \
      --no-breaks --no-replaces --no-enhances $MIC_PACKAGES | grep '^[a-z0-9]' | sort -u) ca-certificates \
 && for deb in *.deb; do dpkg-deb -x "$deb" /rootfs; done \
 && sh /images/finish-rootfs.sh mic /rootfs

FROM scratch AS mic
COPY --from=mic-rootfs /rootfs/ /
COPY --from=builder /out/mic /usr/bin/mic
ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin
USER 65532:65532
ENTRYPOINT ["/usr/bin/mic"]

# NMI programs the node's nat table: iptables with both backends, and hack/images/iptables-wrapper
# under the iptables names, which picks the one the node uses (legacy or nft) on first use;
# conntrack for --enable-conntrack-deletion. The DaemonSet runs it as uid 0 with
# NET_ADMIN/NET_RAW/DAC_READ_SEARCH only (charts/aad-pod-identity/templates/nmi-daemonset.yaml).
FROM debian:${SUITE}-slim AS nmi
ARG NMI_PACKAGES="iptables conntrack ca-certificates"
COPY hack/images/ /tmp/images/
RUN apt-get update \
 && apt-get install -y --no-install-recommends $NMI_PACKAGES \
 && sh /tmp/images/finish-rootfs.sh nmi / \
 && rm -rf /tmp/images /var/lib/apt/lists/*
COPY --from=builder /out/nmi /usr/bin/nmi
ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin
USER 10001
ENTRYPOINT ["/usr/bin/nmi"]
