#!/bin/sh
# The official postgres image's contract, in POSIX sh: as root, own the data dir and drop to
# the postgres user; on first start initdb with POSTGRES_USER/POSTGRES_PASSWORD, create
# POSTGRES_DB, require a password over TCP (127.0.0.1 inside the container included).
set -eu

if [ "${1#-}" != "$1" ]; then
    set -- postgres "$@"
fi
if [ "$1" != postgres ]; then
    exec "$@"
fi

if [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA" /var/run/postgresql
    chown postgres:postgres "$PGDATA" /var/run/postgresql
    chmod 700 "$PGDATA"
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    : "${POSTGRES_PASSWORD:?is required: pass -e POSTGRES_PASSWORD=... (the superuser password)}"
    user=${POSTGRES_USER:-postgres}
    # The password reaches initdb on a pipe, never on a command line or on disk.
    printf '%s\n' "$POSTGRES_PASSWORD" | initdb --username="$user" --pwfile=/dev/stdin \
        --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 \
        ${POSTGRES_INITDB_ARGS:-} >/dev/null
    echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
    db=${POSTGRES_DB:-$user}
    if [ "$db" != postgres ]; then
        # A private start on the unix socket only, as the official image does.
        pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
        ident=$(printf '%s' "$db" | sed 's/"/""/g')
        psql -v ON_ERROR_STOP=1 --username="$user" --dbname=postgres -q \
            -c "CREATE DATABASE \"$ident\"" </dev/null
        pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
    fi
    echo "PostgreSQL init process complete; ready for start up."
fi

exec "$@" -c listen_addresses='*'
