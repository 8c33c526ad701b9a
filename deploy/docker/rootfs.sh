#!/usr/bin/env bash
# Assembles the root file system of one opsloop image (used by the
# Dockerfiles' `rootfs` stage, on a Debian bookworm builder):
#   rootfs.sh DEST PROGRAM...
# DEST receives each PROGRAM in /usr/local/bin (stripped), the shared
# libraries they load (found with ldd, copied to the paths the loader
# looks in, the loader included), tini-static as /usr/bin/tini, the CA
# bundle, the time-zone database, a passwd/group with the `opsloop` user
# (uid/gid 10001) and the directories the daemons write, owned by it.
# Nothing else: no shell, no package manager.
set -euo pipefail

dest=$1
shift
(($# > 0)) || { echo "rootfs.sh: no program given" >&2; exit 2; }

mkdir -p "$dest/usr/local/bin" "$dest/usr/bin" "$dest/etc/ssl/certs" "$dest/usr/share"

copy_lib() { # path as ldd prints it → the same path under DEST (the file, not a link)
  local lib=$1
  [[ -e "$dest$lib" ]] && return
  mkdir -p "$dest$(dirname "$lib")"
  cp -L "$lib" "$dest$lib"
}

for program in "$@"; do
  target="$dest/usr/local/bin/$(basename "$program")"
  cp -L "$program" "$target"
  strip --strip-unneeded "$target" 2>/dev/null || true
  # `ldd` lines: "libx.so => /path/libx.so (0x…)" or "/lib64/ld-linux… (0x…)".
  while read -r lib; do
    copy_lib "$lib"
  done < <(ldd "$program" | sed -n 's/.*=> \(\/[^ ]*\) .*/\1/p; s/^[[:space:]]*\(\/[^ ]*\) (0x.*/\1/p')
done

# PID 1: forwards SIGTERM and reaps children (pg_dump's, kill(1)).
cp /usr/bin/tini-static "$dest/usr/bin/tini"
cp /etc/ssl/certs/ca-certificates.crt "$dest/etc/ssl/certs/"
cp -a /usr/share/zoneinfo "$dest/usr/share/zoneinfo"
# `right/` duplicates every zone with leap seconds; nothing here uses it.
rm -rf "$dest/usr/share/zoneinfo/right"
ln -sf /usr/share/zoneinfo/Etc/UTC "$dest/etc/localtime"

cat >"$dest/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/usr/sbin/nologin
opsloop:x:10001:10001:opsloop:/var/lib/opsloop:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
EOF
cat >"$dest/etc/group" <<'EOF'
root:x:0:
opsloop:x:10001:
nogroup:x:65534:
EOF
echo 'hosts: files dns' >"$dest/etc/nsswitch.conf"

install -d -m 1777 "$dest/tmp"
install -d -m 0755 "$dest/etc/opsloop"
install -d -o 10001 -g 10001 -m 0750 "$dest/var/lib/opsloop" "$dest/var/lib/opsloop/backups" \
  "$dest/var/log/opsloop"
