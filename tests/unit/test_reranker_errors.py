"""The error classes are the one table of the reranker's answers: README.md's list of errors
names every status they carry, and the status, kind and headers are what a client gets."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from reranker.api import install_error_handlers
from reranker.errors import ERRORS, Overloaded, ServiceError

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_documents_every_error_status():
    api = README.read_text().split("\n## Reranker API\n", 1)[1].split("\n## ", 1)[0]
    errors = api.split("- Errors are", 1)[1].split("\n\n", 1)[0]
    documented = {int(code) for code in re.findall(r"\b(4\d\d|5\d\d)\b", errors)}
    assert documented == {error.status for error in ERRORS}


@pytest.mark.parametrize("error", ERRORS, ids=lambda error: error.__name__)
def test_each_error_is_answered_with_its_status_kind_and_headers(error):
    app = FastAPI()
    install_error_handlers(app)
    raised = error("what went wrong") if error is not Overloaded else error("busy", retry_after=7)

    @app.get("/fail")
    async def fail():
        raise raised

    answer = TestClient(app).get("/fail")
    assert answer.status_code == error.status
    assert answer.json() == {"message": raised.message, "type": error.kind}
    assert answer.headers.get("retry-after") == ("7" if error is Overloaded else None)


def test_an_error_class_without_a_status_is_refused():
    with pytest.raises(TypeError, match="status"):

        class Unstated(ServiceError):  # noqa: F841 - defining it is the test
            kind = "unstated"
            description = "no status"
