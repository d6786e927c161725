"""Unit tests for record selection, ids, content hashes and in-place removal."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from gateway.config import RouteConfig
from gateway.records import RecordError, RecordSpec, extract_records
from gateway.records.selection import remove_records


def spec(records: str, record_id: str = "id", **extra: Any) -> RecordSpec:
    route = RouteConfig(
        path="/api/{project}",
        methods=("GET",),
        action="read",
        records=records,
        record_id=record_id,
        **extra,
    )
    return RecordSpec.from_route(route)


def canonical_sha(record: dict[str, Any]) -> str:
    text = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def test_top_level_list_field() -> None:
    body = {"records": [{"id": "a", "text": "x"}, {"id": "b", "text": "y"}], "next": None}
    selected, extracted = extract_records(spec("records"), body)
    assert selected is body["records"]
    assert [r.record_id for r in extracted] == ["a", "b"]
    assert extracted[0].sha256 == canonical_sha(body["records"][0])
    assert extracted[0].project is None and extracted[0].task is None


def test_nested_path() -> None:
    body = {"data": {"items": [{"id": 1}, {"id": 2}, {"id": 3}]}}
    selected, extracted = extract_records(spec("data.items"), body)
    assert selected is body["data"]["items"]
    assert [r.record_id for r in extracted] == ["1", "2", "3"]


def test_single_record_body() -> None:
    body = {"id": "rec-9", "project": "proj-2", "task": "t-1", "text": "hello"}
    s = spec("@", record_project="project", record_task="task")
    assert s.single and s.per_record_policy
    selected, extracted = extract_records(s, body)
    assert selected == [body]
    assert len(extracted) == 1
    only = extracted[0]
    assert (only.record_id, only.project, only.task) == ("rec-9", "proj-2", "t-1")
    assert only.sha256 == canonical_sha(body)


def test_single_spec_with_whitespace() -> None:
    assert spec(" @ ").single


@pytest.mark.parametrize(("value", "expected"), [(7, "7"), (0, "0"), ("abc", "abc"), (-3, "-3")])
def test_id_int_or_str(value: Any, expected: str) -> None:
    _, extracted = extract_records(spec("records"), {"records": [{"id": value}]})
    assert extracted[0].record_id == expected


def test_nested_id_expression() -> None:
    body = {"records": [{"meta": {"uid": "m-1"}}]}
    _, extracted = extract_records(spec("records", record_id="meta.uid"), body)
    assert extracted[0].record_id == "m-1"


@pytest.mark.parametrize(
    "record",
    [
        {"text": "no id"},
        {"id": None},
        {"id": ""},
        {"id": True},
        {"id": 1.5},
        {"id": ["a"]},
        {"id": {"x": 1}},
        {"id": "x" * 256},
    ],
)
def test_bad_or_missing_id_raises(record: dict[str, Any]) -> None:
    with pytest.raises(RecordError):
        extract_records(spec("records"), {"records": [{"id": "ok"}, record]})


@pytest.mark.parametrize("body", [{"records": {"id": 1}}, {"records": "x"}, {"records": 3}])
def test_non_list_selection_raises(body: Any) -> None:
    with pytest.raises(RecordError):
        extract_records(spec("records"), body)


@pytest.mark.parametrize("item", ["a", 1, None, ["id", 1], True])
def test_non_object_record_raises(item: Any) -> None:
    with pytest.raises(RecordError):
        extract_records(spec("records"), {"records": [{"id": 1}, item]})


def test_single_record_body_must_be_object() -> None:
    with pytest.raises(RecordError):
        extract_records(spec("@"), [{"id": 1}])
    with pytest.raises(RecordError):
        extract_records(spec("@"), "text")


def test_missing_selection_is_empty() -> None:
    selected, extracted = extract_records(spec("records"), {"other": []})
    assert selected == [] and extracted == []


def test_bad_record_project_type_raises() -> None:
    s = spec("records", record_project="project")
    with pytest.raises(RecordError):
        extract_records(s, {"records": [{"id": 1, "project": ["p"]}]})


def test_hash_is_key_order_insensitive_and_content_sensitive() -> None:
    a = {"id": "r", "text": "hello", "labels": {"x": 1, "y": [1, 2]}}
    b = {"labels": {"y": [1, 2], "x": 1}, "text": "hello", "id": "r"}
    c = {"id": "r", "text": "hello!", "labels": {"x": 1, "y": [1, 2]}}
    d = {"id": "r", "text": "hello", "labels": {"x": 1, "y": [2, 1]}}
    _, extracted = extract_records(spec("records"), {"records": [a, b, c, d]})
    assert extracted[0].sha256 == extracted[1].sha256
    assert extracted[0].sha256 != extracted[2].sha256
    assert extracted[0].sha256 != extracted[3].sha256
    assert extracted[0].sha256 == canonical_sha(a)
    assert extracted[0].size == len(json.dumps(a, sort_keys=True, separators=(",", ":")).encode())


def test_hash_of_unicode_record_is_canonical_utf8() -> None:
    record = {"id": "u", "text": "café ☕"}
    _, extracted = extract_records(spec("records"), {"records": [record]})
    assert extracted[0].sha256 == canonical_sha(record)


def test_remove_records_writes_through_simple_path() -> None:
    body = {"records": [{"id": 1}, {"id": 2}, {"id": 3}]}
    s = spec("records")
    selected, _ = extract_records(s, body)
    remove_records(s, body, selected, [True, False, True])
    assert body == {"records": [{"id": 1}, {"id": 3}]}


def test_remove_records_writes_through_nested_path() -> None:
    body = {"data": {"items": [{"id": 1}, {"id": 2}]}, "total": 2}
    s = spec("data.items")
    selected, _ = extract_records(s, body)
    remove_records(s, body, selected, [False, True])
    assert body["data"]["items"] == [{"id": 2}]


def test_remove_records_keep_length_must_match() -> None:
    body = {"records": [{"id": 1}, {"id": 2}]}
    s = spec("records")
    selected, _ = extract_records(s, body)
    with pytest.raises(ValueError):
        remove_records(s, body, selected, [True])


@pytest.mark.parametrize(
    "expression", ["records[?x]", "records[*]", "records[:]", "[records[0], records[1]]"]
)
def test_remove_records_refuses_computed_projection(expression: str) -> None:
    body = {"records": [{"id": 1, "x": True}, {"id": 2, "x": True}]}
    s = spec(expression)
    selected, extracted = extract_records(s, body)
    assert len(extracted) == 2
    with pytest.raises(RecordError):
        remove_records(s, body, selected, [True, False])
    # Nothing was removed from the body that would be released.
    assert body["records"] == [{"id": 1, "x": True}, {"id": 2, "x": True}]


def test_remove_records_refuses_single_record_spec() -> None:
    body = {"id": 1}
    s = spec("@")
    selected, _ = extract_records(s, body)
    with pytest.raises(RecordError):
        remove_records(s, body, selected, [False])
    assert body == {"id": 1}
