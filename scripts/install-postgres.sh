#!/usr/bin/env bash
# PostgreSQL for the integration tests (tests/integration): they start a throw-away cluster on 127.0.0.1, as the
# compose stack's `postgres` service. Installs Debian's package when no pg_ctl is found; does nothing otherwise.
set -euo pipefail

if command -v pg_ctl >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "PostgreSQL is missing and this is not a Debian/Ubuntu machine: install PostgreSQL (pg_ctl, initdb) and" \
       "put its bin/ on PATH" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "PostgreSQL is missing: run 'apt-get install postgresql' as root" >&2; exit 1; }
  SUDO="sudo"
fi
echo "installing Debian's postgresql package (integration tests)"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# Only the binaries: the tests run their own cluster, Debian's default one is not started.
$SUDO apt-get install -y -qq --no-install-recommends postgresql >/dev/null
