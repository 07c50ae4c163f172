#!/usr/bin/env bash
# Builds Argo CD's all-in-one binary from the Go module proxy, at the version pinned in versions.env,
# into ~/.cache/prelabel/argocd-<version>/. A warm cache returns in seconds. The GitOps test runs
# two of its components (repo server, application controller) as local processes: see
# local/prelabel_local/argocd.py.
#
#   bin/argocd               <- github.com/argoproj/argo-cd/v3/cmd, through a wrapper go.mod that
#                               copies upstream's replace block (all but its local gitops-engine
#                               line: the proxy serves that module), each component selected by
#                               ARGOCD_BINARY_NAME; one line patched (see below)
#   bin/git-verify-wrapper.sh <- the module's hack/ copy: the repo server runs it during manifest
#                               generation even with GPG off, so it must be on PATH
#   crds/                    <- the module's manifests/crds (Application, AppProject)
#
# Argo CD needs a newer Go than the control plane: GOTOOLCHAIN fetches it from the proxy too.
# Prints the output folder on stdout as its last line; progress goes to stderr.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"

cache=${PRELABEL_CACHE:-$HOME/.cache/prelabel}
out="$cache/argocd-$ARGOCD_VERSION"
bin="$out/bin"

have_all() {
  [ -x "$bin/argocd" ] && [ -x "$bin/git-verify-wrapper.sh" ] \
    && [ -s "$out/crds/application-crd.yaml" ] && [ -s "$out/crds/appproject-crd.yaml" ]
}
if have_all; then echo "$out"; exit 0; fi

export GOTOOLCHAIN="$ARGOCD_GO_TOOLCHAIN" GOFLAGS=-mod=mod GOPROXY=${GOPROXY:-https://proxy.golang.org}
export GOMODCACHE="$cache/go/mod" GOCACHE="$cache/go/build" CGO_ENABLED=0
mkdir -p "$bin" "$out/crds" "$out/src"
started=$(date +%s)
module=github.com/argoproj/argo-cd/v3

printf '[argocd 1/3] resolving %s@%s (Go %s)\n' "$module" "$ARGOCD_VERSION" "$GOTOOLCHAIN" >&2
wrapper="$out/src/build"
mkdir -p "$wrapper"
info=$(cd "$wrapper" && go mod download -json "$module@$ARGOCD_VERSION")
upstream_mod=$(sed -n 's/.*"GoMod": "\(.*\)".*/\1/p' <<<"$info")
upstream_dir=$(sed -n 's/.*"Dir": "\(.*\)".*/\1/p' <<<"$info")
# The module as the proxy served it (checked against the checksum database by `go mod download`),
# copied beside the wrapper with one line changed: the application controller binds its metrics server to
# 0.0.0.0 with no flag to change that; here it binds 127.0.0.1, like every server the tests start.
# (`go build -overlay` cannot replace a file in the module cache, hence the copy.)
source_dir="$out/src/argo-cd"
if [ ! -f "$source_dir/.patched" ]; then
  [ ! -d "$source_dir" ] || { chmod -R u+w "$source_dir" && rm -rf "$source_dir"; }
  cp -r "$upstream_dir" "$source_dir" && chmod -R u+w "$source_dir"
  from='metricsAddr := fmt.Sprintf("0.0.0.0:%d", metricsPort)'
  to='metricsAddr := fmt.Sprintf("127.0.0.1:%d", metricsPort)'
  [ "$(grep -cF "$from" "$source_dir/controller/appcontroller.go")" = 1 ] \
    || { echo "build-argocd.sh: the metrics bind line moved in controller/appcontroller.go" >&2; exit 1; }
  sed -i "s/${from//\//\\/}/${to//\//\\/}/" "$source_dir/controller/appcontroller.go"
  grep -qF "$to" "$source_dir/controller/appcontroller.go"
  touch "$source_dir/.patched"
fi
if [ ! -f "$wrapper/go.sum" ]; then
  (cd "$wrapper" && rm -f go.mod && go mod init prelabel.local/argocd-build >/dev/null 2>&1)
  {
    echo "require $module $ARGOCD_VERSION"
    echo "replace $module => ../argo-cd"
    # Upstream's replace block, verbatim; its one-line `gitops-engine/v3 => ./gitops-engine` points
    # at a folder of its own repository and is left out (the proxy serves that module).
    sed -n '/^replace (/,/^)/p' "$upstream_mod"
  } >> "$wrapper/go.mod"
  cat > "$wrapper/tools.go" <<'GO'
//go:build tools

package tools

import _ "github.com/argoproj/argo-cd/v3/cmd"
GO
  (cd "$wrapper" && go mod tidy >&2)
fi

printf '[argocd 2/3] building the all-in-one binary (cold: about 10 min on 2 cores)\n' >&2
if [ ! -x "$bin/argocd" ]; then
  pkg=$module/common
  ldflags="-s -w -X $pkg.version=${ARGOCD_VERSION#v} -X $pkg.gitTag=$ARGOCD_VERSION"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  (cd "$wrapper" && go build -trimpath -ldflags "$ldflags" -o "$bin/argocd.tmp" "$module/cmd" \
     && mv "$bin/argocd.tmp" "$bin/argocd")
fi

printf '[argocd 3/3] git-verify-wrapper.sh and CRDs from the module\n' >&2
install -m 0755 "$source_dir/hack/git-verify-wrapper.sh" "$bin/git-verify-wrapper.sh"
for f in application-crd.yaml appproject-crd.yaml; do
  install -m 0644 "$source_dir/manifests/crds/$f" "$out/crds/$f"
done

have_all || { echo "argocd build incomplete in $out" >&2; exit 1; }
printf '[argocd] done in %ss\n' "$(( $(date +%s) - started ))" >&2
echo "$out"
