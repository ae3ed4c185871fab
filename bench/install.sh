#!/bin/sh
# Installs the bench's peers and tools from Debian's packages (root, Debian/Ubuntu): stunnel4 and haproxy
# (`npm run bench`), nginx, haproxy and wrk (`npm run bench:l7`: nginx is its upstream server and a hop,
# wrk its most-requests load). The L4 bench runs without the peers too, and says which are missing.
set -eu
if [ "$(id -u)" -ne 0 ]; then
  echo "bench/install.sh: run as root (or: sudo apt-get install -y stunnel4 haproxy nginx wrk)" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "bench/install.sh: no apt-get here; install stunnel (>= 5), haproxy (>= 2.2), nginx (>= 1.18) and wrk (>= 4.1) with your package manager" >&2
  exit 1
fi
apt-get update
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends stunnel4 haproxy nginx wrk
# The packages' own services are not used by the bench (it runs its own instances on loopback ports).
echo
stunnel4 -version 2>&1 | grep -m1 '^stunnel' || true
haproxy -v | head -n 1
nginx -v 2>&1
wrk -v 2>&1 | head -n 1 || true
