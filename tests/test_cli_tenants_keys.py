"""`tailgate tenant list|get` and `tailgate key list|get|create|revoke` against a real server,
in every output format, with the errors a caller meets (missing, hidden, not allowed)."""

import json

import pytest
import yaml

from rbac.models import ApiKey
from tests.cli_helpers import run_cli

pytest_plugins = ["tests.cli_fixtures"]
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

NOTE = "Note: the key is shown this once; the server keeps only its hash. Store it now.\n"


def table_rows(out: str) -> list[list[str]]:
    lines = out.splitlines()
    assert set(lines[1]) <= {"-", " "}
    return [line.split() for line in [lines[0], *lines[2:]]]


@pytest.fixture
def as_member(server_url, config_home, member):
    """`as_member(*args)`: the CLI with a key of `member` (viewer of the default tenant)."""
    raw_key = ApiKey.issue(member, name="member cli")[1]

    def run(*args: str):
        return run_cli(server_url, raw_key, *args, config_home=config_home)

    return run


def test_it_lists_and_shows_tenants_in_every_format(tg, as_member, other_tenant):
    assert table_rows(tg("tenant", "list").out) == [
        ["slug", "name", "role"],
        ["default", "Default"],
        ["other", "Other"],
    ]
    assert table_rows(as_member("tenant", "list").out) == [
        ["slug", "name", "role"],
        ["default", "Default", "viewer"],
    ]
    listed = json.loads(as_member("tenant", "list", "-j").out)
    assert listed == [{"slug": "default", "name": "Default", "role": "viewer"}]
    assert yaml.safe_load(as_member("tenant", "list", "-y").out) == listed
    assert table_rows(as_member("tenant", "list", "-a", "slug", "role").out) == [
        ["slug", "role"],
        ["default", "viewer"],
    ]
    narrow = as_member("tenant", "list", "-w", "4").out.splitlines()
    assert narrow[:3] == ["slug  name  role", "----  ----  ----", "defa  Defa  view"]

    shown = as_member("tenant", "get", "default")
    assert shown.code == 0
    assert shown.out == "slug: default\nname: Default\nrole: viewer\n"
    assert json.loads(as_member("tenant", "get", "default", "-j", "-a", "role").out) == {
        "role": "viewer"
    }
    assert yaml.safe_load(tg("tenant", "get", "other", "-y").out)["slug"] == "other"
    for slug in ("other", "nope"):  # hidden answers like missing
        hidden = as_member("tenant", "get", slug)
        assert (hidden.code, hidden.out) == (2, "")
        assert hidden.err == f"tailgate: There is no tenant {slug}.\n"


def test_it_creates_a_key_with_a_superusers_key_and_prints_it_once(tg, server_url, config_home):
    created = tg("key", "create", "deploy bot", "--expires-in-days", "7")
    assert created.code == 0, created.err
    assert created.err == NOTE
    lines = dict(line.split(": ", 1) for line in created.out.splitlines())
    key_id, raw_key = lines["id"], lines["key"]
    assert (lines["name"], lines["state"]) == ("deploy bot", "active")
    assert raw_key.startswith(f"tg_{key_id}_")
    assert lines["expires_at"]

    # The printed key works, and nothing prints it again.
    listed = run_cli(server_url, raw_key, "key", "list", "-j", config_home=config_home)
    assert listed.code == 0 and raw_key not in listed.out
    mine = json.loads(listed.out)  # the new key (current) and the test's own `cli` key
    assert (mine[0]["id"], mine[0]["current"]) == (key_id, True)
    assert [k["name"] for k in mine] == ["deploy bot", "cli"]
    as_json = json.loads(tg("key", "create", "ci", "-j").out)
    assert as_json["key"].startswith(f"tg_{as_json['id']}_") and as_json["expires_at"] is None
    only_key = tg("key", "create", "script", "-a", "key")
    assert only_key.out.startswith("key: tg_") and only_key.out.count("\n") == 1


def test_it_lists_shows_and_revokes_keys(tg, server_url, config_home, superuser):
    spare, spare_raw = ApiKey.issue(superuser, name="spare")
    rows = table_rows(tg("key", "list").out)
    assert rows[0] == ["id", "name", "state", "created_at", "expires_at", "last_used_at"]
    assert [row[:3] for row in rows[1:]] == [[spare.key_id, "spare", "active"]] + [
        [row[0], "cli", "active"] for row in rows[2:]
    ]
    assert len(rows) == 3
    assert yaml.safe_load(tg("key", "list", "-y").out) == json.loads(tg("key", "list", "-j").out)
    picked = table_rows(tg("key", "list", "-a", "name", "state", "-w", "6").out)
    assert picked == [["name", "state"], ["spare", "active"], ["cli", "active"]]
    shown = tg("key", "get", spare.key_id)
    assert f"id: {spare.key_id}\n" in shown.out and "current: false\n" in shown.out

    revoked = tg("key", "revoke", spare.key_id)
    assert (revoked.code, revoked.out) == (0, f"API key {spare.key_id} is revoked.\n")
    assert json.loads(tg("key", "get", spare.key_id, "-j").out)["state"] == "revoked"
    assert json.loads(tg("key", "revoke", spare.key_id, "-j").out)["state"] == "revoked"
    refused = run_cli(server_url, spare_raw, "key", "list", config_home=config_home)
    assert refused.code == 2 and "Invalid, expired or revoked API key." in refused.err


def test_it_says_in_one_line_what_a_members_key_may_not_do(as_member, superuser, member):
    theirs = ApiKey.issue(superuser, name="root's")[0]
    refused = as_member("key", "create", "copy")
    assert (refused.code, refused.out) == (2, "")
    assert refused.err.startswith("tailgate: An API key cannot create API keys")
    assert refused.err.count("\n") == 1
    assert ApiKey.objects.filter(user=member).count() == 1
    assert [row[1:3] for row in table_rows(as_member("key", "list").out)[1:]] == [
        ["member", "cli"]
    ]  # the name has a space: split in two
    hidden = as_member("key", "revoke", theirs.key_id)
    assert hidden.code == 2 and hidden.err == f"tailgate: You have no API key {theirs.key_id}.\n"
    theirs.refresh_from_db()
    assert theirs.revoked_at is None
    invalid = as_member("key", "get", "nope")
    assert invalid.err == "tailgate: You have no API key nope.\n"
