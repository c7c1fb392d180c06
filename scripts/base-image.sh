#!/usr/bin/env bash
# Build the Debian bookworm base image that every image of the project starts FROM, with no
# registry: debootstrap a minimal root file system from apt's configured mirror, then
# `docker import` it as exo-operator/debian:bookworm. The tarball is cached; a rerun takes seconds.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

BASE_IMAGE_TAG="${BASE_IMAGE_TAG:-exo-operator/debian:bookworm}"
SUITE=bookworm
IMAGES_CACHE="$EXO_CACHE/images"
ROOTFS_TAR="$IMAGES_CACHE/debian-$SUITE-minbase.tar"

# The first URI of apt's own sources, so the image uses the mirror this machine is set up for.
debian_mirror() {
  local uri
  uri=$(grep -h -m1 -E '^URIs:.*debian/?$' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' || true)
  [[ -z $uri ]] && uri=$(grep -h -m1 -E '^deb .*debian/? ' /etc/apt/sources.list 2>/dev/null | awk '{print $2}' || true)
  echo "${uri:-http://deb.debian.org/debian}"
}

build_rootfs_tarball() {
  command -v debootstrap >/dev/null || die "debootstrap is missing: run scripts/docker.sh up (it installs it)"
  local mirror
  mirror=$(debian_mirror)
  work=$(mktemp -d "$IMAGES_CACHE/debootstrap.XXXXXX")
  trap 'rm -rf "$work"' EXIT # $work is global so that the trap still sees it
  log "debootstrap --variant=minbase $SUITE from $mirror (about a minute)"
  debootstrap --variant=minbase --cache-dir="$IMAGES_CACHE/debs" "$SUITE" "$work/rootfs" "$mirror" \
    >"$work/debootstrap.log" 2>&1 || {
    tail -n 20 "$work/debootstrap.log" >&2
    die "debootstrap failed (log above): check that apt reaches $mirror"
  }
  # Image hygiene: no package lists or caches, an apt that keeps none, the machine's own sources.
  rm -rf "$work/rootfs"/var/lib/apt/lists/* "$work/rootfs"/var/cache/apt/*.bin \
    "$work/rootfs"/var/cache/apt/archives/*.deb "$work/rootfs"/var/log/* "$work/rootfs"/tmp/*
  printf 'deb %s %s main\ndeb %s %s-updates main\n' "$mirror" "$SUITE" "$mirror" "$SUITE" \
    >"$work/rootfs/etc/apt/sources.list"
  printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' \
    >"$work/rootfs/etc/apt/apt.conf.d/90-exo-no-recommends"
  : >"$work/rootfs/etc/hostname"
  tar --numeric-owner --xattrs -C "$work/rootfs" -cf "$ROOTFS_TAR.partial" .
  mv "$ROOTFS_TAR.partial" "$ROOTFS_TAR"
}

main() {
  docker_cli info >/dev/null 2>&1 || die "the docker daemon does not answer: run scripts/docker.sh up"
  mkdir -p "$IMAGES_CACHE/debs"
  local digest
  if [[ -f $ROOTFS_TAR ]]; then
    log "reusing $ROOTFS_TAR"
  else
    build_rootfs_tarball
  fi
  digest=$(sha256sum "$ROOTFS_TAR" | cut -c1-16)
  if [[ $(docker_cli image inspect -f '{{index .Config.Labels "dev.exo.rootfs"}}' "$BASE_IMAGE_TAG" 2>/dev/null) == "$digest" ]]; then
    log "$BASE_IMAGE_TAG is up to date"
    return 0
  fi
  log "importing $ROOTFS_TAR as $BASE_IMAGE_TAG"
  docker_cli import \
    --change 'CMD ["/bin/bash"]' \
    --change 'ENV LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive' \
    --change "LABEL dev.exo.rootfs=$digest" \
    "$ROOTFS_TAR" "$BASE_IMAGE_TAG" >/dev/null
  log "built $BASE_IMAGE_TAG ($(docker_cli image inspect -f '{{.Size}}' "$BASE_IMAGE_TAG" | numfmt --to=iec))"
}

main "$@"
