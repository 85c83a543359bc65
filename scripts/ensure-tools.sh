#!/usr/bin/env bash
# ensure-tools.sh PROGRAM...: installs Debian packages for programs the tests or benchmarks drive
# (nginx, wrk, chromium) when they are missing and apt-get is usable; fails loudly otherwise.
set -uo pipefail
status=0
for program in "$@"; do
  case "$program" in
    nginx) path=/usr/sbin/nginx; package=nginx ;;
    wrk) path=/usr/bin/wrk; package=wrk ;;
    chromium) path=/usr/bin/chromium; package=chromium ;;
    *) echo "ensure-tools: unknown program $program" >&2; status=1; continue ;;
  esac
  [ -x "$path" ] && continue
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "ensure-tools: installing $package"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$package" >/dev/null \
      || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$package" >/dev/null; }
  fi
  if [ ! -x "$path" ]; then
    echo "ensure-tools: $program ($path, Debian package $package) is missing and could not be installed" >&2
    status=1
  fi
done
exit "$status"
