"""The pieces of serve/guard.py on their own: which Host names a keyless server answers to,
how a Host header splits, the nesting count of a JSON body (without parsing it) and the
content types taken as JSON. The HTTP behaviour is checked in tests/reliability/test_census_http.py."""

import json

from scratchlm.serve.guard import MAX_JSON_DEPTH, host_names, is_json, json_depth, split_host


def test_host_names():
    assert host_names("127.0.0.1") == {"localhost", "127.0.0.1", "[::1]"}
    assert "192.168.1.5" in host_names("192.168.1.5")
    assert "[fe80::1]" in host_names("fe80::1") and "[::1]" in host_names("::1", ["[::1]"])
    assert host_names("0.0.0.0") == host_names("::") == host_names("127.0.0.1")  # no wildcard
    assert {"lab.example", "box"} <= host_names("0.0.0.0", ["Lab.Example.", "box", "0.0.0.0"])
    assert "0.0.0.0" not in host_names("0.0.0.0", ["0.0.0.0"])


def test_split_host():
    assert split_host("localhost:8000") == ("localhost", 8000)
    assert split_host("[::1]:80") == ("[::1]", 80) and split_host("[::1]") == ("[::1]", None)
    assert split_host("LocalHost.") == ("localhost", None)
    for bad in ("", "a:b:c", "::1", "host:port", "[::1", "a b"):
        assert split_host(bad) is None, bad


def test_json_depth_counts_brackets_outside_strings():
    body = {"a": [1, {"b": "[[[[\"[[{{"}], "c": {"d": []}}  # brackets in a string
    assert json_depth(json.dumps(body).encode()) == 3
    assert json_depth(b"[" * 200_000 + b"]" * 200_000) == 200_000
    deep = json.dumps({"x": json.loads("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH)}).encode()
    assert json_depth(deep) == MAX_JSON_DEPTH + 1
    assert json_depth(b'"just a string [["') == 0 and json_depth(b"") == 0


def test_is_json():
    assert is_json("application/json") and is_json("Application/JSON; charset=utf-8")
    for other in (None, "", "text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                  "application/jsonp", "text/json"):
        assert not is_json(other), other
