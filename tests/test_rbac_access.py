"""The one predicate: who sees which execution, who may operate, run and grant."""

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from guardian.shortcuts import assign_perm, remove_perm

from executions.models import Execution, Tenant
from executions.models.executions import new_execution_id
from rbac import access
from rbac.access import (
    NotVisible,
    access_execution,
    can_grant,
    can_operate,
    can_run,
    still_allowed,
    stream_scope,
    visible_executions,
)
from rbac.models import ApiKey, ExecutionUserObjectPermission, Role, TenantGrant

pytestmark = pytest.mark.django_db

User = get_user_model()


def _execution(tenant, parent=None, **extra) -> Execution:
    return Execution.objects.create(
        action_ref="examples.print_lines",
        runner_type="local-shell-cmd",
        tenant=tenant,
        parent=parent,
        **extra,
    )


def _ids(queryset) -> set[str]:
    return set(queryset.values_list("id", flat=True))


@pytest.fixture
def ours(tenant):
    return _execution(tenant)


@pytest.fixture
def theirs(other_tenant):
    return _execution(other_tenant)


@pytest.fixture
def grantee(db):
    return User.objects.create_user("grantee", password="pw-grantee")


@pytest.fixture
def team(tenant):
    group = Group.objects.create(name="team")
    TenantGrant.objects.create(group=group, tenant=tenant, role=Role.OPERATOR)
    return group


@pytest.fixture
def teammate(team):
    user = User.objects.create_user("teammate", password="pw-teammate")
    user.groups.add(team)
    return user


def test_it_shows_superuser_everything(superuser, ours, theirs):
    assert _ids(visible_executions(superuser)) == {ours.id, theirs.id}


def test_it_shows_a_viewer_only_their_tenant(member, ours, theirs):
    assert _ids(visible_executions(member)) == {ours.id}


def test_it_answers_a_hidden_execution_exactly_like_a_missing_one(member, theirs):
    with pytest.raises(NotVisible) as hidden:
        access_execution(member, theirs.id)
    with pytest.raises(NotVisible) as missing:
        access_execution(member, new_execution_id())
    assert type(hidden.value) is type(missing.value)


def test_it_resolves_last_to_the_newest_visible_execution(member, tenant, other_tenant):
    older = _execution(tenant)
    _execution(other_tenant)  # newer, but not visible to member
    assert access_execution(member, "last").id == older.id


def test_it_answers_last_with_not_visible_when_nothing_is_visible(outsider, ours):
    with pytest.raises(NotVisible):
        access_execution(outsider, "last")


def test_it_shows_nothing_to_anonymous_or_inactive_users(member, ours):
    from django.contrib.auth.models import AnonymousUser

    assert not visible_executions(AnonymousUser()).exists()
    member.is_active = False
    member.save()
    assert not visible_executions(member).exists()


def test_it_gives_an_object_grantee_that_execution_only(grantee, ours, tenant):
    _execution(tenant)
    assign_perm("executions.view_execution", grantee, ours)
    assert ExecutionUserObjectPermission.objects.filter(user=grantee).count() == 1
    assert _ids(visible_executions(grantee)) == {ours.id}
    remove_perm("executions.view_execution", grantee, ours)
    assert not visible_executions(grantee).exists()


def test_it_lets_every_descendant_of_a_workflow_inherit_its_grant(grantee, tenant):
    workflow = _execution(tenant)
    child = _execution(tenant, parent=workflow)
    grandchild = _execution(tenant, parent=child)
    great_grandchild = _execution(tenant, parent=grandchild)
    sibling_workflow = _execution(tenant)
    _execution(tenant, parent=sibling_workflow)
    assign_perm("executions.view_execution", grantee, workflow)

    expected = {workflow.id, child.id, grandchild.id, great_grandchild.id}
    assert _ids(visible_executions(grantee)) == expected
    assert access_execution(grantee, great_grandchild.id) == great_grandchild


def test_it_gives_a_grant_on_a_child_no_sight_of_its_parent(grantee, tenant):
    workflow = _execution(tenant)
    child = _execution(tenant, parent=workflow)
    assign_perm("executions.view_execution", grantee, child)
    assert _ids(visible_executions(grantee)) == {child.id}


