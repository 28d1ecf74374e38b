#!/usr/bin/env bash
# Builds the test ground's Go binaries and the workflow linter (actionlint) from the modules
# pinned under hack/tools/ and links them into bin/. Each module's output lives in
# bin/<module>-<key>/, where <key> hashes go.mod, go.sum and the Go version: a second run with
# the same pins builds nothing, a changed pin builds only that module.
#
#   hack/build-tools.sh                  every module the test ground and CI use
#   hack/build-tools.sh helm actionlint  only these (module names: the folders of hack/tools/)
#
# The compatibility matrix's other versions (kubernetes-1.37, kuberay-1.4.0; `make test-compat`)
# are built only when named, and linked into bin/compat/<module>/ so they never replace the
# pinned pair in bin/.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/bin"
mkdir -p "$bin"

die() { echo "build-tools: $*" >&2; exit 1; }

command -v go >/dev/null 2>&1 || die "Go toolchain not found on PATH: install Go >= 1.24 (README, Prerequisites)"
gover=$(go env GOVERSION) || die "'go env' failed: is the Go install broken?"

# ldflags for k8s.io/kubernetes, so the API server reports its real version
# (KubeRay and kubectl read it) instead of v0.0.0-master.
k8s_ldflags() {
  local version minor
  version=$(awk '$1=="require" && $2=="k8s.io/kubernetes" {print $3}' "$root/hack/tools/$1/go.mod")
  minor=$(echo "$version" | cut -d. -f2)
  echo "-s -w -X k8s.io/component-base/version.gitVersion=$version \
-X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor \
-X k8s.io/client-go/pkg/version.gitVersion=$version"
}
# actionlint reports the main module's version, (devel) here: give it its pinned one.
actionlint_version=$(awk '$1=="require" && $2=="github.com/rhysd/actionlint" {print $3}' "$root/hack/tools/actionlint/go.mod")
actionlint_ldflags="-s -w -X github.com/rhysd/actionlint.version=$actionlint_version"

# module dir -> command packages (one line each: <module> <package>...)
tools=(
  "etcd go.etcd.io/etcd/server/v3"
  "kubernetes k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl"
  "kuberay github.com/ray-project/kuberay/ray-operator"
  "kwok sigs.k8s.io/kwok/cmd/kwok"
  "helm helm.sh/helm/v3/cmd/helm"
  "actionlint github.com/rhysd/actionlint/cmd/actionlint"
  "kubernetes-1.37 k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl"
  "kuberay-1.4.0 github.com/ray-project/kuberay/ray-operator"
)
# Built only when named; linked into bin/compat/<module>/.
compat=" kubernetes-1.37 kuberay-1.4.0 "

build_module() {
  local name=$1; shift
  local dir="$root/hack/tools/$name"
  local key
  key=$(cat "$dir/go.mod" "$dir/go.sum" <(echo "$gover") | sha256sum | cut -c1-12)
  local out="$bin/$name-$key"
  if [ -f "$out/.complete" ]; then
    echo "build-tools: $name up to date ($out)"
  else
    echo "build-tools: building $name (first build of a module takes minutes; later ones are cached)"
    local tmp="$out.tmp"
    rm -rf "$tmp" && mkdir -p "$tmp"
    local ldflags="-s -w"
    [[ $name == kubernetes* ]] && ldflags=$(k8s_ldflags "$name")
    [ "$name" = actionlint ] && ldflags=$actionlint_ldflags
    (cd "$dir" && go build -trimpath -ldflags "$ldflags" -o "$tmp/" "$@") \
      || die "go build of hack/tools/$name failed (see the compiler output above)"
    # go names a binary after its package path; give the two odd ones their usual names.
    [ -e "$tmp/server" ] && mv "$tmp/server" "$tmp/etcd"
    [ -e "$tmp/ray-operator" ] && mv "$tmp/ray-operator" "$tmp/kuberay-operator"
    if [[ $name == kuberay* ]]; then
      # The CRDs come from the very module version the operator binary was built from.
      local src
      src=$(cd "$dir" && go list -m -f '{{.Dir}}' github.com/ray-project/kuberay/ray-operator)
      mkdir -p "$tmp/kuberay-crds" && cp "$src"/config/crd/bases/*.yaml "$tmp/kuberay-crds/"
      chmod u+w "$tmp"/kuberay-crds/*.yaml
    fi
    rm -rf "$out" && mv "$tmp" "$out" && touch "$out/.complete"
  fi
  local f links=$bin up=""
  if [[ $compat == *" $name "* ]]; then
    links=$bin/compat/$name up="../../"
    mkdir -p "$links"
  fi
  for f in "$out"/*; do
    ln -sfn "$up$(basename "$out")/$(basename "$f")" "$links/$(basename "$f")"
  done
}

# Module names (each entry's first word), space-delimited on both sides for whole-word matches.
names=" "
for entry in "${tools[@]}"; do names+="${entry%% *} "; done
for want in "$@"; do
  [[ $names == *" $want "* ]] || die "unknown module '$want' (one of:$names)"
done
for entry in "${tools[@]}"; do
  # With arguments, only the modules they name; without, all but the compat ones.
  if [ $# -gt 0 ]; then
    [[ " $* " != *" ${entry%% *} "* ]] && continue
  else
    [[ $compat == *" ${entry%% *} "* ]] && continue
  fi
  # shellcheck disable=SC2086
  build_module $entry
done
echo "build-tools: all binaries in $bin"
