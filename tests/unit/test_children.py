"""The child cache: newest state wins, our own echoes are known, a spec verdict lasts one
generation of one object."""

from __future__ import annotations

from typing import Any

from llmservice_operator.children import Children, key_of

SPEC = {"serveConfigV2": "v1"}


def rs(rv: str, generation: int = 1, uid: str = "a", **status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {
            "name": "x",
            "namespace": "ns",
            "uid": uid,
            "generation": generation,
            "resourceVersion": rv,
            "managedFields": [{"manager": "big"}],
        },
        "spec": dict(SPEC),
        "status": status,
    }


def test_our_write_is_known_in_line_and_its_echo_is_recognised() -> None:
    kids = Children()
    kids.written(rs("10"), SPEC)
    cached = kids.in_line(key_of(rs("10")), SPEC)
    assert cached is not None and "spec" not in cached
    assert "managedFields" not in cached["metadata"]  # slim: no spec, no managedFields
    assert kids.observed(rs("10"), "MODIFIED") is True  # the echo
    assert kids.in_line(key_of(rs("10")), {"serveConfigV2": "v2"}) is None  # another render


def test_a_late_event_of_an_older_version_does_not_go_back() -> None:
    kids = Children()
    kids.written(rs("10"), SPEC)
    assert kids.observed(rs("12", serviceStatus="Running"), "MODIFIED") is False
    assert kids.observed(rs("11", serviceStatus="Old"), "MODIFIED") is False
    cached = kids.in_line(key_of(rs("12")), SPEC)
    assert cached is not None and cached["status"] == {"serviceStatus": "Running"}


def test_a_new_generation_or_a_new_object_needs_a_read() -> None:
    kids = Children()
    kids.written(rs("10"), SPEC)
    kids.observed(rs("11", generation=2), "MODIFIED")  # someone edited the spec
    assert kids.in_line(key_of(rs("11")), SPEC) is None
    kids.fetched(key_of(rs("11")), rs("11", generation=2), in_line_with=SPEC)
    assert kids.in_line(key_of(rs("11")), SPEC) is not None
    kids.observed(rs("20", uid="b"), "ADDED")  # deleted and made again by someone else
    assert kids.in_line(key_of(rs("20")), SPEC) is None


def test_a_deletion_forgets_only_the_object_it_names() -> None:
    kids = Children()
    kids.written(rs("10", uid="b"), SPEC)
    kids.observed(rs("9", uid="a"), "DELETED")  # the previous object of that name
    assert kids.in_line(key_of(rs("10")), SPEC) is not None
    kids.observed(rs("11", uid="b"), "DELETED")
    assert kids.in_line(key_of(rs("10")), SPEC) is None and len(kids) == 0
