#!/usr/bin/env bash
# SSH host for the compose stack: user `dvc`, key-only login, a bare registry and a DVC store.
set -euo pipefail
apt-get update -qq && apt-get install -y -qq --no-install-recommends openssh-server git >/dev/null
id dvc >/dev/null 2>&1 || useradd -m -s /bin/bash dvc
mkdir -p /run/sshd /home/dvc/.ssh /srv/dvc-store
[ -d /srv/registry.git ] || git init -q --bare --initial-branch=main /srv/registry.git
cp /keys/id_ed25519.pub /home/dvc/.ssh/authorized_keys
chown -R dvc:dvc /home/dvc/.ssh /srv/registry.git /srv/dvc-store
chmod 700 /home/dvc/.ssh && chmod 600 /home/dvc/.ssh/authorized_keys
ssh-keygen -A
echo "sshhost $(cut -d' ' -f1,2 /etc/ssh/ssh_host_ed25519_key.pub)" > /keys/known_hosts
exec /usr/sbin/sshd -D -e -o PasswordAuthentication=no
