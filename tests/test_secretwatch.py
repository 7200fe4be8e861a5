"""The suite's own watch for secrets in log lines must be able to see one."""

from __future__ import annotations

import logging

from tests.secretwatch import SecretWatch, found_in, secret

PLANTED = secret("planted-secret-for-the-watch-0001")


def test_the_watch_sees_a_secret_in_a_message_or_a_traceback_but_not_the_clients_lines() -> None:
    watch = SecretWatch()
    logger = logging.getLogger("serving_proxy.test_secrets")
    logger.addHandler(watch)
    logger.propagate = False
    try:
        logger.warning("nothing here")
        logger.warning("token %s", PLANTED)
        try:
            raise ValueError(PLANTED)
        except ValueError:
            logger.exception("failed")
        # A test client's own request line (a token sent in a query string on purpose).
        watch.handle(logging.LogRecord("httpx", logging.INFO, __file__, 1, PLANTED, None, None))
    finally:
        logger.removeHandler(watch)
        logger.propagate = True
    assert watch.leaks == [
        ("serving_proxy.test_secrets", ["plan…"]),
        ("serving_proxy.test_secrets", ["plan…"]),
    ]
    assert found_in(f"x{PLANTED}x") == ["plan…"]
