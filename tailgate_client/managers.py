"""Resource managers, as st2client has them: `client.actions`, `client.executions`,
`client.tenants`, `client.keys`.

Each manager lists (`get_all`, paginating), fetches (`get`, raising NotFound; `get_by_id`,
None on 404 as in st2client) and, where the API allows, creates. An operation the API does
not have raises `NotSupported` saying what to do instead, rather than a bare 404 or 405.
"""

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tailgate_client.errors import Ambiguous, NotFound, NotSupported, WaitTimeout
from tailgate_client.streams import StreamEvent

if TYPE_CHECKING:
    from tailgate_client.client import Client

# The API's largest page (executions/api/pagination.py MAX_PAGE_SIZE): fewest round trips.
PAGE_SIZE = 500
FINISHED = frozenset({"succeeded", "failed", "timeout", "canceled", "abandoned"})
# `wait` polls the execution: often at first (short actions end fast), then every 2 s as
# st2 does, so a long wait costs one small request per 2 s.
WAIT_POLL_FIRST_SECONDS = 0.1
WAIT_POLL_MAX_SECONDS = 2.0


class ResourceManager:
    path = ""
    key = "id"
    cannot_create = cannot_update = cannot_delete = "the API does not allow it"

    def __init__(self, client: "Client"):
        self.client = client

    def get_all(self, limit: int | None = None, **filters: Any) -> list[dict[str, Any]]:
        """Every row matching `filters` (all pages), or the first `limit` of them."""
        rows: list[dict[str, Any]] = []
        while limit is None or len(rows) < limit:
            size = PAGE_SIZE if limit is None else min(PAGE_SIZE, limit - len(rows))
            page = self.client.get_json(self.path, limit=size, offset=len(rows), **filters)
            rows += page["results"]
            if len(page["results"]) < size or len(rows) >= page.get("count", 0):
                break
        return rows

    def get(self, key: str) -> dict[str, Any]:
        """One row by its key; raises NotFound."""
        return self.client.get_json(f"{self.path}{key}/")

    def get_by_id(self, key: str) -> dict[str, Any] | None:
        """One row by its key, or None when there is none (or it is hidden from you)."""
        try:
            return self.get(key)
        except NotFound:
            return None

    def get_by_name(self, name: str) -> dict[str, Any] | None:
        raise NotSupported(f"{type(self).__name__} has no names to look up")

    def create(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        raise NotSupported(self.cannot_create)

    def update(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        raise NotSupported(self.cannot_update)

    def delete(self, *args: Any, **kwargs: Any) -> None:
        raise NotSupported(self.cannot_delete)


class ActionManager(ResourceManager):
    """Registered actions, by ref (`pack.name`); filters: `pack`, `runner_type`, `enabled`."""

    path = "/actions/"
    key = "ref"
    cannot_create = cannot_update = cannot_delete = (
        "actions come from packs on the server (manage.py register_actions), not from the API"
    )

    def get_by_name(self, name: str, pack: str | None = None) -> dict[str, Any] | None:
        """The action called `name` (or whose ref is `name`); Ambiguous if several packs have it."""
        found = [a for a in self.get_all(pack=pack) if name in (a["name"], a["ref"])]
        if len(found) > 1:
            refs = ", ".join(a["ref"] for a in found)
            raise Ambiguous(f"more than one action is called {name}: {refs}")
        return found[0] if found else None


@dataclass
class OutputText:
    """The plain-text output of an execution, read as it comes."""

    purged_at: str | None
    chunks: Iterator[str]


class ExecutionManager(ResourceManager):
    """Executions; filters: `status`, `action`, `tenant`, `parent` (each a value or a list)."""

    path = "/executions/"
    cannot_update = "an execution changes by running: cancel it or run it again (re_run)"
    cannot_delete = "executions are kept (their output is purged after the TTL); cancel it instead"

    def create(
        self, action: str, parameters: dict[str, Any] | None = None, tenant: str | None = None
    ) -> dict[str, Any]:
        """Schedule a run of `action`; the new execution, at once."""
        body: dict[str, Any] = {"action": action, "parameters": parameters or {}}
        if tenant:
            body["tenant"] = tenant
        return self.client.post_json(self.path, body)

    def run(
        self,
        action: str,
        parameters: dict[str, Any] | None = None,
        *,
        tenant: str | None = None,
        wait: bool = True,
        timeout: float | None = None,
        **params: Any,
    ) -> dict[str, Any]:
        """Run `action` with `parameters` and/or keyword parameters; wait for it unless told."""
        execution = self.create(action, {**(parameters or {}), **params}, tenant)
        return self.wait(execution["id"], timeout) if wait else execution

    def wait(self, execution_id: str, timeout: float | None = None) -> dict[str, Any]:
        """The execution once it has finished; WaitTimeout after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = WAIT_POLL_FIRST_SECONDS
        while (execution := self.get(execution_id))["status"] not in FINISHED:
            if deadline is not None and time.monotonic() + pause > deadline:
                raise WaitTimeout(execution, timeout or 0)
            time.sleep(pause)
            pause = min(pause * 2, WAIT_POLL_MAX_SECONDS)
        return execution

    def cancel(self, execution_id: str) -> dict[str, Any]:
        """Cancel (the server kills the whole process tree); Conflict if already finished."""
        return self.client.post_json(f"{self.path}{execution_id}/cancel/")

    def re_run(self, execution_id: str) -> dict[str, Any]:
        """A new execution of the same action with the same parameters."""
        return self.client.post_json(f"{self.path}{execution_id}/re-run/")

    def children(self, execution_id: str) -> list[dict[str, Any]]:
        """A workflow's child executions, oldest first."""
        rows: list[dict[str, Any]] = []
        while True:
            page = self.client.get_json(
                f"{self.path}{execution_id}/children/", limit=PAGE_SIZE, offset=len(rows)
            )
            rows += page["results"]
            if len(page["results"]) < PAGE_SIZE:
                return rows

    @contextlib.contextmanager
    def open_output(self, execution_id: str, type: str | None = None) -> Iterator[OutputText]:
        """The plain-text output: what is stored, then live text until the execution ends."""
        url = self.client.stream_api_url(f"{self.path}{execution_id}/output")
        response = self.client.send_streaming("GET", url, params={"type": type} if type else {})
        try:
            purged_at = response.headers.get("x-output-purged-at")
            yield OutputText(purged_at, response.iter_text())
        finally:
            response.close()

    def output(self, execution_id: str, type: str | None = None) -> str:
        """The whole output as text (for a running execution: once it has finished)."""
        with self.open_output(execution_id, type) as text:
            return "".join(text.chunks)

    def tail(
        self, execution_id: str, type: str | None = None, include_children: bool = False
    ) -> Iterator[StreamEvent]:
        """Output events from the first line until `done`, resuming after a dropped connection.

        With `include_children`, a workflow's descendants at every depth are followed too,
        each announced by `child_started` and closed by `child_finished` (see follow.py).
        """
        from tailgate_client.follow import follow

        return follow(self.client, execution_id, type, include_children)


class TenantManager(ResourceManager):
    """The tenants you may see, by slug, each with your role there (`role`, or None)."""

    path = "/tenants/"
    key = "slug"
    cannot_create = cannot_update = cannot_delete = (
        "tenants are managed in the admin (Executions → Tenants), not through the API"
    )

    def get_by_name(self, name: str) -> dict[str, Any] | None:
        """The tenant whose slug, or else display name, is `name`; Ambiguous if several."""
        tenants = self.get_all()
        by_slug = [t for t in tenants if t["slug"] == name]
        found = by_slug or [t for t in tenants if t["name"] == name]
        if len(found) > 1:
            slugs = ", ".join(t["slug"] for t in found)
            raise Ambiguous(f"more than one tenant is called {name}: {slugs}")
        return found[0] if found else None


class KeyManager(ResourceManager):
    """Your own API keys, by their public id (`tg_<id>_…`), newest first.

    `create` answers the key itself once, under `key`; the server keeps only its hash.
    Creating needs a logged-in session or a superuser's key: a key cannot mint keys.
    """

    path = "/keys/"
    cannot_update = "a key cannot be changed: create a new one and revoke the old one"
    cannot_delete = "keys are revoked, not deleted: keys.revoke(key_id)"

    def create(self, name: str, expires_in_days: int | None = None) -> dict[str, Any]:
        """A new key for you; the answer's `key` is the key itself, shown this once."""
        body: dict[str, Any] = {"name": name}
        if expires_in_days is not None:
            body["expires_in_days"] = expires_in_days
        return self.client.post_json(self.path, body)

    def revoke(self, key_id: str) -> dict[str, Any]:
        """Revoke one of your keys (it may be the one in use); its open streams end."""
        return self.client.post_json(f"{self.path}{key_id}/revoke/")
