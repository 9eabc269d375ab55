#!/usr/bin/env bash
# Installs what the lab (test/lab/) needs on a fresh Debian 12 machine: debootstrap builds the image,
# systemd-container boots hosts (systemd-nspawn), iptables does NAT for apt inside hosts,
# iproute2 makes the bridge, util-linux has nsenter/mount, openssh-client has ssh/ssh-keygen/ssh-keyscan,
# sqlite3 reads the stand-in datastore backups, openssl makes the k3s stand-in's certificates when its unit tests
# run it on this machine (test/standins/k3s/kubeapi.py), python3-yaml is the PyYAML the k3s stand-in parses YAML
# with (its unit tests run it here; the lab image has it too). The stand-in's unit tests also use a real kubectl
# client (/usr/bin/kubectl, or PI_LAB_KUBECTL), which the lab lends its hosts: `k3s kubectl` execs it, the
# stand-in has none of its own. Debian has no package of it, so it is not installed here. Quick when everything
# is already there.
set -euo pipefail
packages=(debootstrap systemd-container openssh-client iptables iproute2 util-linux sqlite3 ca-certificates openssl python3-yaml)
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
