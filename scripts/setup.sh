#!/usr/bin/env bash
# Installs and starts what rgrid's quickstart, tests and CI need on a fresh Debian machine:
# a Docker engine that answers (and the Compose tool), Debian's static busybox (the local demo
# image is built from it, since no registry is assumed), Debian's docker-registry (the image
# tests start their own registries), PostgreSQL for the persistence tests, systemd-analyze and
# promtool for the deploy and metrics tests, moto's S3 server for the object store tests,
# cargo-machete, and cargo-fuzz for the fuzz targets (scripts/fuzz.sh).
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

# 2. The Compose tool for deploy/compose.yaml (Debian's docker-compose, unless compose v2 is there).
if ! docker compose version >/dev/null 2>&1 && ! docker-compose version >/dev/null 2>&1; then
  echo "setup: installing docker-compose"
  apt_install docker-compose
fi

# 3. A static busybox for the FROM-scratch demo image.
if ! dpkg -s busybox-static >/dev/null 2>&1; then
  echo "setup: installing busybox-static"
  apt_install busybox-static
fi

# 4. Debian's Docker registry for the image tests (each test starts its own on a free port).
if ! command -v docker-registry >/dev/null 2>&1; then
  echo "setup: installing docker-registry"
  apt_install docker-registry
fi

# 5. PostgreSQL for the persistence tests, with a login role the tests use
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

# 6. Checkers the tests run: systemd-analyze (the units in deploy/systemd) and promtool (the
#    metrics endpoints), from Debian's systemd and prometheus packages (the server is not started).
if ! command -v systemd-analyze >/dev/null 2>&1; then
  echo "setup: installing systemd"
  apt_install systemd
fi
if ! command -v promtool >/dev/null 2>&1; then
  echo "setup: installing prometheus (for promtool)"
  apt_install --no-install-recommends prometheus
fi

# 7. A local S3 server for the S3 object store test (tests/objects.rs starts its own
#    `moto_server` on a free port): moto from PyPI, with Debian's pip when there is none.
if ! command -v moto_server >/dev/null 2>&1; then
  echo "setup: installing moto[server]"
  if ! python3 -m pip --version >/dev/null 2>&1; then
    apt_install python3-pip
  fi
  python3 -m pip install --quiet 'moto[server]' 2>/dev/null ||
    python3 -m pip install --quiet --break-system-packages 'moto[server]'
  command -v moto_server >/dev/null 2>&1 || { echo "setup: moto_server is not on PATH" >&2; exit 1; }
fi

# 8. cargo-machete, CI's check for unused dependencies (built once per machine from crates.io, unoptimized:
#    it builds in a fraction of the time and checks a workspace in well under a second).
if ! command -v cargo-machete >/dev/null 2>&1; then
  echo "setup: installing cargo-machete"
  cargo install --locked --quiet --debug cargo-machete --version 0.9.2
fi

# 9. cargo-fuzz, the driver of the fuzz targets (scripts/fuzz.sh; the targets are built with the
#    nightly toolchain, or the stable one with RUSTC_BOOTSTRAP=1 where there is no nightly).
#    Unoptimized, like cargo-machete: it only drives cargo and libFuzzer.
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "setup: installing cargo-fuzz"
  cargo install --locked --quiet --debug cargo-fuzz --version 0.13.2
fi

echo "setup: ready (docker $(docker version --format '{{.Server.Version}}' 2>/dev/null))"
