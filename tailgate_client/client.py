"""A small Python client for Tailgate's API (usable without the server installed).

client = Client("http://127.0.0.1:8000", api_key="tg_…")
execution = client.run("examples.print_lines", {"count": 3})
for event in client.follow_output(execution["id"]):
    ...
"""

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
from httpx_sse import connect_sse

DEFAULT_URL = "http://127.0.0.1:8000"
# Reconnect delays after a dropped stream: doubled each time, capped; a stream that delivered
# something starts again from the shortest.
RECONNECT_MIN_SECONDS = 0.5
RECONNECT_MAX_SECONDS = 10.0
RECONNECT_ATTEMPTS = 20
# A stream sends a keep-alive every 15 s: twice that without a byte means the link is dead.
READ_TIMEOUT_SECONDS = 35.0


class ApiError(Exception):
    """An error answer (problem+json) from the server."""

    def __init__(self, status: int, problem: dict[str, Any]):
        self.status = status
        self.problem = problem
        detail = problem.get("detail") or problem.get("title") or f"HTTP {status}"
        errors = problem.get("errors") or []
        lines = [detail] + [f"  {e.get('location')}: {e.get('message')}" for e in errors]
        super().__init__("\n".join(lines))


@dataclass
class StreamEvent:
    event: str
    id: str | None
    data: dict[str, Any]


class Client:
    def __init__(self, url: str | None = None, api_key: str | None = None, timeout: float = 30):
        self.url = (url or os.environ.get("TAILGATE_URL") or DEFAULT_URL).rstrip("/")
        key = api_key or os.environ.get("TAILGATE_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def _answer(self, response: httpx.Response) -> Any:
        if response.is_success:
            return response.json() if response.content else None
        try:
            problem = response.json()
        except ValueError:
            problem = {"detail": response.text[:200] or response.reason_phrase}
        raise ApiError(response.status_code, problem)

    def get(self, path: str, **params: Any) -> Any:
        return self._answer(self.http.get(path, params={k: v for k, v in params.items() if v}))

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self._answer(self.http.post(path, json=body or {}))

    # --- resources ----------------------------------------------------------------------
    def actions(self) -> list[dict[str, Any]]:
        return self.get("/api/v1/actions/", limit=500)["results"]

    def execution(self, execution_id: str = "last") -> dict[str, Any]:
        return self.get(f"/api/v1/executions/{execution_id}/")

    def executions(self, **filters: Any) -> list[dict[str, Any]]:
        return self.get("/api/v1/executions/", **filters)["results"]

    def children(self, execution_id: str) -> list[dict[str, Any]]:
        return self.get(f"/api/v1/executions/{execution_id}/children/", limit=500)["results"]

    def run(self, action: str, parameters: dict[str, Any], tenant: str | None = None) -> dict:
        body: dict[str, Any] = {"action": action, "parameters": parameters}
        if tenant:
            body["tenant"] = tenant
        return self.post("/api/v1/executions/", body)

    def cancel(self, execution_id: str) -> dict[str, Any]:
        return self.post(f"/api/v1/executions/{execution_id}/cancel/")

    def re_run(self, execution_id: str) -> dict[str, Any]:
        return self.post(f"/api/v1/executions/{execution_id}/re-run/")

    def output_text(self, execution_id: str, output_type: str | None = None) -> str:
        params = {"type": output_type} if output_type else {}
        response = self.http.get(f"/api/v1/executions/{execution_id}/output", params=params)
        if not response.is_success:
            self._answer(response)
        return response.text

    # --- streams ------------------------------------------------------------------------
    def follow_output(
        self, execution_id: str, output_type: str | None = None, replay_limit: int = 50000
    ) -> Iterator[StreamEvent]:
        """Every output event of an execution from its first line, then `done`.

        Reconnects with `Last-Event-ID` when the connection drops, so no line is lost or
        repeated; gives up after RECONNECT_ATTEMPTS failed attempts in a row.
        """
        params: dict[str, Any] = {"from": 1, "replay_limit": replay_limit}
        if output_type:
            params["type"] = output_type
        last_seq: int | None = None
        delay, failures = RECONNECT_MIN_SECONDS, 0
        timeout = httpx.Timeout(READ_TIMEOUT_SECONDS, connect=10)
        while True:
            headers = {"Last-Event-ID": str(last_seq)} if last_seq is not None else {}
            try:
                with connect_sse(
                    self.http,
                    "GET",
                    f"/api/v1/executions/{execution_id}/output/stream",
                    params=params,
                    headers=headers,
                    timeout=timeout,
                ) as source:
                    if not source.response.is_success:
                        source.response.read()
                        self._answer(source.response)
                    for sse in source.iter_sse():
                        delay, failures = RECONNECT_MIN_SECONDS, 0
                        data = json.loads(sse.data) if sse.data else {}
                        event = StreamEvent(sse.event, sse.id or None, data)
                        if sse.event == "execution.output__create":
                            if last_seq is not None and data["seq"] <= last_seq:
                                continue  # already shown before the reconnect
                            last_seq = data["seq"]
                        yield event
                        if sse.event == "done":
                            return
            except (httpx.TransportError, httpx.RemoteProtocolError):
                pass
            failures += 1
            if failures > RECONNECT_ATTEMPTS:
                raise ApiError(0, {"detail": f"lost the stream of {execution_id}; gave up"})
            time.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_SECONDS)
