#!/bin/sh
# The default Celery worker (prefork, the default queue): every task but the feed fetches, which
# fetch-worker.sh runs. In Docker, $HOSTNAME is the container's hostname, the same name %h expands
# to, so the healthcheck can ping exactly this worker with `-d celery@$HOSTNAME`.
# The deploy checks come first: a worker with the development secret key, private feed addresses
# allowed or a vulnerable Expat refuses to start (project/checks.py).
set -eu
cd "$(dirname "$0")/.."

python manage.py check --deploy --fail-level ERROR
exec celery -A project worker -l info \
    --concurrency="${WORKER_CONCURRENCY:-2}" \
    --hostname="celery@${HOSTNAME:-%h}"
