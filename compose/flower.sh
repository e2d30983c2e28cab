#!/bin/sh
# Flower, always behind HTTP basic auth: it can revoke tasks and shut workers down.
# Flower also reads FLOWER_<OPTION> variables by itself; the flags below spell out the same values.
set -eu
cd "$(dirname "$0")/.."

case "${FLOWER_BASIC_AUTH:-}" in
    ?*:?*) ;;
    *) echo "flower.sh: set FLOWER_BASIC_AUTH=user:password (comma-separate several)" >&2; exit 64 ;;
esac

exec celery -A project flower \
    --address="${FLOWER_ADDRESS:-0.0.0.0}" \
    --port="${FLOWER_PORT:-5555}" \
    --basic-auth="${FLOWER_BASIC_AUTH}" \
    --persistent=True \
    --db="${FLOWER_DB:-/data/flower.db}" \
    --max_tasks=10000
