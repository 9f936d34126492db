#!/usr/bin/env bash
# Installs the headless browser that the dashboard's browser tests drive through
# playwright-core (test/support/browser.ts), from Debian's own packages: chromium,
# and the fonts pages render their text with: fonts-dejavu-core (wide Unicode:
# arrows, box drawing, ✓) and fonts-liberation2 (metric-compatible Arial, Times
# and Courier). Without a font, screenshots show boxes instead of text;
# --no-install-recommends leaves out the fonts-liberation that chromium recommends.
#
# Nothing is downloaded from outside Debian's mirrors (no `playwright install`).
# Starts nothing: each test launches its own browser.
#
# Safe to run again: each step does nothing when its result is already there.
set -euo pipefail

CHROMIUM=/usr/bin/chromium
FONTS=(fonts-dejavu-core fonts-liberation2)

say() { echo "browser.sh: $*"; }
die() { echo "browser.sh: $*" >&2; exit 1; }

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

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'ok installed'; }
# Debian's /usr/bin/chromium is a wrapper script; --version runs the real binary,
# so a missing library shows up here rather than in the first test.
chromium_works() { [ -x "$CHROMIUM" ] && "$CHROMIUM" --version >/dev/null 2>&1; }

# ---------------------------------------------------------------- packages
missing=()
chromium_works || missing+=(chromium)
for font in "${FONTS[@]}"; do
  installed "$font" || missing+=("$font")
done

if [ "${#missing[@]}" -eq 0 ]; then
  say "chromium ${FONTS[*]}: already installed"
else
  need_root "installing ${missing[*]}"
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install ${missing[*]} (Debian package names) by other means"
  say "installing ${missing[*]} (Debian packages)"
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# ---------------------------------------------------------------- found
chromium_works || die "$CHROMIUM does not run after installing chromium; try: $CHROMIUM --version"
say "chromium: $CHROMIUM ($("$CHROMIUM" --version 2>/dev/null | head -n 1))"
say "sans-serif font: $(fc-match sans-serif 2>/dev/null || echo '(fc-match not found)')"
