"""GPU layout arithmetic: worker pods and bundles derived from the one GPU profile."""

from __future__ import annotations

import pytest

from llmservice_operator.api.models import LLMServiceSpec
from llmservice_operator.plan import plan, workers_for


@pytest.mark.parametrize(
    ("replicas", "gpus_per_replica", "gpus_per_node", "workers"),
    [
        (0, 1, 1, 0),
        (3, 1, 1, 3),
        (3, 1, 8, 1),  # 8 one-GPU replicas fit a node
        (9, 1, 8, 2),
        (2, 4, 8, 1),  # two TP=4 replicas share an 8-GPU node
        (3, 4, 8, 2),
        (2, 16, 8, 4),  # TP=8 x PP=2 spans two nodes per replica
        (4, 0, 1, 4),  # CPU: one replica per worker
    ],
)
def test_workers_for(
    replicas: int, gpus_per_replica: int, gpus_per_node: int, workers: int
) -> None:
    assert workers_for(replicas, gpus_per_replica, gpus_per_node) == workers


def _spec(**kw: object) -> LLMServiceSpec:
    return LLMServiceSpec.model_validate({"model": {"source": "org/m"}, **kw})


def test_gpu_profile_drives_both_sides() -> None:
    p = plan(
        _spec(
            replicas=3,
            engine={"tensorParallelSize": 2},
            gpu={
                "acceleratorType": "H100",
                "gpusPerNode": 4,
                "nodeSelector": {"pool": "h100"},
                "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
            },
        )
    )
    assert p.accelerator_type == "H100"
    assert p.placement_bundles == [{"GPU": 1.0}, {"GPU": 1.0}]
    (group,) = p.worker_groups
    assert (group.gpus_per_pod, group.replicas, group.min_replicas, group.max_replicas) == (
        4,
        2,
        2,
        2,
    )
    assert group.node_selector == {"pool": "h100"}
    assert group.tolerations == [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]


def test_autoscaling_leaves_live_counts_to_ray() -> None:
    p = plan(
        _spec(
            autoscaling={"minReplicas": 0, "maxReplicas": 4},
            gpu={"acceleratorType": "L4"},
        )
    )
    assert p.autoscaling and p.replicas is None
    (group,) = p.worker_groups
    assert group.replicas is None and (group.min_replicas, group.max_replicas) == (0, 4)


def test_pools_fill_in_order_of_preference() -> None:
    p = plan(
        _spec(
            replicas=5,
            gpu={
                "acceleratorType": "A100",
                "nodeSelector": {"gpu": "a100"},
                "pools": [
                    {"name": "on-demand", "nodeSelector": {"life": "od"}, "maxWorkers": 2},
                    {"name": "spot", "nodeSelector": {"life": "spot"}},
                ],
            },
        )
    )
    od, spot = p.worker_groups
    assert (od.name, od.replicas, od.max_replicas) == ("on-demand", 2, 2)
    assert (spot.name, spot.replicas, spot.max_replicas) == ("spot", 3, 5)
    assert spot.node_selector == {"gpu": "a100", "life": "spot"}


def test_cpu_spec_has_cpu_workers_and_bundles() -> None:
    p = plan(_spec(replicas=2))
    assert p.gpus_per_replica == 0 and p.accelerator_type is None
    assert p.placement_bundles == [{"CPU": 1.0}]
    assert [(g.name, g.replicas) for g in p.worker_groups] == [("cpu", 2)]
