"""Assertions about RFC 9457 problem responses, shared by the test modules."""

from __future__ import annotations

from typing import Any

import httpx

PROBLEM_JSON = "application/problem+json"


def assert_problem(response: httpx.Response, status: int, *codes: str) -> dict[str, Any]:
    """The response is a problem with this status and, when given, one of these codes; a
    validation error also lists what was wrong."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].split(";")[0] == PROBLEM_JSON
    body: dict[str, Any] = response.json()
    assert {"type", "title", "status", "detail", "code"} <= body.keys(), body
    assert body["status"] == status
    if codes:
        assert body["code"] in codes, body
    if body["code"] == "validation_error":
        assert body["errors"]
        for error in body["errors"]:
            assert set(error) == {"loc", "msg", "type"}
    return body
