#!/bin/sh
# Entry point of the Mosquitto container in deploy/site/compose.yaml (image eclipse-mosquitto:2.0, run
# as root; Mosquitto drops to its `mosquitto` user itself). It runs deploy/mosquitto.conf unchanged, so
# the container puts the files where that configuration expects them:
# - deploy/mosquitto.acl with the site id spelled in (the same sed as deploy/README.md's install);
# - the password file (a compose secret, never in git) owned by mosquitto, mode 0600;
# - /var/lib/mosquitto (persistence, a named volume) owned by mosquitto.
# Logs go to syslog as configured: the compose file mounts the host's /dev/log.
set -eu

site="${BACPIPES_SITE__ID:?set BACPIPES_SITE__ID (the [site] id) in site.env}"
mkdir -p /etc/mosquitto
sed "s/macau-casino/$site/g" /run/bacpipes/mosquitto.acl > /etc/mosquitto/bacpipes.acl
chown root:mosquitto /etc/mosquitto/bacpipes.acl
chmod 0640 /etc/mosquitto/bacpipes.acl
install -o mosquitto -g mosquitto -m 0600 /run/secrets/mosquitto_passwd /etc/mosquitto/bacpipes.passwd
install -d -o mosquitto -g mosquitto -m 0750 /var/lib/mosquitto

exec mosquitto -c /run/bacpipes/mosquitto.conf
