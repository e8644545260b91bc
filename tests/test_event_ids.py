"""Event-id tokens: a permutation of the 52-bit id space that keeps 0 and needs the key."""

from hypothesis import given
from hypothesis import strategies as st

from streaming import event_ids

ids = st.integers(1, event_ids.LIMIT - 1)


@given(ids)
def test_it_decodes_what_it_encodes(event_id):
    token = event_ids.encode(event_id)
    assert 0 < token < event_ids.LIMIT
    assert event_ids.decode(token) == event_id


@given(st.integers(1, event_ids.LIMIT - 1))
def test_every_token_stands_for_exactly_one_id(token):
    assert event_ids.encode(event_ids.decode(token)) == token


def test_zero_means_before_everything_and_other_keys_give_other_tokens(settings):
    assert (event_ids.encode(0), event_ids.decode(0)) == (0, 0)
    assert event_ids.decode(2**63 - 1) is None
    before = [event_ids.encode(n) for n in range(1, 50)]
    settings.SECRET_KEY = "another installation's key"
    assert [event_ids.encode(n) for n in range(1, 50)] != before
