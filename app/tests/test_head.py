"""HEAD answers carry headers only, measured at the WSGI boundary: the bytes gunicorn would write.

Django's test client strips HEAD bodies itself (as runserver does), so it would hide the very bug
these tests are about; they call the WSGI application directly instead.
"""

from __future__ import annotations

from wsgiref.util import setup_testing_defaults

import pytest
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from django.http import HttpRequest, StreamingHttpResponse

from catalogue.middleware import head_without_body

pytestmark = pytest.mark.django_db


@pytest.fixture
def wsgi():
    """wsgi(method, path, query) -> (status code, headers, body bytes as a server sends them)."""
    # As Django's test client does: keep the test's database connection open across requests.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    handler = WSGIHandler()

    def call(method: str, path: str, query: str = "") -> tuple[int, dict[str, str], bytes]:
        environ = {
            "REQUEST_METHOD": method,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "HTTP_HOST": "testserver",
        }
        setup_testing_defaults(environ)
        started = {}

        def start_response(status, headers, exc_info=None):
            started["status"] = int(status.split()[0])
            started["headers"] = dict(headers)

        iterable = handler(environ, start_response)
        try:
            body = b"".join(iterable)
        finally:
            iterable.close()
        return started["status"], started["headers"], body

    yield call
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.mark.parametrize(
    ("path", "query", "status"),
    [
        ("/no-such-page", "", 404),
        ("/", "", 200),
        ("/api/search", "q=python", 200),
        ("/healthz", "", 200),
    ],
)
def test_head_answers_like_get_without_a_body(wsgi, fake_es, path, query, status):
    get_status, get_headers, get_body = wsgi("GET", path, query)
    head_status, head_headers, head_body = wsgi("HEAD", path, query)
    assert get_status == head_status == status
    assert get_body  # the GET does carry a body: the HEAD below must drop all of it
    assert head_body == b""
    assert head_headers["Content-Type"] == get_headers["Content-Type"]
    # Content-Length stays that of the full answer, as HTTP asks of a HEAD.
    assert head_headers["Content-Length"] == str(len(get_body))


def test_head_on_an_error_page_of_a_failing_view_has_no_body(wsgi, fake_es):
    fake_es.down = True
    status, _, body = wsgi("HEAD", "/api/search", "q=python")
    assert status == 503
    assert body == b""


def test_get_and_post_keep_their_bodies(wsgi, broker):
    status, _, body = wsgi("GET", "/no-such-page")
    assert status == 404
    assert b"Not Found" in body
    status, _, body = wsgi("POST", "/api/products/")  # no token
    assert status == 401
    assert b"API token" in body


def test_head_on_a_streaming_answer_sends_nothing_and_still_closes_it():
    closed = []

    class Chunks:
        def __iter__(self):
            yield b"never sent"

        def close(self):
            closed.append(True)

    def view(request):
        response = StreamingHttpResponse(Chunks())
        response["Content-Length"] = "10"
        return response

    request = HttpRequest()
    request.method = "HEAD"
    response = head_without_body(view)(request)
    assert b"".join(response.streaming_content) == b""
    assert response["Content-Length"] == "10"
    response.close()
    assert closed == [True]
