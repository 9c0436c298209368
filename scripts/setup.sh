#!/usr/bin/env bash
# Installs and starts what rgrid's quickstart and tests need on a fresh Debian machine:
# a Docker engine that answers, Debian's static busybox (the local demo image is built from it,
# since no registry is assumed), Debian's docker-registry (the image tests start their own
# registries) and PostgreSQL for the persistence tests.
# Idempotent: does nothing that is already done. Needs root (or sudo) for apt-get.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
apt_updated=""
apt_install() {
  if [ -z "$apt_updated" ]; then
    $SUDO apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

# 1. Docker engine.
if ! docker info >/dev/null 2>&1; then
  if ! command -v dockerd >/dev/null 2>&1; then
    echo "setup: installing docker.io"
    apt_install docker.io
  fi
  if ! docker info >/dev/null 2>&1; then
    echo "setup: starting the Docker engine"
    $SUDO service docker start >/dev/null 2>&1 || ($SUDO dockerd >/tmp/rgrid-dockerd.log 2>&1 &)
    for _ in $(seq 1 60); do
      docker info >/dev/null 2>&1 && break
      sleep 0.5
    done
  fi
  docker info >/dev/null 2>&1 || { echo "setup: the Docker engine does not answer" >&2; exit 1; }
fi

# 2. A static busybox for the FROM-scratch demo image.
if ! dpkg -s busybox-static >/dev/null 2>&1; then
  echo "setup: installing busybox-static"
  apt_install busybox-static
fi

# 3. Debian's Docker registry for the image tests (each test starts its own on a free port).
if ! command -v docker-registry >/dev/null 2>&1; then
  echo "setup: installing docker-registry"
  apt_install docker-registry
fi

# 4. PostgreSQL for the persistence tests, with a login role the tests use
#    (RGRID_TEST_POSTGRES_URL, default postgres://rgrid:rgrid@127.0.0.1:5432/postgres).
if ! command -v pg_ctlcluster >/dev/null 2>&1 || ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
  echo "setup: installing postgresql"
  apt_install postgresql
fi
if ! pg_isready -q -h 127.0.0.1 2>/dev/null; then
  echo "setup: starting PostgreSQL"
  $SUDO service postgresql start >/dev/null 2>&1 || {
    version=$(ls /etc/postgresql | sort -n | tail -1)
    $SUDO pg_ctlcluster "$version" main start
  }
  for _ in $(seq 1 60); do
    pg_isready -q -h 127.0.0.1 && break
    sleep 0.5
  done
fi
pg_isready -q -h 127.0.0.1 || { echo "setup: PostgreSQL does not answer" >&2; exit 1; }
as_postgres() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else sudo -u postgres "$@"; fi
}
as_postgres psql -q -v ON_ERROR_STOP=1 -c \
  "DO \$\$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'rgrid') THEN CREATE ROLE rgrid LOGIN SUPERUSER PASSWORD 'rgrid'; END IF; END \$\$;" >/dev/null

echo "setup: ready (docker $(docker version --format '{{.Server.Version}}' 2>/dev/null))"