def test_it_gives_group_members_the_groups_grants(teammate, team, ours, theirs):
    assert _ids(visible_executions(teammate)) == {ours.id}
    assign_perm("executions.view_execution", team, theirs)
    assert _ids(visible_executions(teammate)) == {ours.id, theirs.id}
    assert can_operate(teammate, ours)
    assert not can_operate(teammate, theirs)


def test_it_gives_a_star_grant_every_tenant(grantee, ours, theirs):
    TenantGrant.objects.create(user=grantee, tenant=None, role=Role.VIEWER)
    later = _execution(Tenant.objects.create(slug="later", name="Later"))
    assert _ids(visible_executions(grantee)) == {ours.id, theirs.id, later.id}


def test_it_lets_only_operators_and_admins_operate(owner, member, outsider, superuser, ours):
    assert can_operate(owner, ours)
    assert can_operate(superuser, ours)
    assert not can_operate(member, ours)
    assert not can_operate(outsider, ours)


def test_it_lets_viewers_run_only_actions_they_hold_execute_action_on(
    actions, member, owner, outsider, tenant
):
    action = actions["examples.print_lines"]
    assert can_run(owner, action, tenant)
    assert not can_run(member, action, tenant)
    assign_perm("executions.execute_action", member, action)
    assert can_run(member, action, tenant)
    assert not can_run(member, actions["examples.fail"], tenant)
    # execute_action never opens a tenant the user cannot see.
    assign_perm("executions.execute_action", outsider, action)
    assert not can_run(outsider, action, tenant)


def test_it_lets_only_admins_grant(owner, member, superuser, tenant, other_tenant):
    assert can_grant(owner, tenant)
    assert not can_grant(owner, other_tenant)
    assert not can_grant(owner, None)
    assert not can_grant(member, tenant)
    assert can_grant(superuser, None)
    assert set(access.granting_tenants(owner)) == {tenant}


def _list_queries(user, path: str) -> int:
    client = Client()
    client.force_login(user)
    with CaptureQueriesContext(connection) as queries:
        assert client.get(path).status_code == 200
    return len(queries)


def test_it_filters_10000_executions_in_one_query(
    django_assert_num_queries, tenant, other_tenant, member, grantee, teammate
):
    workflow = _execution(tenant)
    _execution(tenant, parent=workflow)
    assign_perm("executions.view_execution", grantee, workflow)
    lists = ("/api/v1/executions/", "/executions/")
    few = {
        (user.pk, path): _list_queries(user, path) for user in (member, grantee) for path in lists
    }
    rows = [
        Execution(
            id=new_execution_id(),
            action_ref="examples.print_lines",
            runner_type="local-shell-cmd",
            tenant=tenant if i % 2 else other_tenant,
        )
        for i in range(10_000)
    ]
    Execution.objects.bulk_create(rows, batch_size=1000)
    granted = rows[0]  # other tenant's
    assign_perm("executions.view_execution", grantee, granted)
    children = [
        Execution(
            id=new_execution_id(),
            action_ref="examples.print_lines",
            runner_type="local-shell-cmd",
            tenant=other_tenant,
            parent=granted,
        )
        for _ in range(3)
    ]
    Execution.objects.bulk_create(children)

    # Each also sees the workflow and its child from before.
    for user, expected in ((member, 5002), (teammate, 5002), (grantee, 6)):
        with django_assert_num_queries(1):
            page = list(visible_executions(user).order_by("-created_at")[:50])
        assert len(page) == min(50, expected)
        with django_assert_num_queries(1):
            assert visible_executions(user).count() == expected
    # The REST list and the web page cost as many queries over 10,000 rows as over 2.
    many = {key: _list_queries(User.objects.get(pk=key[0]), key[1]) for key in few}
    assert many == few


