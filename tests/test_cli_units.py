"""The CLI's pure parts, without a server: parameters by schema, action help, tables and
attribute paths, error lines and the problem+json exception types."""

import pytest

from tailgate_client import errors, formatting
from tailgate_client.cli import explain
from tailgate_client.parameters import (
    ParameterSyntaxError,
    describe_parameters,
    parse_parameters,
)

SCHEMA = {
    "cmd": {"type": "string"},
    "count": {"type": "integer"},
    "hosts": {"type": "array"},
    "env": {"type": "object"},
}


def test_it_keeps_scalars_as_typed_text_for_the_server_to_convert():
    assert parse_parameters(["cmd=42", "count=3", "ok=true"], SCHEMA) == {
        "cmd": "42",
        "count": "3",
        "ok": "true",
    }
    assert parse_parameters(["cmd=a=b", "cmd=last"], SCHEMA) == {"cmd": "last"}
    assert parse_parameters(["cmd=echo a=b"], SCHEMA) == {"cmd": "echo a=b"}
    assert parse_parameters(["cmd="], SCHEMA) == {"cmd": ""}


def test_it_parses_json_only_for_arrays_and_objects():
    assert parse_parameters(['hosts=["a", "b"]', 'env={"A": "1"}'], SCHEMA) == {
        "hosts": ["a", "b"],
        "env": {"A": "1"},
    }
    assert parse_parameters(["hosts=a,b", "env={broken"], SCHEMA) == {
        "hosts": "a,b",  # the server splits it on commas
        "env": "{broken",  # the server says what is wrong with it
    }
    assert parse_parameters(['cmd=["x"]'], SCHEMA) == {"cmd": '["x"]'}
    assert parse_parameters(['tags=["x"]']) == {"tags": '["x"]'}  # no schema: text


@pytest.mark.parametrize("word", ["count", "=3", ""])
def test_it_refuses_a_word_that_is_not_name_value(word):
    with pytest.raises(ParameterSyntaxError, match="must look like name=value"):
        parse_parameters([word], SCHEMA)


def test_it_describes_an_actions_parameters_like_st2_run_help():
    action = {
        "ref": "p.a",
        "description": "Does things.",
        "parameters": {
            "cmd": {"type": "string", "required": True, "description": "What to run."},
            "mode": {"type": "string", "default": "fast", "enum": ["fast", "slow"]},
            "token": {"type": "string", "secret": True, "default": "********"},
        },
    }
    assert describe_parameters(action) == (
        "p.a: Does things.\n"
        "\nRequired parameters:\n  cmd (string)\n      What to run.\n"
        '\nOptional parameters:\n  mode (string; default: "fast"; one of: "fast", "slow")\n'
        '  token (string; default: "********"; secret)\n'
    )
    bare = describe_parameters({"ref": "p.b", "parameters": {}})
    assert bare == "p.b: (no description)\n\nThis action takes no parameters.\n"


ROWS = [
    {"id": "A1", "status": "ok", "parameters": {"count": 2, "hosts": ["h1", "h2"]}},
    {"id": "B2", "status": "failed", "parameters": {}},
]


def test_it_looks_up_and_picks_dotted_paths():
    assert formatting.lookup(ROWS[0], "parameters.hosts.1") == "h2"
    assert formatting.lookup(ROWS[1], "parameters.count") is formatting.MISSING
    assert formatting.pick(ROWS[0], ["id", "parameters.count"]) == {
        "id": "A1",
        "parameters": {"count": 2},
    }
    assert formatting.pick(ROWS[1], ["parameters.count"]) == {}
    assert formatting.pick(ROWS[0], ["all"]) == ROWS[0]
    assert formatting.columns_for(ROWS, ["all"], ["id"]) == ["id", "status", "parameters"]


def test_it_draws_tables_with_given_widths_wrapping_cells():
    table = formatting.table(ROWS, ["id", "parameters.hosts"], widths=[4, 5])
    assert table == ('id    parameters.hosts\n----  -----\nA1    ["h1"\n      ,\n      "h2"]\nB2\n')
    assert formatting.table([], ["id"]) == "id\n--\n"


def test_it_shrinks_the_widest_column_to_fit_the_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "30")
    rows = [{"ref": "a.b", "description": "word " * 20}]
    lines = formatting.table(rows, ["ref", "description"]).splitlines()
    assert max(len(line) for line in lines) <= 30
    assert len(lines) > 3  # the description wrapped
    monkeypatch.setenv("COLUMNS", "5")  # too narrow: columns stop at their minimum
    assert formatting.table(rows, ["ref", "description"]).splitlines()[0] == "ref  description"


def test_it_shows_details_skipping_empty_fields_only_by_default():
    execution = {"id": "A1", "error": "", "parameters": {"count": 2}, "exit_code": 0}
    attrs = ["id", "error", "parameters", "exit_code"]
    assert formatting.details(execution, attrs, skip_empty=True) == (
        "id: A1\nparameters:\n  count: 2\nexit_code: 0\n"
    )
    assert formatting.details(execution, ["error"]) == "error: \n"


def test_it_maps_statuses_to_typed_errors_with_the_problem_fields():
    problem = {
        "type": "about:blank",
        "title": "Unprocessable Content",
        "status": 422,
        "detail": "The request has invalid values; see errors.",
        "instance": "/api/v1/executions/",
        "errors": [{"location": "body.parameters.count", "message": "bad", "value": "x"}],
    }
    error = errors.api_error(422, problem, {})
    assert isinstance(error, errors.ValidationFailed)
    assert (error.title, error.instance, error.errors) == (
        "Unprocessable Content",
        "/api/v1/executions/",
        problem["errors"],
    )
    assert str(error) == "body.parameters.count: bad (got 'x')"
    assert type(errors.api_error(503, {}, {})) is errors.ServerError
    assert type(errors.api_error(418, {}, {})) is errors.ApiError
    busy = errors.api_error(429, {"detail": "Too many streams."}, {"retry-after": "7"})
    assert busy.retry_after == 7
    assert explain(busy, None) == "Too many streams. Try again in 7 s."
    assert explain(errors.api_error(500, {"detail": "boom"}, {}), None) == (
        "the server failed (500): boom"
    )
