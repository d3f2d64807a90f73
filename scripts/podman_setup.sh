#!/usr/bin/env bash
# Gets podman ready for `make image` / `make container-test`; idempotent (each step only when missing).
#   1. podman, buildah and runc from Debian's packages (apt-get, as root) when podman is not installed;
#   2. on a host without systemd (this project's machines): scripts/containers.conf as a podman drop-in
#      (cgroupfs, file events, runc, host network, ulimits within the hard limits). PODMAN_CONF=yes|no overrides;
#   3. the base image: present, else pulled, else (no registry reachable) a local stand-in built with debootstrap
#      (scripts/base_standin.sh) and tagged under the public name.
#
# Usage: scripts/podman_setup.sh [BASE_IMAGE]     (default python:3.11-slim-bookworm)
set -euo pipefail

BASE="${1:-python:3.11-slim-bookworm}"
HERE="$(cd "$(dirname "$0")" && pwd)"
DROPIN=/etc/containers/containers.conf.d/50-cachesvc.conf
say() { echo "podman_setup: $*"; }

apt_install() {
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    say "missing $*; install it (Debian/Ubuntu: sudo apt-get install -y $*) or run as root" >&2
    exit 1
  fi
  say "installing $* (apt-get)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# 1. The tools. runc is named so that apt does not pick crun for podman's `crun | runc` (crun fails on this
# machine's cgroup layout).
missing=()
for tool in podman buildah runc; do command -v "$tool" >/dev/null || missing+=("$tool"); done
[ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"

# 2. The configuration.
conf="${PODMAN_CONF:-auto}"
if [ "$conf" = auto ]; then
  if [ -d /run/systemd/system ]; then conf=no; else conf=yes; fi
fi
if [ "$conf" = yes ]; then
  if ! cmp -s "$HERE/containers.conf" "$DROPIN" 2>/dev/null; then
    [ "$(id -u)" = 0 ] || { say "writing $DROPIN needs root" >&2; exit 1; }
    mkdir -p "$(dirname "$DROPIN")"
    cp "$HERE/containers.conf" "$DROPIN"
    say "installed $DROPIN"
  fi
else
  say "leaving podman's configuration alone (systemd host or PODMAN_CONF=no)"
fi

# 3. The base image.
case "$BASE" in
  */*) full="$BASE" ;;
  *) full="docker.io/library/$BASE" ;;
esac
if podman image exists "$full"; then
  say "base image $full is present"
elif timeout 300 podman pull -q "$full" >/dev/null 2>&1; then
  say "pulled $full"
else
  say "cannot pull $full (no registry reachable?): building a local stand-in"
  command -v debootstrap >/dev/null || apt_install debootstrap
  bash "$HERE/base_standin.sh" "$BASE"
fi
