"""Run parameters checked against an action's schema (API, forms, CLI and workflows)."""

import pytest

from executions.parameters import (
    ParameterError,
    check_schema,
    distinct_hosts,
    validate_parameters,
)

SCHEMA = {
    "cmd": {"type": "string", "required": True},
    "count": {"type": "integer", "default": 10},
    "delay": {"type": "number", "default": 0.5},
    "verbose": {"type": "boolean", "default": False},
    "hosts": {"type": "array"},
    "env": {"type": "object"},
    "colour": {"type": "string", "enum": ["red", "blue"]},
    "password": {"type": "string", "secret": True},
    "pin": {"type": "integer", "secret": True},
    "mode": {"type": "string", "default": "safe", "immutable": True},
}


def _errors(given, schema=SCHEMA) -> list[dict]:
    with pytest.raises(ParameterError) as caught:
        validate_parameters(schema, given)
    return caught.value.errors


def test_it_fills_in_defaults():
    assert validate_parameters(SCHEMA, {"cmd": "ls"}) == {
        "cmd": "ls",
        "count": 10,
        "delay": 0.5,
        "verbose": False,
        "mode": "safe",
    }


def test_it_requires_required_parameters():
    assert _errors({}) == [
        {"location": "body.parameters.cmd", "message": "is required", "value": None}
    ]
    assert _errors({"cmd": None})[0]["message"] == "is required"


def test_it_accepts_none_for_no_parameters():
    assert validate_parameters({"n": {"type": "integer", "default": 1}}, None) == {"n": 1}


def test_it_refuses_parameters_that_are_not_an_object():
    assert _errors(["cmd"]) == [
        {"location": "body.parameters", "message": "must be an object", "value": ["cmd"]}
    ]


def test_it_refuses_unknown_parameters():
    errors = _errors({"cmd": "ls", "colr": "red"})

    assert errors == [
        {
            "location": "body.parameters.colr",
            "message": "is not a parameter of this action",
            "value": "red",
        }
    ]


def test_it_reports_every_error_at_once():
    errors = _errors({"count": "many", "colour": "green", "extra": 1})

    assert {e["location"] for e in errors} == {
        "body.parameters.extra",
        "body.parameters.cmd",
        "body.parameters.count",
        "body.parameters.colour",
    }
    assert "body.parameters.cmd: is required" in str(ParameterError(errors))


@pytest.mark.parametrize(
    "given, expected",
    [
        ({"count": "3"}, {"count": 3}),
        ({"count": " 3 "}, {"count": 3}),
        ({"count": 3.0}, {"count": 3}),
        ({"delay": "0.25"}, {"delay": 0.25}),
        ({"delay": 2}, {"delay": 2}),
        ({"verbose": "yes"}, {"verbose": True}),
        ({"verbose": "On"}, {"verbose": True}),
        ({"verbose": "false"}, {"verbose": False}),
        ({"verbose": "0"}, {"verbose": False}),
        ({"hosts": "a, b,,c"}, {"hosts": ["a", "b", "c"]}),
        ({"hosts": '["a", "b"]'}, {"hosts": ["a", "b"]}),
        ({"hosts": ["x"]}, {"hosts": ["x"]}),
        ({"env": '{"A": "1"}'}, {"env": {"A": "1"}}),
        ({"cmd": 5}, {"cmd": "5"}),
        # An empty form field means "not given" for every type but text.
        ({"count": ""}, {"count": 10}),
        ({"verbose": "  "}, {"verbose": False}),
    ],
)
def test_it_coerces_text_from_forms_and_the_cli(given, expected):
    cleaned = validate_parameters(SCHEMA, {"cmd": "ls", **given})

    assert {k: cleaned[k] for k in expected} == expected
    for key, value in expected.items():
        assert type(cleaned[key]) is type(value)


def test_it_keeps_empty_text_for_a_string():
    assert validate_parameters(SCHEMA, {"cmd": ""})["cmd"] == ""


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("count", "many", "must be of type integer"),
        ("count", "1.5", "must be of type integer"),
        ("count", 1.5, "must be of type integer"),
        ("count", True, "must be of type integer"),
        ("delay", "soon", "must be of type number"),
        ("delay", "nan", "must be a finite number"),
        ("delay", "inf", "must be a finite number"),
        ("delay", float("inf"), "must be a finite number"),
        ("verbose", "maybe", "must be of type boolean"),
        ("verbose", 1, "must be of type boolean"),
        ("hosts", {"a": 1}, "must be of type array"),
        ("hosts", "[not json", "must be of type array"),
        ("env", "A=1", "must be of type object"),
        ("env", "[1]", "must be of type object"),
        ("cmd", ["ls"], "must be of type string"),
        ("cmd", True, "must be of type string"),
        ("colour", "green", "must be one of red, blue"),
        ("mode", "reckless", "is immutable: only its default is allowed"),
    ],
)
def test_it_refuses_values_of_the_wrong_type(name, value, message):
    given = {"cmd": "ls", name: value} if name != "cmd" else {name: value}

    assert _errors(given) == [
        {"location": f"body.parameters.{name}", "message": message, "value": value}
    ]


def test_it_accepts_an_immutable_parameter_at_its_default():
    # A re-run sends back every parameter the first run had, defaults included.
    assert validate_parameters(SCHEMA, {"cmd": "ls", "mode": "safe"})["mode"] == "safe"


def test_it_checks_enum_after_coercion():
    schema = {"level": {"type": "integer", "enum": [1, 2]}}

    assert validate_parameters(schema, {"level": "2"}) == {"level": 2}
    assert _errors({"level": "3"}, schema)[0]["message"] == "must be one of 1, 2"


def test_it_masks_a_secret_value_in_its_error():
    errors = _errors({"cmd": "ls", "pin": "hunter2", "password": ["hunter3"]})

    assert errors == [
        {
            "location": "body.parameters.password",
            "message": "must be of type string",
            "value": "********",
        },
        {
            "location": "body.parameters.pin",
            "message": "must be of type integer",
            "value": "********",
        },
    ]
    assert "hunter" not in str(ParameterError(errors))


def test_it_passes_the_shipped_schemas(actions):
    for action in actions.values():
        assert check_schema(action.parameters) == [], action.ref


def test_it_accepts_a_well_formed_schema():
    assert check_schema(SCHEMA) == []
    assert check_schema({}) == []


def test_it_names_the_field_of_each_schema_problem():
    problems = check_schema(
        {
            "n": {"type": "integer", "default": 1.5, "required": "no"},
            "s": {"type": "text"},
            "1x": {},
        }
    )

    assert problems == [
        "parameters.n.required: must be true or false",
        "parameters.n.default: 1.5 is not of type integer",
        "parameters.s.type: 'text' is not one of string, integer, number, boolean, array, object",
        "parameters.1x: the name must be letters, digits and '_'",
    ]


def test_a_remote_runs_hosts_are_counted_as_the_runner_runs_them():
    hosts = {"hosts": [" web1 ", "", "web2", "web1", "  ", 7]}
    assert distinct_hosts(hosts) == ["web1", "web2"]
    assert distinct_hosts({"hosts": "web1"}) == [] and distinct_hosts({}) == []
