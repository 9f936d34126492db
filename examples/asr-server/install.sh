#!/bin/sh
# Installs the recogniser the example speech-recognition server runs: Debian's
# pocketsphinx (CLI pocketsphinx_continuous) and its US English acoustic model and
# dictionary (pocketsphinx-en-us). Safe to run again: it does nothing when both are there.
set -eu

MODEL_DIR=/usr/share/pocketsphinx/model/en-us

if command -v pocketsphinx_continuous >/dev/null 2>&1 && [ -d "$MODEL_DIR/en-us" ] && [ -f "$MODEL_DIR/cmudict-en-us.dict" ]; then
  echo "pocketsphinx and pocketsphinx-en-us: already installed"
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "install.sh: apt-get not found; install pocketsphinx and pocketsphinx-en-us (0.8+5prealpha, Debian/Ubuntu) by other means" >&2
  exit 1
fi

if [ "$(id -u)" -eq 0 ]; then
  SUDO=
elif command -v sudo >/dev/null 2>&1; then
  SUDO=sudo
  echo "install.sh: not root; using sudo for apt-get" >&2
else
  echo "install.sh: installing packages needs root; run it as root (or install sudo)" >&2
  exit 1
fi

$SUDO apt-get update
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends pocketsphinx pocketsphinx-en-us

if ! command -v pocketsphinx_continuous >/dev/null 2>&1 || [ ! -d "$MODEL_DIR/en-us" ]; then
  echo "install.sh: packages installed but pocketsphinx_continuous or $MODEL_DIR/en-us is missing" >&2
  exit 1
fi
echo "pocketsphinx installed: $(command -v pocketsphinx_continuous), model $MODEL_DIR"
