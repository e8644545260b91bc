"""REST API: /api/v1/tenants/ — the tenants the caller may see, with their role there."""

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from guardian.shortcuts import assign_perm

from executions import services
from executions.models import Tenant
from rbac.models import ApiKey, Role, TenantGrant
from tests.api_helpers import PROBLEM, logged_in

pytestmark = pytest.mark.django_db

LIST = "/api/v1/tenants/"


def slugs(response) -> list[str]:
    assert response.status_code == 200, response.content
    return [row["slug"] for row in response.json()["results"]]


def test_it_lists_the_tenants_a_member_sees_with_their_role(member, other_tenant):
    response = logged_in(member).get(LIST)
    assert response.json() == {
        "count": 1,
        "next": None,
        "previous": None,
        "results": [{"slug": "default", "name": "Default", "role": "viewer"}],
    }


def test_it_shows_an_owner_and_an_outsider_only_their_own_tenant(owner, outsider):
    assert logged_in(owner).get(LIST).json()["results"] == [
        {"slug": "default", "name": "Default", "role": "admin"}
    ]
    assert logged_in(outsider).get(LIST).json()["results"] == [
        {"slug": "other", "name": "Other", "role": "operator"}
    ]


def test_it_shows_a_superuser_every_tenant_without_a_granted_role(superuser, tenant, other_tenant):
    rows = logged_in(superuser).get(LIST).json()["results"]
    assert rows == [
        {"slug": "default", "name": "Default", "role": None},
        {"slug": "other", "name": "Other", "role": None},
    ]


def test_it_takes_the_highest_role_of_own_group_and_every_tenant_grants(member, other_tenant):
    group = Group.objects.create(name="ops")
    member.groups.add(group)
    TenantGrant.objects.create(group=group, tenant=Tenant.default(), role=Role.OPERATOR)
    TenantGrant.objects.create(user=member, tenant=None, role=Role.VIEWER)
    rows = logged_in(member).get(LIST).json()["results"]
    assert rows == [
        {"slug": "default", "name": "Default", "role": "operator"},
        {"slug": "other", "name": "Other", "role": "viewer"},
    ]


def test_it_shows_a_tenant_seen_through_one_execution_without_a_role(actions, tenant):
    grantee = get_user_model().objects.create_user("grantee")
    execution = services.create_execution(actions["core.local"], {"cmd": "true"}, tenant=tenant)
    assert slugs(logged_in(grantee).get(LIST)) == []
    assign_perm("executions.view_execution", grantee, execution)
    assert logged_in(grantee).get(LIST).json()["results"] == [
        {"slug": "default", "name": "Default", "role": None}
    ]


def test_it_shows_one_tenant_and_hides_the_others_like_missing_ones(member, other_tenant):
    client = logged_in(member)
    assert client.get(f"{LIST}default/").json() == {
        "slug": "default",
        "name": "Default",
        "role": "viewer",
    }
    hidden, missing = client.get(f"{LIST}other/"), client.get(f"{LIST}nope/")
    for response, slug in ((hidden, "other"), (missing, "nope")):
        assert response.status_code == 404
        assert response["Content-Type"] == PROBLEM
        assert response.json()["detail"] == f"There is no tenant {slug}."


def test_it_answers_an_api_key_like_a_session(member, tenant):
    _, raw_key = ApiKey.issue(member)
    response = Client().get(LIST, HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    assert slugs(response) == ["default"]
    assert Client().get(f"{LIST}default/", HTTP_X_API_KEY=raw_key).status_code == 200


def test_it_needs_credentials(tenant):
    for path in (LIST, f"{LIST}default/"):
        response = Client().get(path)
        assert response.status_code == 401
        assert response["Content-Type"] == PROBLEM


def test_it_paginates_and_refuses_unknown_parameters(superuser, tenant):
    Tenant.objects.bulk_create(Tenant(slug=f"t{i:02}", name=f"T {i}") for i in range(5))
    client = logged_in(superuser)
    page = client.get(LIST, {"limit": 2, "offset": 1}).json()
    assert page["count"] == 6
    assert [row["slug"] for row in page["results"]] == ["t00", "t01"]
    assert page["next"] and page["previous"]
    for query, location in (({"limit": 0}, "query.limit"), ({"slug": "x"}, "query.slug")):
        response = client.get(LIST, query)
        assert response.status_code == 422
        assert [e["location"] for e in response.json()["errors"]] == [location]
    assert client.get(f"{LIST}default/", {"x": "1"}).status_code == 422


def test_it_lists_with_a_fixed_number_of_queries(member, other_tenant):
    client = logged_in(member)
    client.get(LIST)  # the session and the user are loaded alike every time
    with CaptureQueriesContext(connection) as few:
        client.get(LIST)
    for i in range(20):
        tenant = Tenant.objects.create(slug=f"x{i}", name=f"X {i}")
        TenantGrant.objects.create(user=member, tenant=tenant, role=Role.OPERATOR)
    with CaptureQueriesContext(connection) as many:
        response = client.get(LIST)
    assert len(slugs(response)) == 21
    assert len(many) == len(few)


def test_it_refuses_writes(member):
    response = logged_in(member).post(LIST, {}, content_type="application/json")
    assert response.status_code == 405
    assert response["Content-Type"] == PROBLEM
