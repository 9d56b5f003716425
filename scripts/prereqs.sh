#!/usr/bin/env bash
# Check (and where possible install) what `make test` and `make demo` need.
# Python 3.11+ and Go 1.25+ must be there; Debian packages are installed with
# apt-get when we are root, otherwise we say exactly what to install.
set -euo pipefail
missing=()

py=${PYTHON:-python3}
if ! command -v "$py" >/dev/null 2>&1; then
  missing+=("Python 3.11+ ($py not found)")
elif ! "$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
  missing+=("Python 3.11+ (found $("$py" --version 2>&1))")
elif ! "$py" -c 'import venv, ensurepip' >/dev/null 2>&1; then
  missing+=("python3-venv (Debian package)")
fi

if ! command -v go >/dev/null 2>&1; then
  missing+=("Go toolchain 1.25+ (go not on PATH; needed once to build the cluster binaries)")
else
  gov=$(go env GOVERSION | sed 's/^go//')
  major=${gov%%.*}; rest=${gov#*.}; minor=${rest%%.*}
  if [ "$major" -lt 1 ] || { [ "$major" -eq 1 ] && [ "$minor" -lt 25 ]; }; then
    missing+=("Go 1.25+ (found go$gov)")
  fi
fi

# Debian packages used by the end-to-end tests (prometheus) and benchmarks (nginx).
debs=()
command -v prometheus >/dev/null 2>&1 || debs+=(prometheus)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || debs+=(nginx-light)
# Sticky asset records: the router tests start their own redis-server.
command -v redis-server >/dev/null 2>&1 || debs+=(redis-server)
# Text verification: the text-drawing test backend's fonts, and the shared
# libraries OpenCV (pulled in by rapidocr_onnxruntime) loads.
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf ] || debs+=(fonts-dejavu)
libs=$(ldconfig -p 2>/dev/null || true)
[[ $libs == *libGL.so.1* ]] || debs+=(libgl1)
[[ $libs == *libglib-2.0.so.0* ]] || debs+=(libglib2.0-0)
# Container images without a daemon (make images, make test): buildah builds,
# mmdebstrap makes the Debian base, umoci unpacks and crun runs them in the tests.
for tool in buildah mmdebstrap umoci crun; do
  command -v "$tool" >/dev/null 2>&1 || debs+=("$tool")
done
if [ ${#debs[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[prereqs] installing Debian packages: ${debs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${debs[@]}" >/dev/null
    # The packages start system services; tests run their own instances.
    for svc in prometheus nginx redis-server; do
      (command -v systemctl >/dev/null && systemctl stop "$svc") >/dev/null 2>&1 || true
      pkill -x "$svc" >/dev/null 2>&1 || true
    done
  else
    missing+=("Debian packages: ${debs[*]} (sudo apt-get install ${debs[*]})")
  fi
fi

if [ ${#missing[@]} -gt 0 ]; then
  echo "Missing prerequisites:" >&2
  for m in "${missing[@]}"; do echo "  - $m" >&2; done
  exit 1
fi
echo "[prereqs] ok: $("$py" --version), go$(go env GOVERSION | sed 's/^go//'), prometheus, nginx"
