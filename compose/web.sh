#!/bin/sh
# The web process: apply migrations, then serve project.wsgi with gunicorn.
# Outside Docker, put the virtualenv's bin/ first on PATH. Gunicorn reads WEB_CONCURRENCY itself.
# No control socket: its default path is per user ($HOME/.gunicorn/gunicorn.ctl), so two gunicorns
# run by one user would fight over it, and nothing here uses gunicornc.
set -eu
cd "$(dirname "$0")/.."

# Refuse production settings that are unsafe (development secret key, ...: project/checks.py).
python manage.py check --deploy --fail-level ERROR
python manage.py migrate --noinput
python manage.py collectstatic --noinput --verbosity 0
exec gunicorn project.wsgi --bind "${WEB_HOST:-0.0.0.0}:${PORT:-8000}" --access-logfile - --no-control-socket
