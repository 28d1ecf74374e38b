"""Chaos run: SIGKILLs of the operator and API server restarts under a mixed load. Not a test.

    .venv/bin/python -m bench.chaos [-n 200] [--kills 100] [--apiserver-restarts 5]

On the local control plane (KubeRay stopped: the subject is the operator), a load thread
creates, edits (replicas, model version) and deletes LLMServices among N names at random, and
remembers the last spec the API server accepted for each. Meanwhile the operator is SIGKILLed
and restarted `--kills` times at random moments, and kube-apiserver is restarted
`--apiserver-restarts` times. Then the operator runs undisturbed until everything converges,
and the run reports, per object, what a user would check:

- lost updates: a live LLMService whose RayService does not carry its last spec
  (replicas, model version) after convergence;
- orphaned: a RayService whose controlling LLMService (by UID) no longer exists;
- duplicated: a RayService controlled by an LLMService other than the live one of its name,
  or owner references to more than one controller;
- missing: a live LLMService without a RayService.
"""

from __future__ import annotations

import argparse
import json
import random
import threading
import time
from typing import Any

import yaml
from kubernetes import client

from llmservice_operator import constants as c
from tests.cluster.harness import LocalCluster, wait_for
from tests.cluster.objects import llmservice
from tests.cluster.operator_process import OperatorProcess, install_llmservice_crd

NAMESPACE = "chaos"
CONVERGE_S = 600.0


def _name(i: int) -> str:
    return f"svc-{i:03d}"


class Load:
    """Random create/update/delete; `want[name]` is the last accepted spec (None: deleted)."""

    def __init__(self, custom: client.CustomObjectsApi, n: int, seed: int) -> None:
        self.custom = custom
        self.n = n
        self.rng = random.Random(seed)
        self.want: dict[str, dict[str, Any] | None] = {}
        self.ops = {"create": 0, "update": 0, "delete": 0, "refused": 0}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            name = _name(self.rng.randrange(self.n))
            try:
                self._one(name)
            except client.ApiException as exc:  # the API server restarting, or a 409 race
                self.ops["refused"] += 1
                if exc.status not in (0, 404, 409, 500, 503, 504):
                    raise
                # A write whose answer was lost in a restart may have happened: learn which
                # from the refusal, so the name is not stuck retrying a create forever. (The
                # audit compares with the live objects, never with this bookkeeping.)
                if exc.status == 409 and self.want.get(name) is None:
                    self.want[name] = {}
                elif exc.status == 404:
                    self.want[name] = None
            except Exception:  # connection refused while kube-apiserver restarts
                self.ops["refused"] += 1
            time.sleep(0.02)

    def _one(self, name: str) -> None:
        live = self.want.get(name)
        if live is None:
            spec = {"replicas": self.rng.randint(1, 3), "version": f"v{self.rng.randint(1, 9)}"}
            obj = llmservice(NAMESPACE, name=name, replicas=spec["replicas"])
            obj["spec"]["model"]["version"] = spec["version"]
            self.custom.create_namespaced_custom_object(
                c.GROUP, c.VERSION, NAMESPACE, c.PLURAL, obj
            )
            self.want[name] = spec
            self.ops["create"] += 1
        elif self.rng.random() < 0.2:
            self.custom.delete_namespaced_custom_object(
                c.GROUP, c.VERSION, NAMESPACE, c.PLURAL, name
            )
            self.want[name] = None
            self.ops["delete"] += 1
        else:
            spec = {"replicas": self.rng.randint(1, 3), "version": f"v{self.rng.randint(1, 9)}"}
            self.custom.patch_namespaced_custom_object(
                c.GROUP, c.VERSION, NAMESPACE, c.PLURAL, name,
                {"spec": {"replicas": spec["replicas"], "model": {"version": spec["version"]}}},
                _content_type="application/merge-patch+json",
            )  # fmt: skip
            self.want[name] = spec
            self.ops["update"] += 1


