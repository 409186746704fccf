#!/usr/bin/env bash
# Installs what `pytest -m slurm` needs to start a single-node Slurm on this machine (Debian 12):
# munge, the Slurm controller, node daemon and client commands, and slurmdbd + MariaDB for job
# accounting (the Snakemake Slurm executor polls `sacct`). Idempotent: installs only what is missing.
# The packages' services are not started here; tests/slurm_cluster.py starts its own daemons.
set -euo pipefail

packages=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server)
missing=()
for package in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$package")
  fi
done
if [ "${#missing[@]}" -eq 0 ]; then
  echo "slurm-setup: all of ${packages[*]} already installed"
  exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  sudo="sudo"
fi
# Where an init system runs, Debian may start the packaged services: the tests do not use them (their
# daemons have their own sockets, ports and key). In a container without one, nothing starts.
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q
$sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
echo "slurm-setup: installed ${missing[*]}"
