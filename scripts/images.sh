#!/usr/bin/env bash
# `make images`: build the operator/router image and the worker image as OCI image
# archives with no Docker daemon and no registry. buildah builds the very
# Containerfiles Docker users build (operator/Dockerfile, worker_image/Dockerfile),
# FROM a Debian base made locally by scripts/image-base.sh instead of the pulled
# debian:bookworm-slim; Python packages come from PyPI, Debian packages from Debian.
#
#   scripts/images.sh [modelfleet] [worker]     (default: both)
#
# Writes dist/images/<name>-<version>.oci.tar (an OCI image layout, the image under
# the tag <version>), the version being pyproject.toml's. Needs root, buildah and
# mmdebstrap (scripts/prereqs.sh installs them).
#
# MODELFLEET_IMAGE_OUT=DIR writes the archives there instead; MODELFLEET_IMAGE_NO_CACHE=1
# rebuilds every step (buildah --no-cache) rather than reusing cached layers, which is
# how tests/integration/process/test_images_reproducible.py builds its second copy.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(modelfleet worker)

version=$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
# File times and the created date come from the last commit, not the clock: the same
# commit builds the same layers (tests/integration/process/test_images_reproducible.py).
epoch=$(git log -1 --format=%ct 2>/dev/null || echo 0)
out=${MODELFLEET_IMAGE_OUT:-dist/images}
mkdir -p "$out"
base=$(bash scripts/image-base.sh)

build_opts=(--quiet --layers --timestamp "$epoch"
  # chroot isolation: RUN steps need no OCI runtime or cgroup setup (this works
  # inside containers and on cgroup v1/v2 hybrids) and share the host network.
  --isolation=chroot
  --build-arg BASE_IMAGE="$base"
  --build-arg VERSION="$version"
  --build-arg REVISION="$revision"
  --build-arg SOURCE_DATE_EPOCH="$epoch")
[ -z "${MODELFLEET_IMAGE_NO_CACHE:-}" ] || build_opts+=(--no-cache)

# Behind a TLS-intercepting proxy the host trusts a CA that the build's pip does
# not: lend pip that bundle for the build only, through root's pip config on a
# read-only mount over /root (a path the base already has, so no mount point is
# left in a layer). Nothing of it is written into the image.
ca=${MODELFLEET_BUILD_CA_BUNDLE:-${PIP_CERT:-}}
if [ -n "$ca" ] && [ -f "$ca" ]; then
  lend=$(mktemp -d)
  trap 'rm -rf "$lend"' EXIT
  mkdir -p "$lend/.config/pip"
  cp "$ca" "$lend/ca.crt"
  printf '[global]\ncert = /root/ca.crt\n' >"$lend/.config/pip/pip.conf"
  build_opts+=(--volume "$lend:/root:ro")
fi

for name in "${names[@]}"; do
  case $name in
    modelfleet) file=operator/Dockerfile ;;
    worker) file=worker_image/Dockerfile ;;
    *) echo "unknown image '$name' (known: modelfleet, worker)" >&2; exit 2 ;;
  esac
  tag="localhost/modelfleet/$name:$version"
  archive="$out/$name-$version.oci.tar"
  start=$SECONDS
  echo "[images] building $name $version from $file" >&2
  buildah bud "${build_opts[@]}" -f "$file" -t "$tag" . >/dev/null
  rm -f "$archive"
  buildah push --quiet "$tag" "oci-archive:$archive:$version"
  echo "[images] $archive: $(du -m "$archive" | cut -f1) MB compressed, built in $((SECONDS - start))s" >&2
done