def _rs_spec(rs: dict[str, Any]) -> dict[str, Any]:
    apps = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"]
    model = next(a for a in apps if "model_source" in a["args"])  # the model's application
    replicas = model["deployments"][0]["num_replicas"]
    return {"replicas": replicas, "version": model["args"].get("model_version")}


def _audit(custom: client.CustomObjectsApi) -> dict[str, list[str]]:
    svcs = custom.list_namespaced_custom_object(c.GROUP, c.VERSION, NAMESPACE, c.PLURAL)
    live = {o["metadata"]["name"]: o for o in svcs["items"]}
    rss = custom.list_namespaced_custom_object("ray.io", "v1", NAMESPACE, "rayservices")["items"]
    uids = {o["metadata"]["uid"] for o in live.values()}
    found: dict[str, list[str]] = {"lost": [], "orphaned": [], "duplicated": [], "missing": []}
    by_name = {}
    for rs in rss:
        name = rs["metadata"]["name"]
        controllers = [
            r for r in rs["metadata"].get("ownerReferences") or [] if r.get("controller")
        ]
        if len(controllers) != 1:
            found["duplicated"].append(f"{name}: {len(controllers)} controllers")
            continue
        uid = controllers[0]["uid"]
        if uid not in uids:
            found["orphaned"].append(name)
        elif name in live and live[name]["metadata"]["uid"] != uid:
            found["duplicated"].append(f"{name}: controlled by another LLMService")
        by_name[name] = rs
    for name, svc in live.items():
        if svc["metadata"].get("deletionTimestamp"):
            continue
        rs = by_name.get(name)
        if rs is None:
            found["missing"].append(name)
            continue
        want = {"replicas": svc["spec"]["replicas"], "version": svc["spec"]["model"]["version"]}
        if _rs_spec(rs) != want:
            found["lost"].append(f"{name}: {_rs_spec(rs)} != {want}")
    return found


def run(n: int, kills: int, restarts: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    with LocalCluster() as cluster:
        cluster.stop_component("kuberay-operator")
        install_llmservice_crd(cluster.api_client)
        core = client.CoreV1Api(cluster.api_client)
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NAMESPACE)))
        custom = client.CustomObjectsApi(cluster.api_client)
        proc = OperatorProcess(cluster, "operator-chaos", "--timer-interval", "10", metrics=True)
        proc.start()
        proc.wait_serving()

        load = Load(custom, n, seed)
        loader = threading.Thread(target=load.run, daemon=True)
        began = time.monotonic()
        loader.start()
        restart_every = max(1, kills // max(restarts, 1))
        done_restarts = 0
        for k in range(kills):
            time.sleep(rng.uniform(0.5, 4.0))  # a random point of whatever the operator does
            proc.kill()
            proc.start()
            if restarts and (k + 1) % restart_every == 0 and done_restarts < restarts:
                cluster.restart_apiserver()
                done_restarts += 1
        load.stop.set()
        loader.join()
        chaos_s = time.monotonic() - began

        # Undisturbed now: the operator must converge every object by itself.
        converge_began = time.monotonic()
        last: dict[str, list[str]] = {}

        def converged() -> bool:
            last.clear()
            last.update(_audit(custom))
            return not any(last.values())

        try:
            wait_for("every object converged", converged, CONVERGE_S)
            converge_s: float | None = time.monotonic() - converge_began
        except TimeoutError:
            converge_s = None
        proc.stop()
        live = sum(1 for v in load.want.values() if v is not None)
        return {
            "llmservice_names": n,
            "live_at_end": live,
            "operations": load.ops,
            "operator_sigkills": kills,
            "apiserver_restarts": done_restarts,
            "chaos_s": round(chaos_s, 1),
            "converged_s": None if converge_s is None else round(converge_s, 1),
            **{k: len(v) for k, v in last.items()},
            "examples": {k: v[:5] for k, v in last.items() if v},
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=200)
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--apiserver-restarts", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print(json.dumps(run(args.n, args.kills, args.apiserver_restarts, args.seed), indent=2))


if __name__ == "__main__":
    main()
