#!/bin/bash
# stage-binaries.sh DEST BINARY...: copy each binary and the shared libraries it loads (per ldd)
# under DEST at the same paths, so that a scratch image can run it.
set -euo pipefail
dest=$1
shift
for binary in "$@"; do
	for file in "$binary" $(ldd "$binary" | grep -o '/[^ ]*'); do
		mkdir -p "$dest$(dirname "$file")"
		cp -L "$file" "$dest$file"
	done
done
