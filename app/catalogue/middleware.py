"""Middleware that guards the connection between nginx and gunicorn."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponseBase


def head_without_body(
    get_response: Callable[[HttpRequest], HttpResponseBase],
) -> Callable[[HttpRequest], HttpResponseBase]:
    """Answer HEAD with the headers a GET would get and no body at all.

    gunicorn writes whatever body the app returns, HEAD or not, and Django leaves stripping it to
    the server (its test client and runserver do; gunicorn does not). nginx reads no body after a
    HEAD, so on a kept-alive upstream connection those bytes become the start of the next
    response, which some other client then receives broken. First in MIDDLEWARE, so it sees every
    response, error pages included, after Content-Length has been set from the full body.
    """

    def middleware(request: HttpRequest) -> HttpResponseBase:
        response = get_response(request)
        if request.method == "HEAD":
            if response.streaming:
                # The original iterator stays registered and is closed with the response.
                response.streaming_content = []
            else:
                response.content = b""
        return response

    return middleware
