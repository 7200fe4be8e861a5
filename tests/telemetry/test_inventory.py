"""The legacy client inventory: named top N, bounded, totals that add up."""

from __future__ import annotations

import pytest

from proxy.telemetry.inventory import OTHER, ClientInventory, is_legacy_client
from proxy.telemetry.record import ExchangeRecord

T0 = 1_800_000_000.0


def record(*, path: str, model: str | None) -> ExchangeRecord:
    r = ExchangeRecord(request_id="r", method="POST", path=path, started=0.0)
    r.model = model
    return r


def test_inventory_names_top_n_and_folds_the_rest_into_other() -> None:
    inventory = ClientInventory(top_n=2)
    for key, count in (("a", 5), ("b", 3), ("c", 1), ("d", 1)):
        for i in range(count):
            inventory.saw("iris", key, "pandas-split", T0 + i)
    rows = inventory.report("iris")
    assert [(r["client"], r["requests"]) for r in rows] == [("a", 5), ("b", 3), (OTHER, 2)]
    assert rows[0]["last_seen"] == T0 + 4
    assert rows[0]["formats"] == {"pandas-split": 5}
    inventory.refresh_top()
    assert (inventory.label("iris", "a"), inventory.label("iris", "c")) == ("a", OTHER)
    assert inventory.label("wine", "a") == OTHER


def test_inventory_is_bounded_and_totals_add_up() -> None:
    inventory = ClientInventory(top_n=2)  # keeps exact counts for 16 keys
    inventory.saw("iris", "heavy", "csv", T0)
    inventory.saw("iris", "heavy", "csv", T0)
    for i in range(100):
        inventory.saw("iris", f"k{i}", "csv", T0 + i)
    assert len(inventory.ranked("iris")) == inventory.capacity
    rows = inventory.report("iris")
    assert rows[0] == {
        "client": "heavy",
        "identity": None,
        "requests": 2,
        "last_seen": T0,
        "formats": {"csv": 2},
    }
    assert sum(r["requests"] for r in rows) == 102
    assert rows[-1]["client"] == OTHER


@pytest.mark.parametrize(
    ("path", "model", "legacy"),
    [
        pytest.param("/model/iris/1/invocations", "iris", True, id="legacy-url"),
        pytest.param("/model/iris/Production/invocations", "iris", True, id="stage"),
        pytest.param("/serving-endpoints/iris/invocations", "iris", False, id="migrated"),
        pytest.param("/model/iris/1/ping", "iris", False, id="ping"),
        pytest.param("/model/nope/1/invocations", None, False, id="unknown-model"),
    ],
)
def test_is_legacy_client(path: str, model: str | None, legacy: bool) -> None:
    assert is_legacy_client(record(path=path, model=model)) is legacy


def test_a_proven_identity_is_named_beside_its_label_also_across_workers() -> None:
    here, there = ClientInventory(top_n=2), ClientInventory(top_n=2)
    here.saw("iris", "f00d", "csv", T0, "svc-reporting")
    there.saw("iris", "f00d", "csv", T0 + 1, "svc-reporting")
    there.saw("iris", "beef", "csv", T0 + 1)
    rows = here.report("iris", [there.export()])
    assert [(r["client"], r["identity"], r["requests"]) for r in rows] == [
        ("f00d", "svc-reporting", 2),
        ("beef", None, 1),
    ]
