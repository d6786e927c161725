"""Unit tests for gateway.config: every refusal names the key it is about."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.config import ConfigError, parse_config
from gateway.routemap import RouteMap


def base_raw() -> dict[str, Any]:
    return {
        "database": {"url": "sqlite:///gw.db"},
        "issuers": [
            {
                "name": "acme-idp",
                "issuer": "https://idp.acme.example",
                "audience": "https://gateway.test",
                "vendor": "acme",
            }
        ],
        "upstream": {"url": "http://127.0.0.1:9000"},
        "routes": [
            {
                "methods": ["GET"],
                "path": "/api/projects/{project}/tasks/{task}/records",
                "action": "read",
                "records": "records",
                "record_id": "id",
            }
        ],
    }


MINIMAL_TOML = """
[database]
url = "sqlite:///gw.db"

[[issuers]]
name = "acme-idp"
issuer = "https://idp.acme.example"
audience = "https://gateway.test"
vendor = "acme"

[upstream]
url = "http://127.0.0.1:9000"
headers = { Authorization = "Token ${UNIT_UPSTREAM_TOKEN}" }

[[routes]]
methods = ["GET"]
path = "/api/projects/{project}/tasks/{task}/records"
action = "read"
records = "records"
record_id = "id"
"""


def refused(raw: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    return info.value


def test_minimal_config_parses() -> None:
    config = parse_config(base_raw())
    assert config.database_url == "sqlite:///gw.db"
    assert config.issuers[0].vendor == "acme"
    assert config.routes[0].records == "records"
    assert config.upstream.url == "http://127.0.0.1:9000"


def test_missing_database_url_names_key() -> None:
    raw = base_raw()
    del raw["database"]["url"]
    error = refused(raw)
    assert error.key == "database.url"
    assert "database.url" in str(error)


def test_missing_database_table_names_key() -> None:
    raw = base_raw()
    del raw["database"]
    assert refused(raw).key == "database"


def test_unknown_section_names_it() -> None:
    raw = base_raw()
    raw["databse"] = {"url": "x"}
    error = refused(raw)
    assert error.key == "databse"
    assert "databse" in str(error)


def test_unknown_key_in_database_names_it() -> None:
    # [database] is a section like any other: a typo there must not be silently ignored.
    raw = base_raw()
    raw["database"]["pool_sise"] = 4
    error = refused(raw)
    assert error.key == "database.pool_sise"


@pytest.mark.parametrize(
    ("section", "key", "expected"),
    [
        ("audit", "batch_rows", "audit.batch_rows"),
        ("policy", "modle", "policy.modle"),
        ("gateway", "trusted_hops", "gateway.trusted_hops"),
        ("upstream", "timeout", "upstream.timeout"),
    ],
)
def test_unknown_key_in_section_names_it(section: str, key: str, expected: str) -> None:
    raw = base_raw()
    raw.setdefault(section, {})[key] = 1
    error = refused(raw)
    assert error.key == expected
    assert expected in str(error)


def test_unknown_issuer_key_names_it() -> None:
    raw = base_raw()
    raw["issuers"][0]["audiance"] = "x"
    assert refused(raw).key == "issuers[0].audiance"


def test_unknown_route_key_names_it() -> None:
    raw = base_raw()
    raw["routes"][0]["record"] = "id"
    assert refused(raw).key == "routes[0].record"


def test_wrong_type_in_section_names_key() -> None:
    raw = base_raw()
    raw["audit"] = {"batch_max_rows": "many"}
    assert refused(raw).key == "audit.batch_max_rows"
    raw["audit"] = {"batch_max_rows": 0}
    assert refused(raw).key == "audit.batch_max_rows"


def test_issuer_with_both_vendor_and_vendor_claim_refused() -> None:
    raw = base_raw()
    raw["issuers"][0]["vendor_claim"] = "vendor"
    error = refused(raw)
    assert error.key == "issuers[0].vendor"
    assert "vendor_claim" in error.problem


def test_issuer_with_neither_vendor_nor_vendor_claim_refused() -> None:
    raw = base_raw()
    del raw["issuers"][0]["vendor"]
    assert refused(raw).key == "issuers[0].vendor"


def test_issuer_with_vendor_claim_only_accepted() -> None:
    raw = base_raw()
    del raw["issuers"][0]["vendor"]
    raw["issuers"][0]["vendor_claim"] = "vendor"
    issuer = parse_config(raw).issuers[0]
    assert issuer.vendor is None
    assert issuer.vendor_claim == "vendor"


@pytest.mark.parametrize("alg", ["HS256", "none", "HS512", "RS1"])
def test_symmetric_or_none_algorithms_refused(alg: str) -> None:
    raw = base_raw()
    raw["issuers"][0]["algorithms"] = ["RS256", alg]
    error = refused(raw)
    assert error.key == "issuers[0].algorithms"
    assert alg in error.problem


def test_empty_algorithms_refused() -> None:
    raw = base_raw()
    raw["issuers"][0]["algorithms"] = []
    assert refused(raw).key == "issuers[0].algorithms"


def test_asymmetric_algorithms_accepted() -> None:
    raw = base_raw()
    raw["issuers"][0]["algorithms"] = ["RS256", "ES256", "EdDSA", "PS512"]
    assert parse_config(raw).issuers[0].algorithms == ("RS256", "ES256", "EdDSA", "PS512")


def second_issuer(**extra: Any) -> dict[str, Any]:
    return {
        "name": "lab-idp",
        "issuer": "https://idp.lab.example",
        "audience": "https://gateway.test",
        "vendor_claim": "vendor",
        **extra,
    }


def test_two_issuers_accepting_opaque_tokens_refused() -> None:
    raw = base_raw()
    raw["issuers"][0]["opaque_tokens"] = "userinfo"
    raw["issuers"].append(second_issuer(opaque_tokens="auto"))
    error = refused(raw)
    assert error.key == "issuers.opaque_tokens"
    assert "acme-idp" in error.problem and "lab-idp" in error.problem


def test_one_issuer_accepting_opaque_tokens_allowed() -> None:
    raw = base_raw()
    raw["issuers"].append(second_issuer(opaque_tokens="userinfo"))
    config = parse_config(raw)
    assert [i.opaque_tokens for i in config.issuers] == ["reject", "userinfo"]


def test_bad_opaque_tokens_value_refused() -> None:
    raw = base_raw()
    raw["issuers"][0]["opaque_tokens"] = "yes"
    assert refused(raw).key == "issuers[0].opaque_tokens"


def test_introspection_needs_client_credentials() -> None:
    raw = base_raw()
    raw["issuers"][0]["opaque_tokens"] = "introspection"
    assert refused(raw).key == "issuers[0].client_id"


def test_duplicate_issuer_names_refused() -> None:
    raw = base_raw()
    raw["issuers"].append(second_issuer(name="acme-idp"))
    assert refused(raw).key == "issuers"


def test_duplicate_issuer_urls_refused() -> None:
    raw = base_raw()
    raw["issuers"].append(second_issuer(issuer="https://idp.acme.example"))
    assert refused(raw).key == "issuers"


def test_no_issuers_refused() -> None:
    raw = base_raw()
    raw["issuers"] = []
    assert refused(raw).key == "issuers"


def test_issuer_name_must_be_lowercase_identifier() -> None:
    raw = base_raw()
    raw["issuers"][0]["name"] = "Acme IdP"
    assert refused(raw).key == "issuers[0].name"


def test_issuer_url_must_be_http() -> None:
    raw = base_raw()
    raw["issuers"][0]["issuer"] = "idp.acme.example"
    assert refused(raw).key == "issuers[0].issuer"


def test_route_with_unknown_placeholder_refused() -> None:
    raw = base_raw()
    raw["routes"][0]["path"] = "/api/projects/{project}/items/{item}"
    error = refused(raw)
    assert error.key == "routes[0].path"
    assert "{item}" in error.problem


@pytest.mark.parametrize("path", ["/_gateway/admin", "/_gateway", "/_gateway/{project}"])
def test_route_under_reserved_prefix_refused(path: str) -> None:
    raw = base_raw()
    raw["routes"][0]["path"] = path
    raw["routes"][0]["project"] = "proj-1"
    error = refused(raw)
    assert error.key == "routes[0].path"
    assert "/_gateway" in error.problem


def test_route_path_must_be_absolute() -> None:
    raw = base_raw()
    raw["routes"][0]["path"] = "api/{project}"
    assert refused(raw).key == "routes[0].path"


def test_route_without_project_refused() -> None:
    raw = base_raw()
    raw["routes"].append({"methods": ["GET"], "path": "/api/status", "action": "read"})
    error = refused(raw)
    assert error.key == "routes[1].path"
    assert "project" in error.problem


def test_route_with_fixed_project_must_list_its_query_parameters() -> None:
    # `/api/tasks/?project=2` on a route fixed to project 1 released project 2's tasks.
    raw = base_raw()
    raw["routes"].append({"path": "/api/tasks/", "action": "read", "project": "1"})
    assert refused(raw).key == f"routes[{len(raw['routes']) - 1}].query_params"


def test_route_with_fixed_project_or_record_project_accepted() -> None:
    raw = base_raw()
    raw["routes"].append(
        {
            "methods": ["GET"],
            "path": "/api/status",
            "action": "read",
            "project": "p1",
            "query_params": [],
        }
    )
    raw["routes"].append(
        {
            "path": "/api/records/{record}",
            "action": "read",
            "records": "@",
            "record_id": "id",
            "record_project": "project",
        }
    )
    config = parse_config(raw)
    assert config.routes[1].project == "p1"
    assert config.routes[2].record_project == "project"
    assert config.routes[2].methods == ("GET",)


def test_records_without_record_id_refused() -> None:
    raw = base_raw()
    del raw["routes"][0]["record_id"]
    error = refused(raw)
    assert error.key == "routes[0].records"
    assert "record_id" in error.problem


def test_record_id_without_records_refused() -> None:
    raw = base_raw()
    del raw["routes"][0]["records"]
    assert refused(raw).key == "routes[0].records"


def test_record_project_without_records_refused() -> None:
    raw = base_raw()
    raw["routes"].append({"path": "/api/x", "action": "read", "record_project": "project"})
    assert refused(raw).key == "routes[1].record_project"


def test_route_unknown_method_refused() -> None:
    raw = base_raw()
    raw["routes"][0]["methods"] = ["GET", "TRACE"]
    assert refused(raw).key == "routes[0].methods[1]"


def test_route_without_action_refused() -> None:
    raw = base_raw()
    del raw["routes"][0]["action"]
    assert refused(raw).key == "routes[0].action"


def test_route_query_params_must_be_strings() -> None:
    raw = base_raw()
    raw["routes"][0]["query_params"] = ["limit", 3]
    assert refused(raw).key == "routes[0].query_params[1]"


@pytest.mark.parametrize("field", ["records", "record_id"])
def test_bad_jmespath_refused_when_building_route_map(field: str) -> None:
    raw = base_raw()
    raw["routes"][0][field] = "records[?"
    # `records` is read when the config loads (its envelope needs its field path); other
    # expressions when the route map compiles them. Either way, before the gateway starts.
    with pytest.raises(ConfigError) as info:
        RouteMap(parse_config(raw).routes)
    assert info.value.key.endswith(f".{field}")
    assert "routes[0]" in info.value.key or raw["routes"][0]["path"] in info.value.key
    assert "JMESPath" in info.value.problem


def test_server_table_defaults_and_overrides() -> None:
    config = parse_config(base_raw())
    assert (config.server.bind, config.server.workers, config.server.graceful_timeout) == (
        "127.0.0.1:8080",
        0,  # one per CPU, at least 2 (gateway/server_settings.py)
        8,
    )
    raw = base_raw()
    raw["server"] = {"bind": "0.0.0.0:9000", "workers": 4, "max_requests": 1000}
    raw["server"]["max_requests_jitter"] = 50
    server = parse_config(raw).server
    assert (server.bind, server.workers, server.max_requests_jitter) == ("0.0.0.0:9000", 4, 50)


def test_gunicorn_settings_follow_the_config() -> None:
    import os

    from gateway.server_settings import GunicornLogger, settings_for

    settings = settings_for(parse_config(base_raw()), "json")
    assert settings["workers"] == max(2, os.cpu_count() or 1)
    assert settings["worker_class"] == "gateway.serving.GatewayThreadWorker"
    assert settings["forwarded_allow_ips"] == ""  # no trusted proxy hops, no proxies
    assert settings["max_requests"] == 0
    assert settings["logger_class"] is GunicornLogger
    raw = base_raw()
    raw["server"] = {"workers": 3, "max_requests": 5000, "forwarded_allow_ips": ["10.0.0.5"]}
    raw["gateway"] = {"trusted_proxy_hops": 1}
    settings = settings_for(parse_config(raw), "text")
    assert (settings["workers"], settings["max_requests_jitter"]) == (3, 500)
    assert settings["forwarded_allow_ips"] == "10.0.0.5"


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"bind": "8080"}, "server.bind"),
        ({"bind": "host:99999"}, "server.bind"),
        ({"workers": -1}, "server.workers"),
        ({"threads": "16"}, "server.threads"),
        ({"max_requests_jitter": 10}, "server.max_requests_jitter"),
        ({"port": 8080}, "server.port"),
    ],
)
def test_bad_server_table_names_the_key(table: dict[str, Any], key: str) -> None:
    raw = base_raw()
    raw["server"] = table
    assert refused(raw).key == key


def test_secrets_and_tls_files(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    raw = base_raw()
    raw["database"] = {"url_file": str(secret)}
    raw["issuers"][0] |= {"client_secret_file": str(secret), "ca_file": str(ca)}
    raw["upstream"] = {
        "url": "https://data.example",
        "header_files": {"Authorization": str(secret)},
        "ca_file": str(ca),
        "client_cert_file": str(ca),
        "client_key_file": str(ca),
    }
    config = parse_config(raw)
    assert config.database_url == "s3cret"
    assert config.issuers[0].client_secret == "s3cret"
    assert config.issuers[0].ca_file == str(ca)
    assert config.upstream.headers == {"Authorization": "s3cret"}
    assert config.upstream.client_key_file == str(ca)


@pytest.mark.parametrize(
    ("change", "key"),
    [
        (lambda raw, p: raw["database"].update(url_file=str(p / "missing")), "database.url_file"),
        (lambda raw, p: raw["database"].update(url_file=str(p / "empty")), "database.url_file"),
        (
            lambda raw, p: raw["issuers"][0].update(client_secret_file=str(p / "missing")),
            "issuers[0].client_secret_file",
        ),
        (lambda raw, p: raw["issuers"][0].update(ca_file=str(p)), "issuers[0].ca_file"),
        (
            lambda raw, p: raw["upstream"].update(ca_file=str(p / "empty")),
            "upstream.ca_file",  # an http upstream: TLS keys do not apply
        ),
        (
            lambda raw, p: raw["upstream"].update(
                url="https://x.example", client_cert_file=str(p / "empty")
            ),
            "upstream.client_cert_file",  # without its key
        ),
        (
            lambda raw, p: raw["upstream"].update(header_files={"Authorization": str(p / "x")}),
            "upstream.header_files.Authorization",
        ),
    ],
)
def test_bad_secret_and_tls_files_name_the_key(change: Any, key: str, tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("")
    raw = base_raw()
    change(raw, tmp_path)
    assert refused(raw).key == key
