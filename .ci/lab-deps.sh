#!/usr/bin/env bash
# Installs what the lab (test/lab/) needs on a fresh Debian 12 machine: debootstrap builds the image,
# systemd-container boots hosts (systemd-nspawn), iptables does NAT for apt inside hosts,
# iproute2 makes the bridge, util-linux has nsenter/mount, openssh-client has ssh/ssh-keygen/ssh-keyscan,
# sqlite3 reads the stand-in datastore backups, openssl makes the k3s stand-in's certificates when its unit tests
# run it on this machine (test/standins/k3s/kubeapi.py). The unit tests of the stand-in's Kubernetes API also use
# a real kubectl client (/usr/bin/kubectl, or PI_LAB_KUBECTL), which the lab lends its hosts; Debian has no
# package of it, so it is not installed here. Quick when everything is already there.
set -euo pipefail
packages=(debootstrap systemd-container openssh-client iptables iproute2 util-linux sqlite3 ca-certificates openssl)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "lab-deps: all present (${packages[*]})"
  exit 0
fi
echo "lab-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "lab-deps: installed ${missing[*]}"
