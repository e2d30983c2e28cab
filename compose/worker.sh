#!/bin/sh
# A Celery worker. In Docker, $HOSTNAME is the container's hostname, the same name %h expands to,
# so the healthcheck can ping exactly this worker with `-d celery@$HOSTNAME`.
set -eu
cd "$(dirname "$0")/.."

exec celery -A project worker -l info \
    --concurrency="${WORKER_CONCURRENCY:-2}" \
    --hostname="celery@${HOSTNAME:-%h}"
