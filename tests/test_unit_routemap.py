"""Unit tests for path normalisation and the route map (default deny)."""

from __future__ import annotations

import pytest

from gateway.config import RouteConfig
from gateway.routemap import PathRejected, RouteError, RouteMap, normalise_path
from gateway.routemap.normalise import MAX_PATH_LENGTH, split_request_target

# --- normalise_path ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/", "/"),
        ("/api/projects/proj-1/tasks/task-1/records", "/api/projects/proj-1/tasks/task-1/records"),
        ("/api/projects/proj-1/", "/api/projects/proj-1/"),
        ("/api/records/r_1.json", "/api/records/r_1.json"),
        (
            "/api/a~b/c@d/e:f/g+h/i=j/k,l/m!n/o$p/q'r/(s)/t*u&v",
            "/api/a~b/c@d/e:f/g+h/i=j/k,l/m!n/o$p/q'r/(s)/t*u&v",
        ),
        ("/api/projects/proj%2D1", "/api/projects/proj-1"),
        ("/api/%70rojects/%41bc", "/api/projects/Abc"),
        ("/api/records/caf%C3%A9", "/api/records/café"),
        ("/api/records/a%20b", "/api/records/a b"),
        ("/api/records/...x", "/api/records/...x"),
        ("/api/records/x..", "/api/records/x.."),
    ],
)
def test_normalise_accepts_ordinary_paths(raw: str, expected: str) -> None:
    assert normalise_path(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        # dot segments, plain and encoded
        "/api/../_gateway/admin",
        "/api/projects/..",
        "/api/./projects",
        "/..",
        "/api/%2e%2e/_gateway",
        "/api/%2E%2E/_gateway",
        "/api/.%2e/_gateway",
        "/api/%2e/x",
        "/api/proj%2e1",
        # encoded separators
        "/api/projects%2fproj-1",
        "/api/projects%2Fproj-1",
        "/api/projects%5cproj-1",
        "/api/projects%5Cproj-1",
        # empty segments
        "//api/projects",
        "/api//projects",
        "/api/projects//",
        # path parameters, backslashes, NUL, double encoding
        "/api/projects;jsessionid=1/x",
        "/api/projects/p1;/x",
        "/api/projects%3bx",
        "/api\\projects",
        "/api/projects/p1%00",
        "/api/projects/p1%00.json",
        "/api/projects/%252e%252e",
        "/api/projects/%25",
        # malformed percent-encoding
        "/api/projects/%",
        "/api/projects/%2",
        "/api/projects/%zz",
        "/api/projects/%G0",
        # non-UTF-8 bytes
        "/api/projects/%ff",
        "/api/projects/%C3",
        "/api/projects/%C0%AF",
        # controls, encoded query/fragment, raw characters that must be encoded
        "/api/projects/%0a",
        "/api/projects/%7f",
        "/api/projects/%3f",
        "/api/projects/%23",
        "/api/projects/a b",
        "/api/projects/a\tb",
        "/api/projects/ü",
        "/api/projects/<x>",
        '/api/projects/"x"',
        # not origin-form
        "api/projects",
        "",
        "*",
    ],
)
def test_normalise_rejects_tricks(raw: str) -> None:
    with pytest.raises(PathRejected):
        normalise_path(raw)


def test_normalise_rejects_overlong_path() -> None:
    normalise_path("/" + "a" * (MAX_PATH_LENGTH - 1))
    with pytest.raises(PathRejected, match="too long"):
        normalise_path("/" + "a" * MAX_PATH_LENGTH)


def test_normalise_result_never_contains_dot_segments_or_separators() -> None:
    # Whatever it accepts decodes to a path without any segment a server could reinterpret.
    for raw in ["/a/%41/b", "/x%2Dy/z", "/a/b/c/"]:
        segments = normalise_path(raw).split("/")[1:]
        assert ".." not in segments and "." not in segments
        assert "" not in segments[:-1]
        assert "\\" not in normalise_path(raw)


