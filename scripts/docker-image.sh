#!/usr/bin/env bash
# Builds the Understudy container image from this checkout (docs/container.md):
#
#   1. `npm run build` (dist/ and the dashboard), unless SKIP_BUILD=1;
#   2. a build context in a temporary directory: dist/, package.json and the
#      production node_modules only (a copy of node_modules pruned with
#      `npm prune --omit=dev`, offline, so better-sqlite3's native module is the one
#      built here), README.md (and a LICENSE or NOTICE file when there is one), an
#      empty state directory and an example configuration;
#   3. `docker build` of the repository's Dockerfile on that context.
#
# The Dockerfile has no RUN step, so the base image needs nothing but `node`. The
# native module is built for this machine's Node.js major version and C library:
# build on a machine (or in a container) like the base image, e.g. Debian bookworm
# with Node 20 for node:20-bookworm-slim.
#
#   BASE        base image (default node:20-bookworm-slim)
#   TAG         image name (default understudy:VERSION, VERSION from package.json)
#   EXTRA_LABEL one more label, KEY=VALUE (e.g. for finding test images to remove)
#   SKIP_BUILD  1: use dist/ as it is
#   KEEP_CONTEXT 1: leave the build context directory and print where it is
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT="$PWD"
VERSION="$(node -p 'require("./package.json").version')"
BASE="${BASE:-node:20-bookworm-slim}"
TAG="${TAG:-understudy:$VERSION}"

say() { echo "docker-image.sh: $*"; }
die() { echo "docker-image.sh: $*" >&2; exit 1; }

command -v docker >/dev/null 2>&1 || die "no docker command; install a Docker Engine (scripts/docker-engine.sh on Debian)"
[ -d node_modules ] || die "no node_modules; run npm ci first"

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  say "npm run build"
  npm run build --silent
fi
[ -f dist/cli/main.js ] || die "dist/cli/main.js is missing; run npm run build (or unset SKIP_BUILD)"

CONTEXT="$(mktemp -d "${TMPDIR:-/tmp}/understudy-image-XXXXXX")"
if [ "${KEEP_CONTEXT:-0}" = 1 ]; then
  trap 'say "build context left in $CONTEXT"' EXIT
else
  trap 'rm -rf "$CONTEXT"' EXIT
fi

say "preparing the build context in $CONTEXT"
mkdir -p "$CONTEXT/app" "$CONTEXT/config" "$CONTEXT/state"
cp -a dist package-lock.json "$CONTEXT/app/"
for file in README.md LICENSE LICENSE.md NOTICE; do
  if [ -f "$file" ]; then cp "$file" "$CONTEXT/app/"; fi
done
cp -a node_modules "$CONTEXT/app/node_modules"
# package.json without the workspace (examples/tts-server is a demo, not part of the
# image), the dev dependencies or the scripts: prune then removes the workspace's link
# and its dependencies with the dev ones.
node -e '
  const fs = require("node:fs");
  const p = JSON.parse(fs.readFileSync("package.json", "utf8"));
  for (const key of ["workspaces", "devDependencies", "scripts", "files"]) delete p[key];
  fs.writeFileSync(process.argv[1], JSON.stringify(p, null, 2) + "\n");
' "$CONTEXT/app/package.json"
(cd "$CONTEXT/app" && npm prune --omit=dev --offline --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null)
rm -f "$CONTEXT/app/package-lock.json" "$CONTEXT/app/node_modules/.package-lock.json"
# prune leaves the scope folders of what it removed (@vitest, @esbuild, ...) empty.
find "$CONTEXT/app/node_modules" -mindepth 1 -maxdepth 1 -type d -empty -delete
# better-sqlite3 needs only its compiled module at run time, not the SQLite sources
# and object files it was built from (about 26 MB).
SQLITE="$CONTEXT/app/node_modules/better-sqlite3"
[ -f "$SQLITE/build/Release/better_sqlite3.node" ] || die "better-sqlite3's native module is missing from node_modules (npm rebuild better-sqlite3)"
rm -rf "$SQLITE/deps" "$SQLITE/src"
find "$SQLITE/build" -mindepth 1 -maxdepth 1 ! -name Release -exec rm -rf {} +
find "$SQLITE/build/Release" -mindepth 1 -maxdepth 1 ! -name better_sqlite3.node -exec rm -rf {} +
# A link left pointing out of the context (a workspace, a `npm link`) would be copied
# as a dangling link; refuse it rather than build a broken image.
if dangling="$(find "$CONTEXT/app" -xtype l -print -quit)" && [ -n "$dangling" ]; then
  die "a dangling link in the production node_modules: ${dangling#"$CONTEXT/app/"}"
fi
(cd "$CONTEXT/app" && node -e 'new (require("better-sqlite3"))(":memory:").close()') \
  || die "better-sqlite3 does not load from the pruned node_modules"

cat >"$CONTEXT/config/understudy.yaml" <<'EOF'
# An example configuration for the Understudy image: mount your own over
# /etc/understudy/understudy.yaml (docs/configuration.md, docs/container.md).
stateDir: /var/lib/understudy
admin:
  # 0.0.0.0 so a published port reaches it; the admin API always needs the token
  # (admin.token, $UNDERSTUDY_ADMIN_TOKEN, or /var/lib/understudy/admin.token).
  listen: 0.0.0.0:9901
services:
  llm:
    route:
      listen: 0.0.0.0:8080
    instances:
      main:
        tier: primary
        url: http://model-main:8000
      backup:
        tier: hot
        url: http://model-backup:8000
EOF
node dist/cli/main.js validate -c "$CONTEXT/config/understudy.yaml" >/dev/null \
  || die "the example configuration does not validate"

build_args=(
  --build-arg "BASE=$BASE"
  --label "org.opencontainers.image.version=$VERSION"
  --label "org.opencontainers.image.created=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
)
if revision="$(git -C "$ROOT" rev-parse HEAD 2>/dev/null)"; then
  build_args+=(--label "org.opencontainers.image.revision=$revision")
fi
if [ -n "${EXTRA_LABEL:-}" ]; then
  case "$EXTRA_LABEL" in
    *=*) build_args+=(--label "$EXTRA_LABEL") ;;
    *) die "EXTRA_LABEL must be KEY=VALUE, not \"$EXTRA_LABEL\"" ;;
  esac
fi

say "docker build -t $TAG on $BASE"
docker build "${build_args[@]}" -t "$TAG" -f "$ROOT/Dockerfile" "$CONTEXT"

size="$(docker image inspect --format '{{.Size}}' "$TAG")"
say "built $TAG: $((size / 1000 / 1000)) MB ($size bytes)"
