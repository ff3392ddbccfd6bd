#!/bin/sh
# Entry point of the PostgreSQL 15 containers (deploy/site and deploy/central compose files), run as root
# by the official postgres image before it drops to the postgres user.
#
# 1. Copies the certificates mounted read-only at /run/bacpipes-certs (made by `bacpipes certs`) to
#    /etc/bacpipes/certs, the default [replication] certs_dir, owned by postgres with mode 0600:
#    PostgreSQL refuses a private key it does not own, and the host directory can stay owned by root.
#    The server presents its own pair; its subscriptions present the client pair found there too.
# 2. Starts the image's own entrypoint with the settings deploy/replication.md documents (logical
#    replication, TLS 1.3 only, pg_hba.conf from deploy/pg_hba.conf). The settings that grow with the
#    number of sites are not set here: `bacpipes central init --sites N` writes them (ALTER SYSTEM), which
#    a `-c` on the command line would override for good. Arguments given to this script
#    (the compose `command`) are appended, so a deployment can add `-c name=value`.
#
# PG_SERVER_CERT names the server pair: `central` on central; on a site it defaults to
# `site-$BACPIPES_SITE__ID`, the name `bacpipes certs --site ID=HOST` gives it.
set -eu

certs=/etc/bacpipes/certs
name="${PG_SERVER_CERT:-site-${BACPIPES_SITE__ID:?set BACPIPES_SITE__ID (the site id) or PG_SERVER_CERT}}"

for f in ca.crt "$name.crt" "$name.key"; do
    [ -f "/run/bacpipes-certs/$f" ] || { echo "missing certificate file certs/$f (see deploy/replication.md)" >&2; exit 1; }
done
install -d -o postgres -g postgres -m 0700 "$certs"
for f in /run/bacpipes-certs/*.crt /run/bacpipes-certs/*.key; do
    case "$(basename "$f")" in ca.key) continue ;; esac  # the CA key never belongs on a server
    if [ -f "$f" ]; then install -o postgres -g postgres -m 0600 "$f" "$certs/"; fi
done

exec docker-entrypoint.sh postgres \
    -c listen_addresses='*' \
    -c hba_file=/etc/bacpipes/pg_hba.conf \
    -c wal_level=logical \
    -c ssl=on \
    -c ssl_cert_file="$certs/$name.crt" \
    -c ssl_key_file="$certs/$name.key" \
    -c ssl_ca_file="$certs/ca.crt" \
    -c ssl_min_protocol_version=TLSv1.3 \
    "$@"
