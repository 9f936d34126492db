# The Understudy container image (docs/container.md).
#
# Build it with scripts/docker-image.sh, not with `docker build .` on the repository:
# the script builds dist/, prepares a context with dist/, package.json and the
# production node_modules only (better-sqlite3's native module included, built for
# this machine's Node.js and C library), and then builds this file on that context.
# The Dockerfile has no RUN step, so any base image that holds `node` will do, even
# one without a shell.
#
#   bash scripts/docker-image.sh                          # on node:20-bookworm-slim
#   BASE=node:22-bookworm-slim bash scripts/docker-image.sh
#
# Run it with your configuration mounted and a volume for the state directory:
#
#   docker run -d --name understudy \
#     -v "$PWD/understudy.yaml:/etc/understudy/understudy.yaml:ro" \
#     -v understudy-state:/var/lib/understudy \
#     -p 8080:8080 -p 9901:9901 understudy:0.1.0
#
# The official node images' Debian release must match the one the native module was
# built on (bookworm for Node 20); another C library (Alpine's musl) will not load it.
ARG BASE=node:20-bookworm-slim
FROM ${BASE}

# scripts/docker-image.sh adds org.opencontainers.image.version, .created and .revision.
LABEL org.opencontainers.image.title="understudy" \
      org.opencontainers.image.description="Keeps self-hosted AI model services answering when a GPU box, a model process or an upgrade fails." \
      org.opencontainers.image.licenses="Apache-2.0"

# UNDERSTUDY_CONFIG is the default for `-c`, so every command (`up`, `status`,
# `events`, ...) reads the mounted file. JSON log lines go to stdout (`docker logs`).
# UNDERSTUDY_HEALTH_URL is read only by the HEALTHCHECK below: change it when your
# admin.listen is not on port 9901.
ENV NODE_ENV=production \
    UNDERSTUDY_CONFIG=/etc/understudy/understudy.yaml \
    UNDERSTUDY_LOG_FORMAT=json \
    UNDERSTUDY_HEALTH_URL=http://127.0.0.1:9901/healthz

WORKDIR /app
COPY --chown=0:0 app/ /app/
# An example configuration (a gateway on 0.0.0.0:8080, the admin API on
# 0.0.0.0:9901); mount your own file over it.
COPY --chown=0:0 config/understudy.yaml /etc/understudy/understudy.yaml
# The state directory (events.jsonl, admin.token, jobs.db, logs/) belongs to the user
# Understudy runs as. It is copied before VOLUME: a step after VOLUME cannot change it.
COPY --chown=1000:1000 state/ /var/lib/understudy/
VOLUME ["/var/lib/understudy"]

# 1000:1000 is the `node` user of the official images. Numeric, so it works on a base
# image without /etc/passwd entries and so Kubernetes' runAsNonRoot can check it.
USER 1000:1000

# 8080: the gateway (gateway.listen, or a service's route.listen); 9901: the admin API
# and the dashboard (admin.listen). Both must listen on 0.0.0.0 inside the container
# to be reached through a published port.
EXPOSE 8080 9901

# On SIGTERM Understudy stops taking requests, lets in-flight ones finish (up to
# 10 s) and stops what it started; give `docker stop` more than that: `-t 30`.
STOPSIGNAL SIGTERM

# GET /healthz on the admin API needs no token. No curl in the image: node's fetch.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["node", "-e", "fetch(process.env.UNDERSTUDY_HEALTH_URL,{signal:AbortSignal.timeout(4000)}).then((r)=>process.exit(r.ok?0:1),()=>process.exit(1))"]

ENTRYPOINT ["node", "/app/dist/cli/main.js"]
CMD ["up"]
