#!/usr/bin/env bash
# Build the gitstafette image with no container registry: a Debian bookworm root file system made with
# debootstrap (python3, its venv module, CA certificates) is imported as a local base image, and the
# project's Containerfile is built on it with buildah. Needs root, buildah, podman and debootstrap
# (Debian packages: apt-get install buildah podman debootstrap). Idempotent: the base image is made once
# (kept in the container storage, and its root file system as a tarball in the cache folder), and buildah
# reuses the layers of an earlier build whose inputs did not change.
#
#   scripts/build-image.sh                 # → localhost/gitstafette:dev
#
# Progress goes to standard error; standard output is one JSON line for scripts and tests: the image, its
# id and size in bytes, the build's seconds, and the storage flags (root, driver) that reach it.
#
# Environment (all optional):
#   GITSTAFETTE_IMAGE       the image to build (default localhost/gitstafette:dev)
#   GITSTAFETTE_BASE_IMAGE  build on this base instead of the local Debian one (e.g. the Containerfile's
#                           default, where a registry is reachable); the debootstrap steps are then skipped
#   STORAGE_DRIVER          buildah/podman storage driver: overlay where this machine can mount one (much
#                           faster), else vfs
#   GITSTAFETTE_STORAGE_ROOT the container storage of these images (default
#                           /var/lib/containers/gitstafette-$STORAGE_DRIVER, apart from the machine's default
#                           storage, which may use another driver); the script prints the flags that use it
#   DEBIAN_MIRROR           debootstrap's mirror (default: the one apt on this machine uses)
#   GITSTAFETTE_CACHE       where the base root file system tarball is kept (default ~/.cache/gitstafette)
set -euo pipefail
cd "$(dirname "$0")/.."

image=${GITSTAFETTE_IMAGE:-localhost/gitstafette:dev}

overlay_works() {
  local d rc=1
  d=$(mktemp -d) && mkdir -p "$d"/{l,u,w,m} || return 1
  if mount -t overlay overlay -o "lowerdir=$d/l,upperdir=$d/u,workdir=$d/w" "$d/m" 2>/dev/null; then
    umount "$d/m" && rc=0
  fi
  rm -rf "$d"
  return $rc
}
if [ -z "${STORAGE_DRIVER:-}" ]; then
  if overlay_works; then STORAGE_DRIVER=overlay; else STORAGE_DRIVER=vfs; fi
fi
storage_root=${GITSTAFETTE_STORAGE_ROOT:-/var/lib/containers/gitstafette-$STORAGE_DRIVER}
storage=(--root "$storage_root" --storage-driver "$STORAGE_DRIVER")
cache=${GITSTAFETTE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gitstafette}
suite=bookworm
packages=python3,python3-venv,ca-certificates
# The base's tag names its recipe: a change to the suite, the packages or the trimming below makes a new one.
recipe_version=1
recipe_id=$(printf '%s %s %s' "$suite" "$packages" "$recipe_version" | sha256sum | cut -c1-10)
local_base=localhost/gitstafette-base:$suite-$recipe_id

log() { printf 'build-image: %s\n' "$*" >&2; }

debian_mirror() {
  if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
  local uri
  uri=$(grep -hs -m1 -E '^URIs: .*/debian/?$' /etc/apt/sources.list.d/*.sources | awk '{print $2}' || true)
  [ -n "$uri" ] || uri=$(grep -hs -m1 -E '^deb .*/debian/? ' /etc/apt/sources.list | awk '{print $2}' || true)
  echo "${uri:-http://deb.debian.org/debian}"
}

make_local_base() {
  if buildah "${storage[@]}" inspect --type image "$local_base" >/dev/null 2>&1; then
    log "base $local_base: present"
    return
  fi
  local tarball=$cache/rootfs-$suite-$recipe_id.tar
  if [ ! -s "$tarball" ]; then
    local mirror rootfs
    mirror=$(debian_mirror)
    mkdir -p "$cache"
    rootfs=$(mktemp -d "$cache/rootfs.XXXXXX")
    trap 'rm -rf "$rootfs"' EXIT
    log "debootstrap $suite ($packages) from $mirror"
    debootstrap --variant=minbase --include="$packages" "$suite" "$rootfs" "$mirror" >"$cache/debootstrap.log" 2>&1 \
      || { tail -n 20 "$cache/debootstrap.log" >&2; exit 1; }
    # The point-release and security updates of the suite, as the public images have them.
    local security
    security=$(grep -hs -m1 -E '^URIs: .*/debian-security/?$' /etc/apt/sources.list.d/*.sources | awk '{print $2}' || true)
    {
      echo "deb $mirror $suite main"
      echo "deb $mirror $suite-updates main"
      [ -z "$security" ] || echo "deb $security $suite-security main"
    } >"$rootfs/etc/apt/sources.list"
    log "upgrading the base to $suite-updates${security:+ and $suite-security}"
    { chroot "$rootfs" apt-get update -qq && DEBIAN_FRONTEND=noninteractive chroot "$rootfs" apt-get upgrade -y -qq; } \
      >>"$cache/debootstrap.log" 2>&1 || { tail -n 20 "$cache/debootstrap.log" >&2; exit 1; }
    # What a slim image leaves out: package caches and lists, documentation (but the copyright files),
    # manuals, translations, logs.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/lib/apt/lists/* \
      "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/* "$rootfs"/var/log/*
    find "$rootfs/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
    find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
    # Device nodes come from the container runtime, not from the image.
    tar --numeric-owner --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' \
      -C "$rootfs" -cf "$tarball.part" .
    mv "$tarball.part" "$tarball"
    rm -rf "$rootfs"
    trap - EXIT
  else
    log "base root file system: cached ($tarball)"
  fi
  log "importing $tarball as $local_base"
  podman "${storage[@]}" import --quiet "$tarball" "$local_base" >/dev/null
}

if [ -n "${GITSTAFETTE_BASE_IMAGE:-}" ]; then
  base=$GITSTAFETTE_BASE_IMAGE
else
  make_local_base
  base=$local_base
fi

version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' src/gitstafette/__init__.py)
source_url=$(git config --get remote.origin.url 2>/dev/null || echo unknown)
build_args=(--build-arg "BASE=$base" --build-arg "VERSION=$version" --build-arg "SOURCE=$source_url")
# pip in the build reaches the package index through the same CA bundle as this machine's pip (a TLS proxy
# may sit in between); it is a build secret, mounted for the pip steps only and never stored in a layer.
ca=${PIP_CERT:-$(pip config get global.cert 2>/dev/null || true)}
[ -n "$ca" ] || ca=/etc/ssl/certs/ca-certificates.crt
secret=()
[ -s "$ca" ] && secret=(--secret "id=pip-ca,src=$ca")

log "building $image on $base"
start=$(date +%s)
buildah "${storage[@]}" bud --isolation chroot --layers "${build_args[@]}" "${secret[@]}" \
  -f Containerfile -t "$image" . >&2
seconds=$(($(date +%s) - start))
# (no `… | head` here: under pipefail, a lister cut off by head fails the script with SIGPIPE)
id=$(podman "${storage[@]}" image inspect --format '{{.Id}}' "$image")
bytes=$(podman "${storage[@]}" image inspect --format '{{.Size}}' "$image")
log "built $image ($((bytes / 1000000)) MB) in $seconds s; use it with: podman ${storage[*]} …"
printf '{"image": "%s", "id": "%s", "size_bytes": %s, "seconds": %s, "storage_root": "%s", "storage_driver": "%s"}\n' \
  "$image" "$id" "$bytes" "$seconds" "$storage_root" "$STORAGE_DRIVER"
