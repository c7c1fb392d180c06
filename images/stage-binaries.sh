#!/bin/bash
# stage-binaries.sh DEST BINARY...: copy each binary and the shared libraries it loads (per ldd)
# under DEST at the same paths, so that a scratch image can run it. DEST keeps the system's
# merged-/usr links (/lib -> usr/lib, ...) so that every path ldd names resolves the same way.
set -euo pipefail
dest=$1
shift
mkdir -p "$dest/usr"
for dir in bin sbin lib lib64; do
  if [[ -L /$dir ]]; then
    mkdir -p "$dest/$(readlink "/$dir")"
    ln -sfn "$(readlink "/$dir")" "$dest/$dir"
  fi
done
for binary in "$@"; do
  for file in "$binary" $(ldd "$binary" | grep -o '/[^ ]*'); do
    mkdir -p "$dest$(dirname "$file")"
    cp -L "$file" "$dest$file"
  done
done
