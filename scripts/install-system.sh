#!/usr/bin/env bash
# Installs the system services the stack needs when they are missing (Debian): Redis and PostgreSQL, and
# Prometheus (tests/deploy runs promtool and a real Prometheus against the alert rules and the dashboard).
set -euo pipefail
need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
if ! command -v postgres >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  need+=(postgresql)
fi
command -v curl >/dev/null 2>&1 || need+=(curl)
{ command -v prometheus && command -v promtool; } >/dev/null 2>&1 || need+=(prometheus)
# tests/clients run openai-node (its lock: tests/clients/node/package-lock.json) with the machine's Node.js
{ command -v node && command -v npm; } >/dev/null 2>&1 || need+=(nodejs npm)
# tests/console drive a real browser: Debian's chromium and its driver (never a downloaded one)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  echo "installing: ${need[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
  # Debian starts a system redis/postgres/prometheus on install; we run our own on free ports.
  $SUDO service redis-server stop >/dev/null 2>&1 || true
  $SUDO service postgresql stop >/dev/null 2>&1 || true
  $SUDO service prometheus stop >/dev/null 2>&1 || true
  $SUDO service prometheus-node-exporter stop >/dev/null 2>&1 || true
fi
