#!/usr/bin/env bash
# Builds the local Kubernetes control plane from the Go module proxy, at the versions pinned in
# versions.env, into ~/.cache/prelabel/cluster-<versions>/bin. A warm cache returns in seconds.
#
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kubelet, kube-proxy
#                                                   <- k8s.io/kubernetes, through a
#       wrapper go.mod that replaces every ./staging module with its published v0.x release
#       (the pattern kubernetes-sigs/scheduler-plugins uses), with component-base version ldflags
#   etcd   <- go.etcd.io/etcd/server/v3 (a wrapper module: its go.mod has replace directives)
#   kwok   <- sigs.k8s.io/kwok/cmd/kwok          helm <- helm.sh/helm/v3/cmd/helm
#
# Prints the bin folder on stdout as its last line; progress goes to stderr.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"

stamp="k8s-${KUBERNETES_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}_helm-${HELM_VERSION}"
cache=${PRELABEL_CACHE:-$HOME/.cache/prelabel}
out="$cache/cluster-$stamp"
bin="$out/bin"
k8s_components=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy)
components=("${k8s_components[@]}" etcd kwok helm)

have_all() { for c in "${components[@]}"; do [ -x "$bin/$c" ] || return 1; done; [ -s "$bin/kwok-stages.yaml" ]; }
if have_all; then echo "$bin"; exit 0; fi

# Kubernetes 1.36's go.mod needs Go 1.26, and GOTOOLCHAIN=local fetches no other toolchain: say so first.
need_go=1.26
have_go=$(go env GOVERSION 2>/dev/null | sed 's/^go//')
if ! printf '%s\n%s\n' "$need_go" "${have_go:-0}" | sort -V -C; then
  echo "build.sh: Go $need_go or newer builds Kubernetes $KUBERNETES_VERSION; found ${have_go:-no go on PATH}: install a newer Go (https://go.dev/dl)" >&2
  exit 1
fi

export GOTOOLCHAIN=local GOFLAGS=-mod=mod GOPROXY=${GOPROXY:-https://proxy.golang.org}
export GOMODCACHE="$cache/go/mod" GOCACHE="$cache/go/build" CGO_ENABLED=0
mkdir -p "$bin" "$out/src"
step=0; total=${#components[@]}
progress() { step=$((step + 1)); printf '[build %d/%d] %s\n' "$step" "$total" "$*" >&2; }
started=$(date +%s)

# --- Kubernetes components ----------------------------------------------------------------------
k8s_minor=$(echo "$KUBERNETES_VERSION" | cut -d. -f2)
staging_version="v0.${KUBERNETES_VERSION#v1.}"
wrapper="$out/src/kubernetes"
mkdir -p "$wrapper"
# tools.go names every command built from the wrapper; a cache made before a command joined the list
# gets the new tools.go and one `go mod tidy` (seconds: the modules are cached), then builds only the
# missing binaries below.
tools=$(printf '//go:build tools\n\npackage tools\n\nimport (\n'; \
        printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' "${k8s_components[@]}"; printf ')\n')
if [ ! -f "$wrapper/go.sum" ]; then
  printf '[build] resolving k8s.io/kubernetes@%s and its staging modules\n' "$KUBERNETES_VERSION" >&2
  (cd "$wrapper" && rm -f go.mod && go mod init prelabel.local/kubernetes-build >/dev/null 2>&1)
  upstream_mod=$(cd "$wrapper" && go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" \
                 | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  # Every `k8s.io/x => ./staging/src/k8s.io/x` in upstream's go.mod becomes `k8s.io/x => k8s.io/x v0.N.P`.
  {
    echo "require k8s.io/kubernetes $KUBERNETES_VERSION"
    echo "replace ("
    sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/src/k8s.io/.*#\t\1 => \1 '"$staging_version"'#p' "$upstream_mod"
    echo ")"
  } >> "$wrapper/go.mod"
fi
if [ "$(cat "$wrapper/tools.go" 2>/dev/null)" != "$tools" ]; then
  printf '%s\n' "$tools" > "$wrapper/tools.go"
  (cd "$wrapper" && go mod tidy >&2)
fi
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$k8s_minor"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
for c in "${k8s_components[@]}"; do
  progress "$c $KUBERNETES_VERSION (cold: several minutes)"
  [ -x "$bin/$c" ] || (cd "$wrapper" && go build -trimpath -ldflags "$ldflags" -o "$bin/$c.tmp" "k8s.io/kubernetes/cmd/$c" && mv "$bin/$c.tmp" "$bin/$c")
done

# --- etcd ---------------------------------------------------------------------------------------
progress "etcd $ETCD_VERSION"
if [ ! -x "$bin/etcd" ]; then
  etcd_src="$out/src/etcd"; mkdir -p "$etcd_src"
  (cd "$etcd_src" && { [ -f go.mod ] || go mod init prelabel.local/etcd-build >/dev/null 2>&1; } \
     && go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >&2 \
     && go build -trimpath -ldflags "-s -w" -o "$bin/etcd.tmp" go.etcd.io/etcd/server/v3 && mv "$bin/etcd.tmp" "$bin/etcd")
fi

# --- kwok and helm (plain `go install`: their go.mod files carry no replace directives) ---------
progress "kwok $KWOK_VERSION"
[ -x "$bin/kwok" ] || GOBIN="$bin" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
# kwok's own "fast" stages (nodes Ready at once; pods scheduled -> Running and Ready), from its module.
kwok_src=$(go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
for f in "$kwok_src"/kustomize/stage/node/fast/*.yaml "$kwok_src"/kustomize/stage/pod/fast/pod-*.yaml; do
  [ "$(basename "$f")" = kustomization.yaml ] && continue
  echo "---"; cat "$f"
done > "$bin/kwok-stages.yaml"
progress "helm $HELM_VERSION"
[ -x "$bin/helm" ] || GOBIN="$bin" go install -trimpath -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"

have_all || { echo "build incomplete in $bin" >&2; exit 1; }
printf '[build] done in %ss\n' "$(( $(date +%s) - started ))" >&2
echo "$bin"
