#!/usr/bin/env bash
# Installs and starts what Understudy's `docker` runtime and image snapshots use on
# this machine: Debian's Docker Engine (docker.io) and a local image registry
# (docker-registry, the CNCF distribution registry), and builds the small base image
# the demo and the tests build their model-server images on. Nothing is pulled from
# a registry outside this machine: the base image is imported from a root file
# system made of this machine's own Node.js binary and the libraries it needs.
#
# Safe to run again: each step does nothing when its result is already there.
#   UNDERSTUDY_REGISTRY   where the registry listens (default 127.0.0.1:5000)
#   UNDERSTUDY_DOCKER_DIR logs and registry storage (default /var/lib/understudy-docker)
set -euo pipefail

REGISTRY="${UNDERSTUDY_REGISTRY:-127.0.0.1:5000}"
DIR="${UNDERSTUDY_DOCKER_DIR:-/var/lib/understudy-docker}"
BASE_IMAGE="understudy/node-base:$(node -p 'process.versions.node')"

say() { echo "docker-engine.sh: $*"; }
die() { echo "docker-engine.sh: $*" >&2; exit 1; }

if [ "$(id -u)" -ne 0 ]; then
  SUDO=sudo
  command -v sudo >/dev/null 2>&1 || die "installing and starting a Docker Engine needs root; run it as root (or install sudo)"
else
  SUDO=
fi

# ---------------------------------------------------------------- packages
if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker-registry >/dev/null 2>&1; then
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install a Docker Engine and a registry (docker.io, docker-registry on Debian) by other means"
  say "installing docker.io and docker-registry (Debian packages)"
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io docker-registry >/dev/null
fi
$SUDO mkdir -p "$DIR"

# ---------------------------------------------------------------- engine
# `docker version` answers only when a daemon does (the client alone fails).
engine_up() { $SUDO docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

if engine_up; then
  say "Docker Engine $($SUDO docker version --format '{{.Server.Version}}'): already running"
else
  say "starting dockerd (log: $DIR/dockerd.log)"
  # --iptables=false: this machine's network is not ours to rewrite; published ports
  # still work on loopback through docker-proxy, and host networking needs nothing.
  $SUDO sh -c "nohup dockerd --iptables=false >'$DIR/dockerd.log' 2>&1 &"
  for _ in $(seq 1 120); do
    engine_up && break
    sleep 0.25
  done
  engine_up || { tail -20 "$DIR/dockerd.log" >&2; die "dockerd did not answer within 30s (log above)"; }
  say "Docker Engine $($SUDO docker version --format '{{.Server.Version}}') running"
fi

# ---------------------------------------------------------------- registry
registry_up() { curl -fsS -m 2 "http://$REGISTRY/v2/" >/dev/null 2>&1; }

if registry_up; then
  say "registry at $REGISTRY: already running"
else
  $SUDO mkdir -p "$DIR/registry"
  $SUDO tee "$DIR/registry.yml" >/dev/null <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $DIR/registry
  delete:
    enabled: true
http:
  addr: $REGISTRY
EOF
  say "starting docker-registry at $REGISTRY (log: $DIR/registry.log)"
  $SUDO sh -c "nohup docker-registry serve '$DIR/registry.yml' >'$DIR/registry.log' 2>&1 &"
  for _ in $(seq 1 80); do
    registry_up && break
    sleep 0.25
  done
  registry_up || { tail -20 "$DIR/registry.log" >&2; die "the registry did not answer at http://$REGISTRY/v2/ within 20s (log above)"; }
fi

# ---------------------------------------------------------------- base image
if $SUDO docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  say "base image $BASE_IMAGE: already built"
else
  say "building base image $BASE_IMAGE from this machine's node binary"
  ROOTFS="$(mktemp -d)"
  trap 'rm -rf "$ROOTFS"' EXIT
  NODE_BIN="$(readlink -f "$(command -v node)")"
  mkdir -p "$ROOTFS/usr/bin" "$ROOTFS/tmp" "$ROOTFS/etc"
  chmod 1777 "$ROOTFS/tmp"
  cp "$NODE_BIN" "$ROOTFS/usr/bin/node"
  # The dynamic loader and every shared library node links against, at their own paths.
  for lib in $(ldd "$NODE_BIN" | grep -o '/[^ ]*' | sort -u); do
    mkdir -p "$ROOTFS$(dirname "$lib")"
    cp -L "$lib" "$ROOTFS$lib"
  done
  echo 'root:x:0:0:root:/root:/bin/sh' >"$ROOTFS/etc/passwd"
  echo 'nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin' >>"$ROOTFS/etc/passwd"
  tar -C "$ROOTFS" -c . | $SUDO docker import --change 'ENTRYPOINT []' - "$BASE_IMAGE" >/dev/null
  say "base image $BASE_IMAGE built"
fi
