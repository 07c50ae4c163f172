#!/usr/bin/env bash
# Builds SeaweedFS's `weed` command from the Go module proxy, at the version pinned in versions.env,
# into ~/.cache/prelabel/seaweedfs-<version>/bin. The model store's S3 tests run it as a local
# process (local/prelabel_local/s3.py: `weed mini`, its S3 gateway on loopback). A warm cache
# returns in seconds.
#
#   bin/weed  <- github.com/seaweedfs/seaweedfs/weed, through a wrapper go.mod that requires the
#                module and copies its replace directives (a `replace` applies only in the main
#                module, so `go install module@version` refuses a module that has one)
#
# Prints the bin folder on stdout as its last line; progress goes to stderr.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"

cache=${PRELABEL_CACHE:-$HOME/.cache/prelabel}
out="$cache/seaweedfs-$SEAWEEDFS_VERSION"
bin="$out/bin"
if [ -x "$bin/weed" ]; then echo "$bin"; exit 0; fi

export GOTOOLCHAIN="$SEAWEEDFS_GO_TOOLCHAIN" GOFLAGS=-mod=mod GOPROXY=${GOPROXY:-https://proxy.golang.org}
export GOMODCACHE="$cache/go/mod" GOCACHE="$cache/go/build" CGO_ENABLED=0
mkdir -p "$bin" "$out/src"
started=$(date +%s)
module=github.com/seaweedfs/seaweedfs

printf '[seaweedfs 1/2] resolving %s@%s (Go %s)\n' "$module" "$SEAWEEDFS_VERSION" "$GOTOOLCHAIN" >&2
wrapper="$out/src/build"
mkdir -p "$wrapper"
if [ ! -f "$wrapper/go.sum" ]; then
  (cd "$wrapper" && rm -f go.mod && go mod init prelabel.local/seaweedfs-build >/dev/null 2>&1)
  upstream_mod=$(cd "$wrapper" && go mod download -json "$module@$SEAWEEDFS_VERSION" \
                 | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  {
    echo "require $module $SEAWEEDFS_VERSION"
    # Upstream's replace directives, single-line and block form, verbatim.
    grep '^replace .* => ' "$upstream_mod" || true
    sed -n '/^replace (/,/^)/p' "$upstream_mod"
  } >> "$wrapper/go.mod"
  cat > "$wrapper/tools.go" <<'GO'
//go:build tools

package tools

import _ "github.com/seaweedfs/seaweedfs/weed"
GO
  (cd "$wrapper" && go mod tidy >&2)
fi

printf '[seaweedfs 2/2] building weed (cold: about 14 min on 2 busy cores)\n' >&2
commit=${SEAWEEDFS_VERSION##*-}
(cd "$wrapper" && go build -trimpath -ldflags "-s -w -X $module/weed/util/version.COMMIT=${commit:0:8}" \
   -o "$bin/weed.tmp" "$module/weed" && mv "$bin/weed.tmp" "$bin/weed")

[ -x "$bin/weed" ] || { echo "seaweedfs build incomplete in $bin" >&2; exit 1; }
printf '[seaweedfs] done in %ss\n' "$(( $(date +%s) - started ))" >&2
echo "$bin"
