#!/bin/sh
# The image's entry point: `u2net serve` on $U2NET_HOST:$U2NET_PORT (the port HEALTHCHECK asks), answering the
# Host names in $U2NET_ALLOWED_HOSTS besides the loopback ones; the container's arguments follow (--model,
# --storage-root, --workers, ...). exec: uvicorn is PID 1 and gets docker stop's SIGTERM itself.
set -eu
if [ -n "${U2NET_ALLOWED_HOSTS:-}" ]; then
    set -- --allowed-hosts "$U2NET_ALLOWED_HOSTS" "$@"
fi
exec u2net serve --host "${U2NET_HOST:-0.0.0.0}" --port "${U2NET_PORT:-8000}" "$@"