# --- split_request_target -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/api/x?limit=1", ("/api/x", "limit=1")),
        ("/api/x", ("/api/x", "")),
        ("/api/x?", ("/api/x", "")),
        ("/api/x?a=1?b=2", ("/api/x", "a=1?b=2")),
        ("http://gateway.example/api/x?limit=1", ("/api/x", "limit=1")),
        ("https://gateway.example:8443/api/x", ("/api/x", "")),
        ("http://gateway.example", ("/", "")),
        ("https://user@gateway.example/_gateway/health", ("/_gateway/health", "")),
    ],
)
def test_split_request_target(target: str, expected: tuple[str, str]) -> None:
    assert split_request_target(target) == expected


def test_split_request_target_refuses_fragment() -> None:
    with pytest.raises(PathRejected):
        split_request_target("/api/x#frag")
    with pytest.raises(PathRejected):
        split_request_target("http://h/api/x#frag?limit=1")


@pytest.mark.parametrize(
    "target",
    ["http://h?next=/api/projects/p/records", "https://h#/api/projects/p/records"],
)
def test_split_absolute_form_authority_ends_at_query_or_fragment(target: str) -> None:
    # RFC 3986 §3.2: the authority ends at the first '/', '?' or '#'. A '/' inside the
    # query or fragment of an absolute-form target is not the start of the path; reading
    # it as one is a parser differential with every proxy in front of the gateway.
    try:
        path, _ = split_request_target(target)
    except PathRejected:
        return
    assert path == "/"


def test_split_absolute_form_then_normalise_sees_the_trick() -> None:
    path, _ = split_request_target("http://h/api/%2e%2e/_gateway/admin")
    with pytest.raises(PathRejected):
        normalise_path(path)


# --- RouteMap ---------------------------------------------------------------------------

ROUTES = (
    RouteConfig(
        path="/api/projects/{project}/tasks/{task}/records",
        methods=("GET",),
        action="read",
        records="records",
        record_id="id",
        query_params=("offset", "limit"),
    ),
    RouteConfig(
        path="/api/projects/{project}/records",
        methods=("GET",),
        action="read",
        records="records",
        record_id="id",
        record_task="task",
    ),
    RouteConfig(
        path="/api/records/{record}",
        methods=("GET",),
        action="read",
        records="@",
        record_id="id",
        record_project="project",
    ),
    RouteConfig(
        path="/api/projects/{project}/tasks/{task}/records/{record}/annotations",
        methods=("POST", "PUT"),
        action="annotate",
    ),
    RouteConfig(
        path="/api/status",
        methods=("GET", "HEAD"),
        action="read",
        project="proj-x",
        query_params=(),
    ),
)


@pytest.fixture(scope="module")
def route_map() -> RouteMap:
    return RouteMap(ROUTES)


def test_match_project_task(route_map: RouteMap) -> None:
    match = route_map.match("GET", "/api/projects/proj-1/tasks/batch-7/records", "")
    assert (match.project, match.task, match.record) == ("proj-1", "batch-7", None)
    assert match.route.action == "read"
    assert match.route.records is not None and not match.route.records.single
    assert match.path == "/api/projects/proj-1/tasks/batch-7/records"


def test_match_without_task_asks_for_star(route_map: RouteMap) -> None:
    match = route_map.match("GET", "/api/projects/proj-1/records", "")
    assert match.project == "proj-1"
    assert match.task == "*"
    assert match.route.records is not None and match.route.records.per_record_policy


def test_match_record_route(route_map: RouteMap) -> None:
    match = route_map.match("GET", "/api/records/rec-42", "")
    assert match.record == "rec-42"
    assert match.project is None
    assert match.task == "*"
    assert match.route.records is not None and match.route.records.single


def test_match_all_three_placeholders(route_map: RouteMap) -> None:
    match = route_map.match("POST", "/api/projects/p/tasks/t/records/r/annotations", "")
    assert (match.project, match.task, match.record) == ("p", "t", "r")
    assert match.route.action == "annotate"
    assert match.route.records is None


def test_match_fixed_project(route_map: RouteMap) -> None:
    match = route_map.match("HEAD", "/api/status", "")
    assert match.project == "proj-x"
    assert match.task == "*"


def test_wrong_method_is_405(route_map: RouteMap) -> None:
    with pytest.raises(RouteError) as info:
        route_map.match("DELETE", "/api/projects/proj-1/tasks/t/records", "")
    assert info.value.status == 405
    with pytest.raises(RouteError) as info:
        route_map.match("GET", "/api/projects/p/tasks/t/records/r/annotations", "")
    assert info.value.status == 405


