"""A tenant admin grants by exact user or group name: the installation's names are not listed.

Issue 12, item 8: the grant inline on a tenant used to offer a select of every username and
group of the installation to any tenant admin.
"""

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from rbac.models import Role, TenantGrant

User = get_user_model()


@pytest.fixture
def strangers(db):
    """A user and a group of the installation that have nothing to do with the tenant."""
    return User.objects.create_user("stranger-danger"), Group.objects.create(name="secret-ops")


def page(tenant) -> str:
    return f"/admin/executions/tenant/{tenant.pk}/change/"


def form(rows: list[dict], initial: int = 0) -> dict:
    data = {
        "grants-TOTAL_FORMS": str(len(rows)),
        "grants-INITIAL_FORMS": str(initial),
        "grants-MIN_NUM_FORMS": "0",
        "grants-MAX_NUM_FORMS": "1000",
    }
    for i, row in enumerate(rows):
        data.update({f"grants-{i}-{key}": value for key, value in row.items()})
    return data


def test_it_does_not_list_the_installations_users_or_groups(owner_client, tenant, strangers):
    html = owner_client.get(page(tenant)).content.decode()
    assert "stranger-danger" not in html
    assert "secret-ops" not in html
    assert 'name="grants-__prefix__-user"' in html and "<select" not in html.split("grants")[1]


def test_it_shows_existing_grantees_by_name(owner_client, tenant, member):
    html = owner_client.get(page(tenant)).content.decode()
    assert 'value="member"' in html


def test_it_grants_to_an_exact_username(owner_client, tenant, strangers):
    user, group = strangers
    rows = [{"user": "stranger-danger", "role": Role.VIEWER}, {"group": "secret-ops"}]
    rows[1]["role"] = Role.OPERATOR
    response = owner_client.post(page(tenant), form(rows))
    assert response.status_code == 302, response.context and response.context["errors"]
    assert TenantGrant.objects.filter(tenant=tenant, user=user, role=Role.VIEWER).exists()
    assert TenantGrant.objects.filter(tenant=tenant, group=group, role=Role.OPERATOR).exists()


@pytest.mark.parametrize("typed", ["stranger", "STRANGER-DANGER", "stranger-danger ", "1"])
def test_it_refuses_a_name_that_is_not_exact(owner_client, tenant, strangers, typed):
    response = owner_client.post(page(tenant), form([{"user": typed, "role": Role.VIEWER}]))
    assert response.status_code == 200
    assert "There is no username with this exact name." in response.content.decode()
    assert not TenantGrant.objects.filter(tenant=tenant, user=strangers[0]).exists()
