#!/usr/bin/env bash
# Installs promtool, which test/observe/monitoring.test.ts runs to check the
# Prometheus rules in examples/monitoring/ (`promtool check rules`, `promtool test
# rules`), from Debian's own package: prometheus (promtool has no package of its own).
#
# Starts nothing, and leaves nothing running: the package's install starts its
# Prometheus server on :9090 (invoke-rc.d, or systemd where it runs). This script
# forbids that for the length of the install (a policy-rc.d that answers 101, when
# the machine has none), stops a server that started anyway, and turns off its
# start at boot; only promtool is wanted. `systemctl enable --now prometheus` (or
# `update-rc.d prometheus enable`) brings the server back on purpose.
#
# Never fails setup: without root or apt-get, or when the install fails, it says
# so and exits 0. The test then skips promtool's checks, except under CI, where
# it fails.
#
# Safe to run again: does nothing when promtool is already on PATH.
set -euo pipefail

PACKAGE=prometheus
POLICY=/usr/sbin/policy-rc.d

say() { echo "monitoring-tools.sh: $*"; }
skip() { echo "monitoring-tools.sh: $*; promtool not installed (the monitoring test skips its promtool checks, and fails under CI)" >&2; exit 0; }

# ---------------------------------------------------------------- found already
if command -v promtool >/dev/null 2>&1; then
  say "promtool: already installed ($(command -v promtool), $(promtool --version 2>&1 | head -n 1))"
  exit 0
fi

# Root only for the steps that change something, so a check-only run needs none.
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || skip "installing $PACKAGE needs root; run it as root (or install sudo)"
  SUDO=sudo
else
  SUDO=
fi
command -v apt-get >/dev/null 2>&1 || skip "apt-get not found; install promtool (Debian package $PACKAGE) by other means"

# Live processes named prometheus, by /proc so that procps need not be installed.
# A server that exited but is not yet reaped (a container's init may be slow to)
# stays in /proc as a zombie: it listens on nothing, so it does not count.
server_pids() {
  local dir
  for dir in /proc/[0-9]*; do
    [ "$(cat "$dir/comm" 2>/dev/null)" = prometheus ] || continue
    grep -q '^State:[[:space:]]*Z' "$dir/status" 2>/dev/null && continue
    echo "${dir#/proc/}"
  done
}
# Those not running before the install.
new_server_pids() {
  local pid
  for pid in $(server_pids); do
    case "$before" in *" $pid "*) ;; *) echo "$pid" ;; esac
  done
}
was_installed=no
dpkg-query -W -f='${Status}' "$PACKAGE" 2>/dev/null | grep -q 'ok installed' && was_installed=yes
before=" $(server_pids | tr '\n' ' ') "

# ---------------------------------------------------------------- install
# invoke-rc.d and deb-systemd-invoke ask policy-rc.d before starting a service;
# 101 means "not now". A policy the machine already has (Docker images ship one
# that answers 101) is left as it is.
made_policy=no
if [ ! -e "$POLICY" ]; then
  printf '#!/bin/sh\n# monitoring-tools.sh: no service starts while it installs %s\nexit 101\n' "$PACKAGE" | $SUDO tee "$POLICY" >/dev/null
  $SUDO chmod 755 "$POLICY"
  made_policy=yes
  trap '$SUDO rm -f "$POLICY"' EXIT
fi

say "installing $PACKAGE (Debian package; for promtool only)"
if ! { $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$PACKAGE" >/dev/null; }; then
  skip "apt-get could not install $PACKAGE"
fi
if [ "$made_policy" = yes ]; then
  $SUDO rm -f "$POLICY"
  trap - EXIT
fi

# ---------------------------------------------------------------- no server
if [ "$was_installed" = no ]; then
  if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    $SUDO systemctl disable --now "$PACKAGE" >/dev/null 2>&1 || true
  fi
  if [ -x "/etc/init.d/$PACKAGE" ]; then
    $SUDO "/etc/init.d/$PACKAGE" stop >/dev/null 2>&1 || true
    if command -v update-rc.d >/dev/null 2>&1; then $SUDO update-rc.d "$PACKAGE" disable >/dev/null 2>&1 || true; fi
  fi
  # Whatever is still running (the init script's stop returns before the server
  # has exited): TERM, up to 10 s, then KILL.
  started="$(new_server_pids | tr '\n' ' ')"
  if [ -n "${started// /}" ]; then
    say "stopping the Prometheus server the install started (pid ${started% })"
    # shellcheck disable=SC2086 # a list of pids
    $SUDO kill -TERM $started 2>/dev/null || true
    for _ in $(seq 1 50); do
      [ -z "$(new_server_pids)" ] && break
      sleep 0.2
    done
    started="$(new_server_pids | tr '\n' ' ')"
    # shellcheck disable=SC2086
    if [ -n "${started// /}" ]; then $SUDO kill -KILL $started 2>/dev/null || true; fi
  fi
fi

# ---------------------------------------------------------------- found
command -v promtool >/dev/null 2>&1 || skip "$PACKAGE installed, but no promtool on PATH"
say "promtool: $(command -v promtool) ($(promtool --version 2>&1 | head -n 1))"
