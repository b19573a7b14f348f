#!/usr/bin/env bash
# System packages the tests and the demo need: PostgreSQL and MariaDB server binaries (throwaway
# instances are started from them; the system services are not touched) and a Java 17 JDK for
# Debezium's embedded engine. Installs only what is missing, so it is quick on a ready machine.
set -euo pipefail

need=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] || need+=(mariadb-server)
command -v mariadb-install-db >/dev/null 2>&1 || need+=(mariadb-server)
# a JDK, not only a runtime: our small Java helpers for Debezium are compiled with javac on first use
{ java -version 2>&1 | grep -q 'version "1[7-9]\|version "2[0-9]' && command -v javac >/dev/null 2>&1; } \
    || need+=(openjdk-17-jdk-headless)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
command -v make >/dev/null 2>&1 || need+=(make)
# promtool checks the alerting rules `cdc monitoring rules` writes (the tests run it)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
# the online store's tests start their own redis-server (the machine's service is not touched)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
# docker-compose (v1) validates docker-compose.yml in tests/integration/test_compose.py; no engine
# is needed or started for that
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)

if [ ${#need[@]} -eq 0 ]; then
    echo "system packages: all present"
    exit 0
fi
echo "system packages: installing ${need[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
# policy-rc.d keeps apt from starting the new servers as services: we run our own throwaway ones
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod +x /usr/sbin/policy-rc.d
    trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
fi
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${need[@]}"
# prometheus is installed for its promtool only: its server is not ours to run
if printf '%s\n' "${need[@]}" | grep -qx prometheus; then
    $SUDO rm -f /etc/systemd/system/multi-user.target.wants/prometheus.service
fi
