#!/usr/bin/env bash
# Installs nginx and HAProxy for the benchmark. The bench runs both in the
# foreground with its own configs, so the system services must not start.
set -euo pipefail
# Progress goes to stderr: the benchmark report owns stdout.
exec 1>&2

missing=()
command -v nginx >/dev/null 2>&1 || missing+=(nginx)
command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
if [ ${#missing[@]} -eq 0 ]; then
  echo "nginx and haproxy are installed"
  exit 0
fi

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

# A policy-rc.d that exits 101 tells Debian's package scripts not to start services.
policy=/usr/sbin/policy-rc.d
remove_policy() { :; }
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
  $sudo chmod +x "$policy"
  remove_policy() { $sudo rm -f "$policy"; }
fi
trap remove_policy EXIT

$sudo apt-get update
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y "${missing[@]}"
echo "installed: ${missing[*]}"
