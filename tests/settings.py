"""Settings for the test suite and the servers and runners it starts: the project's, with a
fast password hasher.

PBKDF2 runs about a million iterations by design (0.3 s per password on an idle core, seconds
on a busy one) and the suite creates personas in most tests. MD5 is for tests only: the test
database holds nothing but throwaway passwords.
"""

from project.settings import *  # noqa: F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# A busy 2-core machine running both passes side by side can stall an event loop past the
# 1 s production bound; a ring skipped then makes a stream wait for its periodic re-check,
# which the tests' frame timeouts may not cover. Redis-outage tests still see the skip (a
# refused connection fails at once, not after the timeout).
CHANNEL_LAYER_SEND_TIMEOUT_SECONDS = 5
# And one slow ring is not followed by two seconds of skipped ones: a ring that timed out in a
# test's set-up (an access ring, with Redis starved by other work) skipped the test's own
# output rings. The outage test sets the production cooldown itself.
CHANNEL_LAYER_SEND_COOLDOWN_SECONDS = 0
