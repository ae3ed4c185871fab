#!/bin/sh
# Installs the bench's peers from Debian's packages: stunnel4 and haproxy (root, Debian/Ubuntu).
# The bench runs without them too, and says which are missing.
set -eu
if [ "$(id -u)" -ne 0 ]; then
  echo "bench/install.sh: run as root (or: sudo apt-get install -y stunnel4 haproxy)" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "bench/install.sh: no apt-get here; install stunnel (>= 5) and haproxy (>= 2.2) with your package manager" >&2
  exit 1
fi
apt-get update
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends stunnel4 haproxy
# The packages' own services are not used by the bench (it runs its own instances on loopback ports).
echo
stunnel4 -version 2>&1 | grep -m1 '^stunnel' || true
haproxy -v | head -n 1
