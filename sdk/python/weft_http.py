"""Outbound HTTP for Weft connectors written in Python.

A small blocking client. `request` hands the whole request to the host's
`weft:connector/outbound` interface (one host call); `request_over_wasi_http`
sends it over the standard `wasi:http/outgoing-handler` (some twenty-five host
calls). Either way the host checks every request against the plugin's
`allowed_hosts` grants (and injects its secret headers), so a request to a
host without a grant fails with `HttpError`.

    import weft_http
    response = weft_http.request("POST", url, [("content-type", "application/json")], body)
    if response.status == 429:
        delay = weft_http.retry_after_ms(response)

componentize-py builds it into the component with the app (the workspace build
passes `-p sdk/python`; `weft plugin new --lang python` copies this file into
the new plugin).
"""

from dataclasses import dataclass
from urllib.parse import urlsplit

from componentize_py_types import Err
from wit_world.imports import outbound, outgoing_handler, streams
from wit_world.imports import wasi_http_types as http

_CHUNK = 4096


class HttpError(OSError):
    """No response arrived: denied by the host, refused, timed out or reset."""


@dataclass
class Response:
    """A response with its body fully read; header names are lower case."""

    status: int
    headers: list[tuple[str, bytes]]
    body: bytes

    def header(self, name: str) -> str | None:
        """The first value of a header as text."""
        for key, value in self.headers:
            if key == name.lower():
                return value.decode(errors="replace")
        return None


def _method(name: str):
    known = {
        "GET": http.Method_Get,
        "HEAD": http.Method_Head,
        "POST": http.Method_Post,
        "PUT": http.Method_Put,
        "DELETE": http.Method_Delete,
        "PATCH": http.Method_Patch,
        "OPTIONS": http.Method_Options,
    }
    upper = name.upper()
    return known[upper]() if upper in known else http.Method_Other(upper)


def _check_url(url: str):
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise HttpError(f"not an http(s) URL: {url}")
    return parts


def request(
    method: str,
    url: str,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
) -> Response:
    """Sends one request and reads the whole response (one host call).

    Raises `HttpError` when no response arrives (including a host denial).
    """
    _check_url(url)
    whole = outbound.Request(
        method=method.upper(),
        url=url,
        headers=[(name.lower(), value.encode()) for name, value in (headers or [])],
        body=body,
        timeout_ms=None,
    )
    answer = outbound.send_all([whole])[0]
    if isinstance(answer, Err):
        raise HttpError(f"no response: {answer.value}")
    response = answer.value
    return Response(response.status, response.headers, response.body)


def request_over_wasi_http(
    method: str,
    url: str,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
) -> Response:
    """`request` over the standard `wasi:http/outgoing-handler`."""
    parts = _check_url(url)
    try:
        fields = http.Fields.from_list(
            [(name.lower(), value.encode()) for name, value in (headers or [])]
        )
    except Err as e:
        raise HttpError(f"header not allowed: {e.value}") from None
    outgoing = http.OutgoingRequest(fields)
    outgoing.set_method(_method(method))
    outgoing.set_scheme(http.Scheme_Https() if parts.scheme == "https" else http.Scheme_Http())
    outgoing.set_authority(parts.netloc)
    outgoing.set_path_with_query((parts.path or "/") + (f"?{parts.query}" if parts.query else ""))
    outgoing_body = outgoing.body()
    try:
        future = outgoing_handler.handle(outgoing, None)
    except Err as e:
        raise HttpError(f"request refused: {e.value}") from None
    # Stream the body after handing the request over, then finish it.
    with outgoing_body.write() as sink:
        for start in range(0, len(body), _CHUNK):
            try:
                sink.blocking_write_and_flush(body[start : start + _CHUNK])
            except Err:
                break
    http.OutgoingBody.finish(outgoing_body, None)
    with future:
        with future.subscribe() as ready:
            ready.block()
        answer = future.get()
    if answer is None or isinstance(answer, Err) or isinstance(answer.value, Err):
        detail = getattr(getattr(answer, "value", None), "value", None)
        raise HttpError(f"no response: {detail}")
    chunks = []
    # Resources are closed child-first: stream, then body, then response.
    with answer.value.value as response:
        status = response.status()
        with response.headers() as response_headers:
            header_list = response_headers.entries()
        with response.consume() as incoming_body:
            with incoming_body.stream() as stream:
                while True:
                    try:
                        chunks.append(stream.blocking_read(16 * 1024))
                    except Err as e:
                        if isinstance(e.value, streams.StreamError_Closed):
                            break
                        raise HttpError("response body failed") from None
    return Response(status, header_list, b"".join(chunks))


def retry_after_ms(response: Response) -> int | None:
    """The delay a `Retry-After` header asks for, in milliseconds: seconds
    (`120`) or an HTTP-date (`Wed, 21 Oct 2026 07:28:00 GMT`), counted from
    now; a date in the past is no delay. None when absent or unreadable.
    Never more than the WIT's u64 can carry."""
    value = response.header("retry-after")
    if value is None:
        return None
    value = value.strip()
    # ASCII digits only: str.isdigit() also accepts "²", which int() refuses.
    if value and value.isascii() and value.isdigit():
        return min(int(value) * 1000, 2**64 - 1)
    try:
        import email.utils
        import time

        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None:
        return None
    return min(max(0, int((when.timestamp() - time.time()) * 1000)), 2**64 - 1)
