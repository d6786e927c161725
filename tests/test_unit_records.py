"""Unit tests for record selection, ids, content hashes and in-place removal."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from gateway.config import ConfigError, RouteConfig
from gateway.records import RecordBody, RecordError, RecordSpec, UnexpectedFields, extract_records
from gateway.records.selection import remove_records
from gateway.route_config import parse_route as _route


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
        {"id": "rec\x00-1"},
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
    # Only a route that releases its whole body (no envelope) writes removals back.
    s = spec(expression, envelope_extra="allow")
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


# --- envelope: only named fields leave beside the records -------------------------------


def test_envelope_keeps_named_fields_and_drops_the_rest() -> None:
    s = spec("records", envelope=("count", "next"))
    body = RecordBody.parse(
        s,
        b'{"count":2,"related":[{"id":"other"}],"records":[{"id":1},{"id":2}],"next":null,'
        b'"debug":{"sql":"select"}}',
    )
    released, dropped = body.render([True, False])
    assert json.loads(released) == {"count": 2, "records": [{"id": 1}], "next": None}
    assert dropped == ["related", "debug"]


def test_envelope_nested_records_path() -> None:
    s = spec("data.items", envelope=("data.total", "links"))
    body = RecordBody.parse(
        s, b'{"data":{"items":[{"id":1}],"total":1,"leak":[{"id":9}]},"links":{"n":2},"x":1}'
    )
    released, dropped = body.render([True])
    assert json.loads(released) == {"data": {"items": [{"id": 1}], "total": 1}, "links": {"n": 2}}
    assert dropped == ["data.leak", "x"]


def test_envelope_refuse_mode() -> None:
    s = spec("records", envelope_extra="refuse")
    body = RecordBody.parse(s, b'{"records":[{"id":1}],"related":[]}')
    with pytest.raises(UnexpectedFields):
        body.render([True])
    assert RecordBody.parse(s, b'{"records":[{"id":1}]}').render([True])[1] == []


def test_duplicate_keys_release_what_was_logged() -> None:
    s = spec("records")
    raw = b'{"records":[{"id":"305","project":"proj-2"}],"records":[{"id":"5"}]}'
    body = RecordBody.parse(s, raw)
    assert [r.record_id for r in body.records] == ["5"]
    released, _ = body.render([True])
    assert released == b'{"records":[{"id":"5"}]}'
    single = RecordBody.parse(spec("@"), b'{"id":305,"project":2,"project":1}')
    assert single.render([True])[0] == b'{"id":305,"project":1}'


@pytest.mark.parametrize(
    "raw",
    [
        b"\xef\xbb\xbf{}",
        b'{"records":[{"id":NaN}]}',
        b'{"records":[{"id":"\xff"}]}',
        b'{"records":[{"id":1.5}]}',
        b'{"records":[{"id":{"a":1}}]}',
        b'{"records":[{"id":1,"deep":' + b"[" * 300 + b"]" * 300 + b"}]}",
        b"[" * 2000 + b"]" * 2000,
    ],
)
def test_unaccountable_bodies_raise_record_error(raw: bytes) -> None:
    with pytest.raises(RecordError) as info:
        RecordBody.parse(spec("records"), raw)
    assert info.value.reason == "upstream_malformed"


def test_too_many_records_refused_before_hashing() -> None:
    s = spec("records", max_records=3)
    with pytest.raises(RecordError) as info:
        RecordBody.parse(s, b'{"records":[{"id":1},{"id":2},{"id":3},{"id":4}]}')
    assert info.value.reason == "upstream_too_many_records"


@pytest.mark.parametrize(
    ("route", "key"),
    [
        ({"records": "records[*]"}, "records"),
        ({"envelope": ["records.count"]}, "envelope"),
        ({"envelope": ["a[0]"]}, "envelope"),
        ({"envelope": ["x"], "envelope_extra": "allow"}, "envelope"),
        ({"envelope_extra": "sometimes"}, "envelope_extra"),
        ({"records": "@", "envelope": ["x"]}, "envelope"),
        ({"upstream_errors": "inspect", "records": None, "record_id": None}, "upstream_errors"),
        ({"upstream_errors": "ignore"}, "upstream_errors"),
        ({"max_records": 0}, "max_records"),
    ],
)
def test_release_settings_are_validated(route: dict[str, Any], key: str) -> None:
    raw = {
        "path": "/api/projects/{project}/records",
        "action": "read",
        "records": "records",
        "record_id": "id",
        **route,
    }
    raw = {k: v for k, v in raw.items() if v is not None}
    with pytest.raises(ConfigError) as info:
        _route(raw, "routes[0]")
    assert info.value.key == f"routes[0].{key}"
