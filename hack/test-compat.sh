#!/usr/bin/env bash
# make test-compat: the compatibility matrix, tested rather than claimed.
#
# Every cell (Kubernetes x KubeRay) gets its own set of binaries under bin/compat/<cell>/ and runs
# the tests marked `compat` against them (LLMSERVICE_BIN_DIR): on the KWOK ground, the chart and
# install.yaml install and an LLMService's RayService accepted by KubeRay (RayCluster, pods on the
# GPU pool, scaling reaching the pods); on the real-Ray ground, an LLMService Ready and answering,
# its serving code from the operator's ConfigMap. CI runs only the pinned cell (hack/tools/kubernetes
# and hack/tools/kuberay, in every other test); the others are built here, on demand.
#
#   hack/test-compat.sh                    every cell
#   hack/test-compat.sh 1.37/1.4.0 ...     only these (<kubernetes minor>/<kuberay version>)
#
# Results: one line per cell in .cache/compat/results.tsv and a Markdown table in
# .cache/compat/results.md (the README's table is copied from it).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
py=${PY:-$root/.venv/bin/python}
out=$root/.cache/compat
mkdir -p "$out"

die() { echo "test-compat: $*" >&2; exit 1; }

# Kubernetes minor -> folder its kube-apiserver, controller-manager, scheduler, kubectl are in;
# KubeRay version -> folder of kuberay-operator and kuberay-crds. The pinned ones are bin/ itself.
k8s_dir() {
  case $1 in
    1.34) echo "$root/bin" ;;
    1.37) echo "$root/bin/compat/kubernetes-1.37" ;;
    *) die "no Kubernetes $1 in the matrix (1.34, 1.37)" ;;
  esac
}
kuberay_dir() {
  case $1 in
    1.5.0) echo "$root/bin" ;;
    1.4.0) echo "$root/bin/compat/kuberay-1.4.0" ;;
    *) die "no KubeRay $1 in the matrix (1.4.0, 1.5.0)" ;;
  esac
}

cells=("$@")
[ ${#cells[@]} -eq 0 ] && cells=(1.34/1.5.0 1.34/1.4.0 1.37/1.5.0 1.37/1.4.0)
for cell in "${cells[@]}"; do
  k8s_dir "${cell%/*}" >/dev/null && kuberay_dir "${cell#*/}" >/dev/null
done

bash hack/build-tools.sh
bash hack/build-tools.sh kubernetes-1.37 kuberay-1.4.0

# One folder per cell: everything from bin/, then the cell's Kubernetes and KubeRay on top.
assemble() {
  local k8s=$1 kuberay=$2 dir=$3 f
  rm -rf "$dir" && mkdir -p "$dir"
  for f in etcd kwok helm; do ln -s "$(readlink -f "$root/bin/$f")" "$dir/$f"; done
  for f in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
    ln -s "$(readlink -f "$(k8s_dir "$k8s")/$f")" "$dir/$f"
  done
  for f in kuberay-operator kuberay-crds; do
    ln -s "$(readlink -f "$(kuberay_dir "$kuberay")/$f")" "$dir/$f"
  done
}

results=$out/results.tsv
: > "$results"
failed=0
for cell in "${cells[@]}"; do
  k8s=${cell%/*} kuberay=${cell#*/}
  dir=$root/bin/compat/k8s-$k8s-kuberay-$kuberay
  assemble "$k8s" "$kuberay" "$dir"
  server=$("$dir/kube-apiserver" --version | awk '{print $2}')
  echo "test-compat: Kubernetes $server x KubeRay v$kuberay ($dir)"
  began=$(date +%s)
  rc=0
  # Two runs, not one: each ground (KWOK; real Ray) is its own control plane, one at a time.
  for suite in cluster e2e; do
    LLMSERVICE_BIN_DIR=$dir "$py" -m pytest "tests/$suite" -m "$suite and compat" -p no:cacheprovider \
      --junitxml="$out/k8s-$k8s-kuberay-$kuberay-$suite.xml" ${PYTEST_ARGS:-} || rc=$?
  done
  seconds=$(( $(date +%s) - began ))
  counts=$("$py" - "$out/k8s-$k8s-kuberay-$kuberay"-{cluster,e2e}.xml <<'EOF'
import sys
import xml.etree.ElementTree as ET

total = bad = skipped = 0
for path in sys.argv[1:]:
    suite = ET.parse(path).getroot()
    suite = suite.find("testsuite") if suite.tag == "testsuites" else suite
    total += int(suite.get("tests", 0))
    bad += sum(int(suite.get(k, 0)) for k in ("failures", "errors"))
    skipped += int(suite.get("skipped", 0))
print(f"{total - bad - skipped}/{total}")
EOF
) || counts="?"
  # pytest exit 5 (nothing collected) is a failure like any other.
  if [ "$rc" -eq 0 ]; then verdict=passed; else verdict="failed (pytest exit $rc)"; failed=1; fi
  printf '%s\t%s\t%s\t%s\t%s\n' "$server" "v$kuberay" "$verdict" "$counts" "$seconds" >> "$results"
done

{
  echo "| Kubernetes | KubeRay | Result | Tests passed | Time |"
  echo "|---|---|---|---|---|"
  while IFS=$'\t' read -r server kuberay verdict counts seconds; do
    echo "| $server | $kuberay | $verdict | $counts | $(( seconds / 60 )) min $(( seconds % 60 )) s |"
  done < "$results"
} > "$out/results.md"
cat "$out/results.md"
exit $failed
