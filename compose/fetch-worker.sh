#!/bin/sh
# The Celery worker for feed fetches: the queue pipeline.fetch_source is routed to
# (NEWSBEAT_FETCH_QUEUE), on a threads pool. A fetch mostly waits for the feed's server, so
# FETCH_CONCURRENCY threads in one process keep a core busy; the GIL keeps a process to one core,
# so scale the containers to the cores (README, Performance). Named fetch@$HOSTNAME, which the
# healthcheck pings. The deploy checks come first, as in worker.sh.
set -eu
cd "$(dirname "$0")/.."

python manage.py check --deploy --fail-level ERROR
exec celery -A project worker -l info \
    --queues="${NEWSBEAT_FETCH_QUEUE:-fetch}" \
    --pool=threads \
    --concurrency="${FETCH_CONCURRENCY:-8}" \
    --hostname="fetch@${HOSTNAME:-%h}"