def test_it_rechecks_an_open_stream_in_one_query(django_assert_num_queries, member, ours):
    key, _ = ApiKey.issue(member)
    with django_assert_num_queries(1):
        assert still_allowed(member, execution_id=ours.id, api_key=key)
    with django_assert_num_queries(1):
        assert still_allowed(member)


def test_it_stops_allowing_once_access_goes(member, ours):
    grant = TenantGrant.objects.get(user=member)
    key, _ = ApiKey.issue(member)
    assert still_allowed(member, execution_id=ours.id, api_key=key)

    key.revoke()
    assert not still_allowed(member, execution_id=ours.id, api_key=key)
    assert still_allowed(member, execution_id=ours.id)

    grant.delete()
    assert not still_allowed(member, execution_id=ours.id)
    assert still_allowed(member)  # still a valid user, just sees nothing

    member.is_active = False
    member.save()
    assert not still_allowed(member)


def test_it_stops_allowing_an_expired_key(member, ours):
    key, _ = ApiKey.issue(member, expires_in=timedelta(hours=1))
    assert still_allowed(member, execution_id=ours.id, api_key=key)
    ApiKey.objects.filter(pk=key.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert not still_allowed(member, execution_id=ours.id, api_key=key)


def test_it_stops_allowing_a_former_superuser(superuser, theirs):
    assert still_allowed(superuser, execution_id=theirs.id)
    User.objects.filter(pk=superuser.pk).update(is_superuser=False)
    assert not still_allowed(superuser, execution_id=theirs.id)


def test_it_scopes_a_stream_to_grants_and_learns_new_children(grantee, tenant, other_tenant):
    workflow = _execution(tenant)
    assign_perm("executions.view_execution", grantee, workflow)
    TenantGrant.objects.create(user=grantee, tenant=other_tenant, role=Role.VIEWER)

    scope = stream_scope(grantee)
    assert scope is not None
    assert scope.allows(other_tenant.pk, "anything")
    assert scope.allows(tenant.pk, workflow.id)
    assert not scope.allows(tenant.pk, "someone-elses")
    # A child started after the snapshot is announced with its parent, then followed.
    assert scope.allows(tenant.pk, "new-child", parent_id=workflow.id)
    assert scope.allows(tenant.pk, "new-child")
    assert scope.followed_tenant_ids() == {tenant.pk, other_tenant.pk}


def test_it_gives_no_stream_scope_to_a_deactivated_user_or_revoked_key(member, superuser):
    key, _ = ApiKey.issue(member)
    assert stream_scope(member, api_key=key) is not None
    key.revoke()
    assert stream_scope(member, api_key=key) is None
    assert stream_scope(superuser).all_tenants
    User.objects.filter(pk=superuser.pk).update(is_active=False)
    assert stream_scope(superuser) is None


def test_it_lists_the_tenants_a_user_sees_anything_in(
    django_assert_num_queries, member, grantee, outsider, superuser, tenant, other_tenant, theirs
):
    assign_perm("executions.view_execution", grantee, theirs)
    with django_assert_num_queries(1):
        assert set(access.visible_tenants(member)) == {tenant}
    assert set(access.visible_tenants(grantee)) == {other_tenant}
    assert set(access.visible_tenants(outsider)) == {other_tenant}
    assert set(access.visible_tenants(superuser)) == {tenant, other_tenant}


def test_it_reads_the_users_status_and_key_fresh_not_from_a_stale_object(member, superuser, ours):
    """A WebSocket holds its user object for hours: what it may open must still be current."""
    stale_member = User.objects.get(pk=member.pk)
    key, _ = ApiKey.issue(member)
    access.bind_api_key(stale_member, key)
    assert _ids(visible_executions(stale_member)) == {ours.id}
    key.revoke()
    assert not visible_executions(stale_member).exists()
    with pytest.raises(NotVisible):
        access_execution(stale_member, ours.id)

    stale_superuser = User.objects.get(pk=superuser.pk)
    User.objects.filter(pk=superuser.pk).update(is_active=False)
    assert not visible_executions(stale_superuser).exists()
    User.objects.filter(pk=superuser.pk).update(is_active=True, is_superuser=False)
    assert not visible_executions(stale_superuser).exists()  # no grants without superuser


# --- granting in the admin ------------------------------------------------------------------


def _inline_post(prefix: str, rows: list[dict], **fields) -> dict:
    data = {
        f"{prefix}-TOTAL_FORMS": str(len(rows)),
        f"{prefix}-INITIAL_FORMS": "0",
        f"{prefix}-MIN_NUM_FORMS": "0",
        f"{prefix}-MAX_NUM_FORMS": "1000",
        **fields,
    }
    for i, row in enumerate(rows):
        data.update({f"{prefix}-{i}-{key}": value for key, value in row.items()})
    return data


def _admin(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_it_grants_a_tenant_on_the_user_page(superuser, grantee, tenant, ours):
    page = f"/admin/auth/user/{grantee.pk}/change/"
    assert "tenant grant" in _admin(superuser).get(page).content.decode()
    form = {
        "username": "grantee",
        "date_joined_0": "2026-01-01",
        "date_joined_1": "00:00:00",
        "is_active": "on",
    }
    data = _inline_post("tenant_grants", [{"tenant": tenant.pk, "role": "viewer"}], **form)
    response = _admin(superuser).post(page, data)
    assert response.status_code == 302, response.context["errors"] if response.context else ""
    assert _ids(visible_executions(grantee)) == {ours.id}


def test_it_grants_a_tenant_to_a_group_on_the_group_page(superuser, team, other_tenant, theirs):
    page = f"/admin/auth/group/{team.pk}/change/"
    rows = [{"tenant": other_tenant.pk, "role": "viewer"}]
    response = _admin(superuser).post(page, _inline_post("tenant_grants", rows, name="team"))
    assert response.status_code == 302
    assert TenantGrant.objects.filter(group=team, tenant=other_tenant).exists()


def test_it_lets_a_tenant_admin_grant_on_its_tenant_only(
    owner, grantee, tenant, other_tenant, ours
):
    client = _admin(owner)
    page = f"/admin/executions/tenant/{tenant.pk}/change/"
    rows = [{"user": grantee.username, "role": "viewer"}]  # typed by exact name
    response = client.post(page, _inline_post("grants", rows, slug="renamed", name="Renamed"))
    assert response.status_code == 302
    assert _ids(visible_executions(grantee)) == {ours.id}
    assert Tenant.objects.get(pk=tenant.pk).slug == "default"  # its own fields stay read-only
    other = f"/admin/executions/tenant/{other_tenant.pk}/change/"
    assert client.get(other).status_code == 302  # like a missing one
    assert client.post(other, _inline_post("grants", rows)).status_code == 302
    assert not TenantGrant.objects.filter(tenant=other_tenant, user=grantee).exists()
    listing = client.get("/admin/executions/tenant/").content.decode()
    assert "default" in listing and f"/executions/tenant/{other_tenant.pk}/" not in listing


def test_it_lets_a_tenant_admin_give_view_access_to_one_execution(owner, grantee, ours, theirs):
    client = _admin(owner)
    manage = f"/admin/executions/execution/{ours.id}/permissions/user-manage/{grantee.pk}/"
    page = client.get(manage)
    assert page.status_code == 200
    assert [c[0] for c in page.context["form"].fields["permissions"].choices] == ["view_execution"]
    assert client.post(manage, {"permissions": ["view_execution"]}).status_code == 302
    assert _ids(visible_executions(grantee)) == {ours.id}
    hidden = f"/admin/executions/execution/{theirs.id}/permissions/user-manage/{grantee.pk}/"
    assert client.post(hidden, {"permissions": ["view_execution"]}).status_code == 403
    assert _ids(visible_executions(grantee)) == {ours.id}


def test_it_shows_the_permissions_link_only_to_who_may_grant(owner, member, ours):
    member.is_staff = True
    member.save()
    change = f"/admin/executions/execution/{ours.id}/change/"
    assert "Object permissions" in _admin(owner).get(change).content.decode()
    viewer_page = _admin(member).get(change)
    assert viewer_page.status_code == 200
    assert "Object permissions" not in viewer_page.content.decode()
