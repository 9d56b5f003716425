#!/usr/bin/env bash
# The base layer of both images when no registry can be reached: Debian bookworm
# minbase made by mmdebstrap from Debian packages, slimmed like debian:bookworm-slim
# (docs, man pages and locales excluded by dpkg, so later apt-get installs stay slim
# too), imported into buildah's local storage. Prints the image name to build FROM.
#
# The Containerfiles' default base (docker.io/library/debian:bookworm-slim) and this
# recipe must describe the same system: tests/unit/test_images.py checks that they
# name the same suite and variant. Rebuilt only when this file changes.
set -euo pipefail
SUITE=bookworm
MIRROR=http://deb.debian.org/debian
SECURITY=http://deb.debian.org/debian-security
recipe=$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-12)
image="localhost/modelfleet-base/debian:${SUITE}-slim-${recipe}"

if buildah inspect --type image "$image" >/dev/null 2>&1; then
  echo "$image"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "[images] building the base layer ($SUITE minbase, slim) with mmdebstrap" >&2
# A fixed epoch: the same Debian archive state gives a byte-identical tarball.
SOURCE_DATE_EPOCH=${BASE_SOURCE_DATE_EPOCH:-1700000000} mmdebstrap \
  --quiet --mode=root --variant=minbase --format=tar \
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
  --aptopt='Acquire::Languages "none"' \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/info/*' \
  --dpkgopt='path-exclude=/usr/share/groff/*' \
  --dpkgopt='path-exclude=/usr/share/lintian/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-include=/usr/share/locale/locale.alias' \
  "$SUITE" "$work/rootfs.tar" \
  "deb $MIRROR $SUITE main" "deb $MIRROR $SUITE-updates main" "deb $SECURITY $SUITE-security main" \
  >"$work/mmdebstrap.log" 2>&1 || { tail -40 "$work/mmdebstrap.log" >&2; exit 1; }

ctr=$(buildah from --quiet scratch)
buildah add --quiet "$ctr" "$work/rootfs.tar" / >/dev/null
buildah config --cmd bash \
  --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --label org.opencontainers.image.description="Debian $SUITE minbase (mmdebstrap), slim" \
  "$ctr"
buildah commit --quiet --rm --timestamp "${BASE_SOURCE_DATE_EPOCH:-1700000000}" "$ctr" "$image" >/dev/null
echo "$image"
