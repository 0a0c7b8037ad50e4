#!/usr/bin/env bash
# `make test-distributed`'s Celery broker: Debian's redis-server (7.0.x). Installs the package when
# the binary is missing (CI runs as root on a clean Debian machine); the test starts its own server
# on a free loopback port without persistence (tests/distributed/redis_broker.py). The installed
# package's own service is not used.
set -euo pipefail

if command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "redis-server is missing: install Debian's redis-server package (apt-get install redis-server)" >&2
    exit 1
fi
echo "installing redis-server (apt-get)"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends redis-server >/dev/null
redis-server --version
