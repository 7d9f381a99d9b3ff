"""bench.audit's own arithmetic, on made-up ledgers: the contract's formula from the YAML text, and the
false-refusal decision from the journal (a refusal no observed state explains is caught; one a state
explains is not)."""

from __future__ import annotations

from collections import Counter
from fractions import Fraction
from typing import Any

from bench.audit import Ledger, Prices, false_refusals, figures
from bench.load import Answer, Grant, Member, Population, Spec
from devstack import services

ORG, USER, OTHER = "org_a", "usr_a", "usr_b"


def prices() -> Prices:
    return Prices.read(services.ROOT / "litellm_config.yaml", services.ROOT / "policy.yaml")


def test_the_formula_is_computed_from_the_yaml_text() -> None:
    p = prices()
    assert p.deployment["fake-medium-1"] == (Fraction(6, 10_000_000), Fraction(12, 10_000_000))
    # ceil((10 * 0.0000006 + 6 * 0.0000012) USD * 1000 * 1000 * 1.4 * 0.25) = ceil(4.62)
    assert p.charge("fake-medium", "fake-medium-1", "starter", "balanced", 10, 6) == 5
    # a balanced model asked at precision is charged at balanced's multiplier; one no level lists at 1
    assert p.multiplier("precision", "fake-gpt-4o-mini") == Fraction(1, 4)
    assert p.multiplier("eco", "fake-embed") == 1
    # the deployment that answered; unknown (the sweeper's): the highest of the model's
    assert p.price("fake-multi", "fake-multi-a") == (Fraction(1, 1_000_000), Fraction(2, 1_000_000))
    assert p.price("fake-multi", None) == (Fraction(2, 1_000_000), Fraction(4, 1_000_000))
    assert p.caps == {"eco": 2000, "balanced": 4000, "precision": 16000}


def member(user: str = USER, limit: int | None = None) -> Member:
    return Member(user, ORG, user, "sk-test", "starter", limit, False)


def answer(rid: str, status: int, t_send: float, t_end: float, *, who: Member | None = None,
           refused: int | None = None, held: int | None = None, remaining: int | None = None,
           prompt: str = "hi") -> Answer:
    spec = Spec(0, who or member(), "chat/completions", False, "fake-medium", "balanced", prompt, None, 6, 0, False,
                None, {})
    a = Answer(rid, spec, 0, "none", t_send, t_end if status != 402 else None, t_end, status)
    a.refused_hold, a.held, a.remaining = refused, held, remaining
    a.code = "org_pool_exhausted" if status == 402 else None
    return a


def entry(version: int, t: float, kind: str, *, granted: int = 0, posted: int = 0, pending: int = 0,
          user: str | None = None, rid: str | None = None, grant_id: int | None = None) -> dict[str, Any]:
    return {"org_id": ORG, "version": version, "kind": kind, "d_granted": granted, "d_posted": posted,
            "d_pending": pending, "d_overage": 0, "user_id": user, "request_id": rid, "grant_id": grant_id, "t": t}


def ledger(journal: list[dict[str, Any]]) -> Ledger:
    return Ledger({}, {}, {ORG: journal}, {(ORG, "seed"): 1}, {ORG: 10_000}, 0, 0.0)  # type: ignore[dict-item]


# a grant of 10,000; request A held 8,000 (its answer began at 101.1) and was settled at 100 (its non-stream
# answer, carrying X-Credits-Remaining, ended at 102.05)
JOURNAL = [entry(1, 100.0, "grant", granted=10_000, grant_id=7),
           entry(2, 101.0, "hold", pending=8_000, user=USER, rid="A"),
           entry(3, 102.0, "post", posted=100, pending=-8_000, user=USER, rid="A")]
A = answer("A", 200, 100.9, 102.05, held=8_000, remaining=9_900, prompt="a longer prompt")
A.t_head = 101.1


def population(limit: int | None = None) -> Population:
    return Population([member(limit=limit)], [Grant(ORG, "seed", 10_000, 100.5)], {ORG: "starter"},
                      {(ORG, USER): limit, (ORG, OTHER): None}, ORG, "test")


def test_a_refusal_while_the_hold_was_pending_is_justified_and_one_after_it_settled_is_false() -> None:
    during = answer("R1", 402, 101.5, 101.6, refused=5_000)  # saw v2: 2,000 available
    after = answer("R2", 402, 103.0, 103.1, refused=5_000)  # A's settlement was known before it was sent: 9,900
    spanning = answer("R3", 402, 101.5, 102.5, refused=5_000)  # could have seen v2 or v3
    out = false_refusals([A, during, after, spanning], ledger(JOURNAL), population(), [])
    assert (out.checked, out.false, out.raced, out.unknown_hold, out.hold_differs) == (3, ["R2"], 1, [], [])
    assert out.codes == Counter({"org_pool_exhausted": 3})


def test_an_allocation_refusal_is_checked_against_the_members_own_use() -> None:
    journal = [*JOURNAL, entry(4, 104.0, "hold", pending=500, user=OTHER, rid="B")]
    mine = answer("R4", 402, 103.0, 103.1, refused=2_000, who=member(limit=2_100))  # used 100 of 2,100: covered
    tight = answer("R5", 402, 103.0, 103.1, refused=2_000, who=member(limit=2_000))  # 1,900 left: justified
    out = false_refusals([A, mine], ledger(journal), population(limit=2_100), [])
    assert out.false == ["R4"]
    assert false_refusals([A, tight], ledger(journal), population(limit=2_000), []).false == []


def test_a_refusal_whose_hold_is_unreadable_or_unlike_its_twin_is_reported() -> None:
    twin = answer("T", 200, 99.0, 99.5, held=4_000, prompt="same")
    odd = answer("R6", 402, 101.5, 101.6, refused=5_000, prompt="same")
    unread = answer("R7", 402, 101.5, 101.6)
    out = false_refusals([A, twin, odd, unread], ledger(JOURNAL), population(), [])
    assert (out.hold_differs, out.unknown_hold, out.false) == (["R6"], ["R7"], [])


def test_figures_count_overspend_overage_and_missing_records() -> None:
    usage = {(ORG, "A"): {"org_id": ORG, "request_id": "A", "hold_id": 1, "user_id": USER, "charged": 10_100,
                          "overage": 100, "usage_source": "provider", "model": "fake-medium",
                          "deployment": "fake-medium-1", "prompt_tokens": 10, "completion_tokens": 6, "byok": False,
                          "key_id": "key_a"}}
    holds = {(ORG, "A"): [{"id": 1, "amount": 8_000}]}
    book = Ledger(usage, holds, {ORG: JOURNAL}, {}, {ORG: 10_000}, 0, 0.0)  # type: ignore[arg-type]
    missing = answer("M", 200, 101.0, 101.2)
    keyed = population()
    keyed.key_limits["key_a"] = 10_000  # the key's own limit: 100 over it too
    f = figures([A, missing], book, keyed, [], prices(), verified=(True, ""), settled_before=200.0)
    assert (f.overspend_pools, f.overspend_keys, f.overage_requests, f.overage_millicredits) == (100, 100, 1, 2_100)
    assert f.ok_without_one_record == ["M"]
    assert f.charges_differing == ["A:10100!=5"]
    assert set(f.wrong()) == {"overspend", "overage", "2xx without exactly one usage record",
                              "charges differing from the formula", "provider usage differing"}