@pytest.mark.parametrize(
    "path",
    [
        "/api/projects/proj-1/tasks/t/records/extra",
        "/api/projects/proj-1/tasks/t/record",
        "/api/projects/proj-1",
        "/api/projects//records",
        "/api/projects/-bad/records",
        "/api/projects/.hidden/records",
        "/api/projects/a b/records",
        "/API/status",
        "/api/status/",
        "/_gateway/health",
        "/",
        "/api/projects/" + "a" * 256 + "/records",
    ],
)
def test_unmatched_path_is_403(route_map: RouteMap, path: str) -> None:
    with pytest.raises(RouteError) as info:
        route_map.match("GET", path, "")
    assert info.value.status == 403
    assert info.value.error == "unknown_route"


def test_unmatched_path_with_unknown_method_is_403_not_405(route_map: RouteMap) -> None:
    with pytest.raises(RouteError) as info:
        route_map.match("DELETE", "/nowhere", "")
    assert info.value.status == 403


def test_placeholder_value_cannot_span_segments(route_map: RouteMap) -> None:
    # {project} must never swallow a '/' (it would let one project name another's path).
    with pytest.raises(RouteError):
        route_map.match("GET", "/api/projects/a/b/records", "")


def test_query_allow_list(route_map: RouteMap) -> None:
    path = "/api/projects/p/tasks/t/records"
    assert route_map.match("GET", path, "offset=10&limit=5").task == "t"
    assert route_map.match("GET", path, "limit=").project == "p"
    with pytest.raises(RouteError) as info:
        route_map.match("GET", path, "limit=5&format=csv")
    assert (info.value.status, info.value.error) == (400, "bad_query")
    assert "format" in info.value.message


def test_repeated_query_parameter_is_400(route_map: RouteMap) -> None:
    with pytest.raises(RouteError) as info:
        route_map.match("GET", "/api/projects/p/tasks/t/records", "limit=5&limit=500")
    assert (info.value.status, info.value.error) == (400, "bad_query")


@pytest.mark.parametrize("query", ["limit", "=5", "limit=1&&offset=2", "limit=%zz&x"])
def test_malformed_query_is_400(route_map: RouteMap, query: str) -> None:
    with pytest.raises(RouteError) as info:
        route_map.match("GET", "/api/projects/p/tasks/t/records", query)
    assert info.value.status == 400


def test_encoded_query_name_is_checked_decoded(route_map: RouteMap) -> None:
    with pytest.raises(RouteError) as info:
        route_map.match("GET", "/api/projects/p/tasks/t/records", "lim%69t=1&limit=2")
    assert info.value.status == 400


def test_route_without_allow_list_accepts_any_query(route_map: RouteMap) -> None:
    match = route_map.match("GET", "/api/projects/p/records", "anything=1&anything=2")
    assert match.project == "p"


def test_first_matching_route_wins_and_literal_braces_are_escaped() -> None:
    routes = (
        RouteConfig(path="/api/v1.0/{project}", methods=("GET",), action="a"),
        RouteConfig(path="/api/{project}/x", methods=("GET",), action="b"),
    )
    route_map = RouteMap(routes)
    assert route_map.match("GET", "/api/v1.0/p", "").route.action == "a"
    # '.' in a template is literal, not a regex wildcard.
    with pytest.raises(RouteError):
        route_map.match("GET", "/api/v1x0/p", "")


# --- a query may not name another project than the route's ----------------------------


@pytest.mark.parametrize(
    "query",
    ["project=proj-2", "project_id=proj-2", "projectId=proj-2", "a=1&PROJECT=proj-2"],
)
def test_query_naming_another_project_is_refused(query: str) -> None:
    routes = RouteMap(
        (
            RouteConfig(path="/api/projects/{project}/items", methods=("GET",), action="read"),
            RouteConfig(
                path="/api/tasks/",
                methods=("GET",),
                action="read",
                project="proj-1",
                query_params=("project", "project_id", "projectId", "a", "PROJECT"),
            ),
        )
    )
    for path in ("/api/projects/proj-1/items", "/api/tasks/"):
        with pytest.raises(RouteError) as info:
            routes.match("GET", path, query)
        assert (info.value.status, info.value.error) == (400, "bad_query")
        # Naming the route's own project is fine.
        assert routes.match("GET", path, "project=proj-1").project == "proj-1"
