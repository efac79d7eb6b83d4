#!/usr/bin/env bash
# Build the mongodb role's test stand-in (a static binary) with the machine's own `go`,
# its modules coming from the Go module proxy `go` is configured with. Usage: build.sh OUT
# Writes OUT and OUT.sha256; make calls it only when a source is newer than OUT.
set -euo pipefail
out=$(realpath -m "$1")
cd "$(dirname "$0")"
command -v go >/dev/null || { echo "build.sh: 'go' is needed to build the mongod stand-in" >&2; exit 1; }
mkdir -p "$(dirname "$out")"
CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$out.tmp" .
mv "$out.tmp" "$out"
sha256sum "$out" | cut -d' ' -f1 >"$out.sha256"
echo "built $out (sha256 $(cat "$out.sha256"))"
