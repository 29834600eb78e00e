#!/bin/sh
# Install the Debian packages Tide needs, if any are missing. Idempotent and
# quiet when everything is present. Uses sudo when not root.
# Extra package names may be given as arguments (make fuzz adds clang).
set -eu
pkgs="build-essential pkg-config luajit libluajit-5.1-dev lua-lpeg lua-cjson libopenblas-dev libuv1-dev
libcmocka-dev libzstd-dev libopenmpi-dev openmpi-bin libjansson-dev libedit-dev libutf8proc-dev
unicode-data libhttp-parser-dev tmux curl chromium ${*:-}"
missing=""
for p in $pkgs; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "tide: installing missing Debian packages:$missing" >&2
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
