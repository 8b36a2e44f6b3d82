#!/usr/bin/env bash
# Make sure PostgreSQL (5432), Redis (6379) and RabbitMQ (5672) answer on 127.0.0.1:
# start the ones that are down, install the ones that are missing (Debian packages).
set -euo pipefail

up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  local port=$1 name=$2 deadline=$(( $(date +%s) + 120 ))
  until up "$port"; do
    if [ "$(date +%s)" -ge "$deadline" ]; then echo "services: $name did not come up on $port" >&2; exit 1; fi
    sleep 1
  done
}

apt_install() {
  echo "services: installing $*" >&2
  if [ -z "${_apt_updated:-}" ]; then apt-get update -qq; _apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if ! up 5432; then
  command -v pg_ctlcluster >/dev/null || apt_install postgresql
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  wait_port 5432 PostgreSQL
  # Tests connect as postgres over TCP without a password, as on the development machines.
  if ! psql -h 127.0.0.1 -U postgres -c 'select 1' >/dev/null 2>&1; then
    hba=$(ls /etc/postgresql/*/main/pg_hba.conf | head -n1)
    sed -i 's/^\(host\s\+all\s\+all\s\+127.0.0.1\/32\s\+\)\S\+/\1trust/' "$hba"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main reload
  fi
fi
if ! up 6379; then
  command -v redis-server >/dev/null || apt_install redis-server
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  wait_port 6379 Redis
fi
if ! up 5672; then
  command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
  rabbitmq-server -detached
  wait_port 5672 RabbitMQ
fi
echo "services: PostgreSQL, Redis and RabbitMQ are up" >&2
