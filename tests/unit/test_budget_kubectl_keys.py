"""`kubectl modelfleet keys`: rows merged over routers' /v1/stats, and the table."""

from __future__ import annotations

from typing import Any

from modelfleet.kubectl.keys import format_keys, merge_clients
from modelfleet.kubectl.main import build_parser

BUDGET = {"usd": 5.0, "period": "day", "label": "2026-12-01", "resets": "2026-12-02T00:00:00Z"}


def stats(*clients: dict[str, Any]) -> dict[str, Any]:
    return {"window_seconds": 60, "pools": [], "clients": list(clients)}


def test_counts_sum_over_routers_budget_figures_are_the_stores() -> None:
    a = stats(
        {"namespace": "ns", "key": "team-a", "requests": 3, "rejected": 1, "images": 4,
         "cost_usd": 0.12, "budget": {**BUDGET, "spent_usd": 0.3, "remaining_usd": 4.7}},
        {"namespace": "ns", "key": "team-b", "requests": 1, "rejected": 0, "images": 1,
         "cost_usd": 0.0, "requests_per_minute": 60},
    )  # fmt: skip
    b = stats(
        {"namespace": "ns", "key": "team-a", "requests": 2, "rejected": 0, "images": 2,
         "cost_usd": 0.08, "budget": {**BUDGET, "spent_usd": 0.3, "remaining_usd": 4.7}},
    )  # fmt: skip
    rows = merge_clients([a, b, {"pools": []}])
    assert [(r["key"], r["requests"], r["rejected"], r["images"]) for r in rows] == [
        ("team-a", 5, 1, 6),
        ("team-b", 1, 0, 1),
    ]
    assert abs(rows[0]["cost_usd"] - 0.2) < 1e-12
    assert rows[0]["budget"]["spent_usd"] == 0.3  # one store's figure, not summed
    text = format_keys(rows)
    header, first, second = text.splitlines()
    assert header.split()[:5] == ["NAMESPACE", "KEY", "REQUESTS", "REJECTED", "IMAGES"]
    assert first.split() == [
        "ns", "team-a", "5", "1", "6", "0.2000", "-", "5.0000/day", "0.3000", "4.7000",
        "2026-12-02T00:00:00Z",
    ]  # fmt: skip
    assert second.split()[6:] == ["60", "-", "-", "-", "-"]


def test_a_budget_row_without_figures_is_kept_until_one_has_them() -> None:
    no_figures = stats({"namespace": "ns", "key": "k", "requests": 1, "budget": BUDGET})
    figures = stats(
        {"namespace": "ns", "key": "k", "requests": 1, "budget": {**BUDGET, "spent_usd": 1.0}}
    )
    (row,) = merge_clients([figures, no_figures])
    assert row["budget"]["spent_usd"] == 1.0


def test_no_keys_and_the_verb_parses() -> None:
    assert "No client keys" in format_keys([])
    args = build_parser().parse_args(["keys", "--router-url", "http://a", "--router-url", "b"])
    assert args.router_url == ["http://a", "b"] and args.output == "text"
