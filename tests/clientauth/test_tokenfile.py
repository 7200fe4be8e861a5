"""A tokens file's lines (the file itself, reloaded and remembered, is tested through
`ClientAuth` in test_client_auth)."""

from __future__ import annotations

import pytest

from proxy.clientauth.tokenfile import match_digest, parse_tokens
from tests.clientauth.test_client_auth import GOOD, OTHER, WRONG, sha


def test_a_tokens_file_maps_digests_to_names_and_names_a_bad_line_without_its_text() -> None:
    digests = parse_tokens(f"# clients\n\nsvc-a:{sha(GOOD)}\nsvc-b : {sha(OTHER).upper()}\n", "f")
    assert match_digest(GOOD, digests) == "svc-a"
    assert match_digest(OTHER, digests) == "svc-b"
    assert match_digest(WRONG, digests) is None
    with pytest.raises(ValueError, match="f line 2: the digest") as info:
        parse_tokens(f"svc-a:{sha(GOOD)}\nsvc-b:{WRONG}\n", "f")
    assert WRONG not in str(info.value)
    with pytest.raises(ValueError, match="line 1: expected name:sha256hex"):
        parse_tokens(f"{sha(GOOD)}\n", "f")
    with pytest.raises(ValueError, match="line 2: the digest is listed twice"):
        parse_tokens(f"a:{sha(GOOD)}\nb:{sha(GOOD)}\n", "f")
