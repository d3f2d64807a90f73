#!/usr/bin/env bash
# Makes a local stand-in for the public base image (default python:3.11-slim-bookworm) on a machine that reaches
# Debian's package archive but no container registry: `debootstrap bookworm` plus Debian's python3 (3.11), tagged
# under the public name so the Dockerfile's `FROM` resolves locally and stays the standard one.
# Like the real image it has `python`/`python3` with a working `python -m venv`, CA certificates and useradd.
# (Debian's python3 lives in /usr/bin, the official image's in /usr/local/bin; the Dockerfile cares about neither.)
#
# Usage: scripts/base_standin.sh [IMAGE]     (root; needs podman and debootstrap)
set -euo pipefail

IMAGE="${1:-python:3.11-slim-bookworm}"
case "$IMAGE" in
  */*) FULL="$IMAGE" ;;
  *) FULL="docker.io/library/$IMAGE" ;;  # how podman and docker name an unqualified public image
esac
SUITE=bookworm
MIRROR="${DEBIAN_MIRROR:-$(sed -n 's/^URIs: *\(http[^ ]*debian\)$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null \
  | head -n1)}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"

if podman image exists "$FULL"; then
  echo "base_standin: $FULL is already present"
  exit 0
fi
command -v debootstrap >/dev/null || { echo "base_standin: debootstrap is missing (apt-get install debootstrap)" >&2; exit 1; }

ROOTFS="$(mktemp -d /var/tmp/cachesvc-base.XXXXXX)"
trap 'rm -rf "$ROOTFS"' EXIT
echo "base_standin: debootstrap $SUITE from $MIRROR into $ROOTFS"
debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
  "$SUITE" "$ROOTFS" "$MIRROR" >"$ROOTFS.log" 2>&1 || { tail -n 30 "$ROOTFS.log" >&2; exit 1; }
rm -f "$ROOTFS.log"
# Trim what an image never needs, as the official slim image does.
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/cache/apt/archives/*.deb \
  "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* "$ROOTFS"/var/log/*.log
echo "base_standin: importing as $FULL"
tar -C "$ROOTFS" -c . | podman import --quiet \
  --change 'ENV LANG=C.UTF-8' \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["python3"]' \
  - "$FULL" >/dev/null
podman run --rm --network host "$FULL" python --version
