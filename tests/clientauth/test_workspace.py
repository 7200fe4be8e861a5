"""Reading the workspace's SCIM `Me` answer (the look-ups themselves run against a
loopback SCIM app in test_client_auth)."""

from __future__ import annotations

from proxy.clientauth.identity import Identity
from proxy.clientauth.workspace import identity_of_me


def test_scim_me_names_a_user_or_a_service_principal_with_its_groups() -> None:
    user = {"userName": "ana@example.com", "groups": [{"display": "scorers", "value": "17"}]}
    assert identity_of_me(user) == Identity("ana@example.com", ("scorers", "17"))
    principal = {"applicationId": "6f1c-app", "displayName": "etl-principal"}
    assert identity_of_me(principal) == Identity("6f1c-app")
    assert identity_of_me({"displayName": "etl-principal"}) == Identity("etl-principal")
    assert identity_of_me({"groups": []}) is None
    assert identity_of_me([]) is None
