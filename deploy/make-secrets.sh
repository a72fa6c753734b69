#!/bin/sh
# Writes the secrets deploy/docker-compose.yml reads as files, random, once: an existing file is kept.
# deploy/secrets/ is private to you (0700); the files themselves are 0644 because compose bind-mounts each into
# its container as it is, where services run as other users (tickcast: uid 10001) and must read it.
set -eu
dir="$(dirname "$0")/secrets"
mkdir -p "$dir"
chmod 0700 "$dir"
random() { python3 -c 'import secrets; print(secrets.token_urlsafe(24))'; }
put() {  # put NAME VALUE: write the file unless it exists
  [ -e "$dir/$1" ] && return 0
  (umask 022 && printf '%s\n' "$2" > "$dir/$1")
}
put grafana_admin_password "$(random)"
put minio_root_user "tickcast"
put minio_root_password "$(random)"
put aws_credentials "$(printf '[default]\naws_access_key_id = %s\naws_secret_access_key = %s' \
  "$(cat "$dir/minio_root_user")" "$(cat "$dir/minio_root_password")")"
echo "secrets in $dir: $(ls "$dir" | tr '\n' ' ')"
