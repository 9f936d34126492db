#!/usr/bin/env bash
# Installs what Understudy's cluster mode and its tests use on this machine, from
# Debian's own packages: etcd (etcd-server, etcd-client), PostgreSQL (postgresql),
# keepalived, iproute2 and curl; and makes the system user `understudy-pg` that the
# tests run their throwaway PostgreSQL clusters as (postgres refuses to run as root).
#
# Starts nothing: the tests start their own etcd members and PostgreSQL clusters in
# temp dirs on free ports. A service the packages' own install started (Debian's
# postgresql may start a `main` cluster) is left as it is.
#
# Safe to run again: each step does nothing when its result is already there.
set -euo pipefail

PG_USER=understudy-pg

say() { echo "cluster-parts.sh: $*"; }
die() { echo "cluster-parts.sh: $*" >&2; exit 1; }

# Root only for the steps that change something, so a check-only run needs none.
if [ "$(id -u)" -ne 0 ]; then
  SUDO=sudo
else
  SUDO=
fi
need_root() {
  [ -z "$SUDO" ] && return 0
  command -v sudo >/dev/null 2>&1 || die "$1 needs root; run it as root (or install sudo)"
}

# keepalived, ip and useradd live in sbin, which a non-root PATH may not hold.
find_cmd() {
  local dir
  if command -v "$1" 2>/dev/null; then return 0; fi
  for dir in /usr/sbin /sbin; do
    if [ -x "$dir/$1" ]; then echo "$dir/$1"; return 0; fi
  done
  return 1
}
# The newest PostgreSQL's bin dir (/usr/lib/postgresql/<major>/bin), or nothing.
pg_bin_dir() {
  local dir
  dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
  if [ -n "$dir" ] && [ -x "$dir/postgres" ] && [ -x "$dir/initdb" ]; then echo "$dir"; fi
}

# ---------------------------------------------------------------- packages
missing=()
find_cmd etcd >/dev/null || missing+=(etcd-server)
find_cmd etcdctl >/dev/null || missing+=(etcd-client)
[ -n "$(pg_bin_dir)" ] || missing+=(postgresql)
find_cmd keepalived >/dev/null || missing+=(keepalived)
find_cmd ip >/dev/null || missing+=(iproute2)
find_cmd curl >/dev/null || missing+=(curl)

if [ "${#missing[@]}" -eq 0 ]; then
  say "etcd-server etcd-client postgresql keepalived iproute2 curl: already installed"
else
  need_root "installing ${missing[*]}"
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install ${missing[*]} (Debian package names) by other means"
  say "installing ${missing[*]} (Debian packages)"
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# ---------------------------------------------------------------- user
if id -u "$PG_USER" >/dev/null 2>&1; then
  say "system user $PG_USER: already there"
else
  need_root "adding the system user $PG_USER"
  USERADD="$(find_cmd useradd)" || die "useradd not found; add a system user $PG_USER by other means"
  say "adding system user $PG_USER (runs the tests' PostgreSQL clusters)"
  $SUDO "$USERADD" --system --no-create-home --shell /usr/sbin/nologin "$PG_USER"
fi

# ---------------------------------------------------------------- found
ETCD="$(find_cmd etcd)" || die "etcd not found after installing etcd-server"
ETCDCTL="$(find_cmd etcdctl)" || die "etcdctl not found after installing etcd-client"
PG_BIN="$(pg_bin_dir)"
[ -n "$PG_BIN" ] || die "no /usr/lib/postgresql/*/bin with postgres and initdb after installing postgresql"
KEEPALIVED="$(find_cmd keepalived)" || die "keepalived not found after installing keepalived"

say "etcd: $ETCD ($("$ETCD" --version 2>/dev/null | head -n 1))"
say "etcdctl: $ETCDCTL"
say "postgresql bin: $PG_BIN ($("$PG_BIN/postgres" --version 2>/dev/null))"
say "keepalived: $KEEPALIVED"
