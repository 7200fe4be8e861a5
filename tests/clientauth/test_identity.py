"""What both ways of proving a client read: the bearer token, and `client_auth.allow`."""

from __future__ import annotations

from proxy.clientauth.identity import Identity, allowed, authorization, bearer_token
from proxy.config.identity import AllowConfig


def test_bearer_token_reads_only_a_bearer_authorization() -> None:
    assert bearer_token(b"Bearer abc") == "abc"
    assert bearer_token(b"bearer  abc ") == "abc"
    assert bearer_token(b"Basic abc") is None
    assert bearer_token(b"Bearer ") is None
    assert bearer_token(None) is None
    assert authorization([(b"x-other", b"Bearer abc")]) is None
    assert authorization([(b"authorization", b"Bearer a"), (b"authorization", b"b")]) == (
        b"Bearer a"
    )


def test_allow_lets_in_listed_users_or_members_of_listed_groups() -> None:
    ana = Identity("ana", ("scorers",))
    assert allowed(ana, AllowConfig())
    assert allowed(ana, AllowConfig(users=("ana",)))
    assert allowed(ana, AllowConfig(groups=("scorers",)))
    assert not allowed(ana, AllowConfig(users=("bob",), groups=("admins",)))
