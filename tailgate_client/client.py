"""The Python client: one `Client`, a manager per resource, streams that resume.

    client = Client()                      # TAILGATE_URL / config file / 127.0.0.1:8000
    done = client.executions.run("examples.print_lines", count=3)          # waits
    started = client.executions.run("core.local", cmd="make", wait=False)
    for event in client.executions.tail(started["id"], include_children=True):
        print(event.data.get("data", ""), end="")
    for event in client.events(events="execution__update", status="failed"):
        ...

Every request goes through `request`, which turns a transport failure into
`ServerUnreachable` and an error answer into the `ApiError` subclass for its status; stream
requests go to `stream_url` (the base URL unless configured apart).
"""

from collections.abc import Iterator
from typing import Any

import httpx

from tailgate_client.config import resolve
from tailgate_client.errors import ServerUnreachable, api_error
from tailgate_client.managers import ActionManager, ExecutionManager, KeyManager, TenantManager
from tailgate_client.streams import ResumableStream, StreamEvent

API = "/api/v1"
# Ordinary requests; streams set their own (see streams.READ_TIMEOUT_SECONDS).
REQUEST_TIMEOUT_SECONDS = 30.0
# A problem body is short; anything longer than this in a non-JSON error is not worth showing.
ERROR_TEXT_CHARS = 200


class Client:
    """Tailgate's API. Arguments left out come from the environment or the config file."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        stream_url: str | None = None,
        api_key: str | None = None,
        timeout: float = REQUEST_TIMEOUT_SECONDS,
    ):
        settings = resolve(base_url, stream_url, api_key)
        self.base_url = settings.base_url
        self.stream_url = settings.stream_url
        self.api_key = settings.api_key
        self.config_path = settings.config_path
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self.http = httpx.Client(headers=headers, timeout=timeout)
        self.actions = ActionManager(self)
        self.executions = ExecutionManager(self)
        self.tenants = TenantManager(self)
        self.keys = KeyManager(self)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- plain requests -----------------------------------------------------------------
    def api_url(self, path: str) -> str:
        return f"{self.base_url}{API}{path}"

    def stream_api_url(self, path: str) -> str:
        return f"{self.stream_url}{API}{path}"

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """One request; its response when it succeeded, else the typed error."""
        try:
            response = self.http.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            raise ServerUnreachable(_origin(url), _reason(exc)) from None
        self.check(response)
        return response

    def send_streaming(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """Like `request`, with the body left unread: the caller iterates and closes it."""
        request = self.http.build_request(method, url, **kwargs)
        try:
            response = self.http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise ServerUnreachable(_origin(url), _reason(exc)) from None
        try:
            self.check(response)
        except BaseException:
            response.close()
            raise
        return response

    def check(self, response: httpx.Response) -> None:
        """Raise the `ApiError` subclass for an error answer (reading a streamed body)."""
        if response.is_success:
            return
        response.read()
        try:
            problem = response.json()
        except ValueError:
            problem = None
        if not isinstance(problem, dict):
            text = response.text[:ERROR_TEXT_CHARS].strip()
            problem = {"status": response.status_code, "detail": text or response.reason_phrase}
        raise api_error(response.status_code, problem, dict(response.headers))

    def get_json(self, path: str, **params: Any) -> Any:
        return self.request("GET", self.api_url(path), params=_query(params)).json()

    def post_json(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self.request("POST", self.api_url(path), json=body or {}).json()

    # --- streams ------------------------------------------------------------------------
    def stream(self, path: str, params: dict[str, Any], **options: Any) -> ResumableStream:
        """A `ResumableStream` of `path` under the stream URL (see streams.py)."""
        return ResumableStream(
            self.http, self.stream_api_url(path), _query(params), self.check, **options
        )

    def events(self, last_event_id: str | None = None, **filters: Any) -> Iterator[StreamEvent]:
        """The global event stream, endless; resumes after a dropped connection.

        Filters as the API documents them: `events` (a comma list or a list of names, `*`
        globs; output events only when asked for), `tenant`, `action`, `status`,
        `execution`, `parent`. `reset` and `lagged` events are yielded as they come.
        """
        stream = self.stream("/stream", filters, last_id=last_event_id, ordered_ids=False)
        return iter(stream)


def _query(params: dict[str, Any]) -> dict[str, Any]:
    """Leave out unset filters (the API refuses unknown or empty ones); lists as comma lists."""
    query = {}
    for name, value in params.items():
        if value is None or value == [] or value == "":
            continue
        if isinstance(value, (list, tuple, set)):
            value = ",".join(str(v) for v in value)
        elif isinstance(value, bool):
            value = "true" if value else "false"
        query[name] = value
    return query


def _origin(url: str) -> str:
    parsed = httpx.URL(url)
    return f"{parsed.scheme}://{parsed.netloc.decode()}"


def _reason(exc: httpx.TransportError) -> str:
    """`connection refused` rather than `[Errno 111] Connection refused`."""
    text = str(exc) or type(exc).__name__
    if "]" in text and text.startswith("["):
        text = text.split("]", 1)[1].strip()
    if isinstance(exc, httpx.TimeoutException):
        text = f"timed out ({text})" if text != type(exc).__name__ else "timed out"
    return text[:1].lower() + text[1:]
