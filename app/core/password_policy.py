"""Which passwords Inkwell accepts: 8-128 characters, and none of the most common ones.

The list is the "passwords" frequency list that the zxcvbn package ships (the 30,000 most
common passwords of public breach corpora, lower-cased). It is read from the package, never
from a network service, once per process; a lookup is one set membership test.
"""

from __future__ import annotations

from functools import cache

MIN_LENGTH = 8
MAX_LENGTH = 128

TOO_COMMON = (
    "this password is one of the most common ones and would be guessed quickly; "
    "choose a longer, less predictable one (a few unrelated words work well)"
)


class WeakPassword(ValueError):
    """A password the policy refuses; the message says why and what to do instead."""


@cache
def common_passwords() -> frozenset[str]:
    from zxcvbn.frequency_lists import FREQUENCY_LISTS

    return frozenset(FREQUENCY_LISTS["passwords"])


def is_common(password: str) -> bool:
    """Case-insensitive, like the list: `Password` is as guessable as `password`."""
    return password.lower() in common_passwords()


def check(password: str) -> str:
    """The password if the policy accepts it; `WeakPassword` (a ValueError) otherwise."""
    if len(password) < MIN_LENGTH:
        raise WeakPassword(f"a password needs at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise WeakPassword(f"a password has at most {MAX_LENGTH} characters")
    if is_common(password):
        raise WeakPassword(TOO_COMMON)
    return password
