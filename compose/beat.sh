#!/bin/sh
# Celery beat with the database scheduler from settings. The pidfile is what the healthcheck
# reads; Celery removes a stale one left by a killed container on the next start.
set -eu
cd "$(dirname "$0")/.."

exec celery -A project beat -l info --pidfile="${BEAT_PIDFILE:-/tmp/celerybeat.pid}"
