#!/bin/sh
# Flower, always behind a login: HTTP basic auth (FLOWER_BASIC_AUTH) or OAuth (FLOWER_AUTH, the
# emails allowed, with FLOWER_AUTH_PROVIDER and FLOWER_OAUTH2_KEY/_SECRET/_REDIRECT_URI, which
# Flower reads from the environment itself). Read-only unless FLOWER_READ_ONLY=0: it can
# otherwise revoke tasks and shut workers down, and Flower has no per-user roles.
# Flower also reads FLOWER_<OPTION> variables by itself; the flags below spell out the same values.
set -eu
cd "$(dirname "$0")/.."

case "${FLOWER_BASIC_AUTH:-}" in
    ?*:?*) set -- --basic-auth="${FLOWER_BASIC_AUTH}" ;;
    *)
        if [ -z "${FLOWER_AUTH:-}" ]; then
            echo "flower.sh: set FLOWER_BASIC_AUTH=user:password (comma-separate several)" \
                "or FLOWER_AUTH for OAuth" >&2
            exit 64
        fi
        # An empty FLOWER_BASIC_AUTH would turn into a basic-auth login with no password.
        unset FLOWER_BASIC_AUTH
        set -- --auth="${FLOWER_AUTH}"
        ;;
esac

exec celery -A project flower \
    --address="${FLOWER_ADDRESS:-0.0.0.0}" \
    --port="${FLOWER_PORT:-5555}" \
    "$@" \
    --read_only="${FLOWER_READ_ONLY:-1}" \
    --persistent=True \
    --db="${FLOWER_DB:-/data/flower.db}" \
    --max_tasks=10000
