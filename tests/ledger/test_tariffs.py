"""The charge formula: exact, rounded up once, the integer tariff equal to the Fraction formula."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.config.catalogue import Catalogue, Price
from proxy.ledger import tariffs


def test_charge_is_exact_and_rounds_up_once() -> None:
    price = Price(Decimal("0.0000025"), Decimal("0.00001"))
    usd = tariffs.usd_cost(price, 1234, 567)
    assert usd == Fraction(1234 * 25, 10**7) + Fraction(567, 10**5)
    # 0.008755 USD * 1000 * 1000 * 1.6 * 0.25 = 3502 exactly: no rounding up of an exact integer
    assert tariffs.charge(usd, Decimal(1000), Decimal("0.6"), Decimal("0.25")) == 3502
    assert tariffs.charge(usd, Decimal(1000), Decimal("0.4"), Decimal("0.1")) == 1226  # 1225.7 -> 1226
    assert tariffs.list_price(usd, Decimal(1000)) == 8755
    # 0.1 as a binary float would make 3 * 0.1 * 10 = 3.0000000000000004 -> 4
    assert tariffs.charge(Fraction(3, 1000), Decimal(1), Decimal(0), Decimal("0.1")) == 1


def test_millicredit_rates_are_exact(catalogue: Catalogue) -> None:
    small = catalogue.get("fake-small")
    assert small is not None
    rates = tariffs.millicredit_rates(small.highest, Decimal(1000), Decimal("1.4") * Decimal("0.1"))
    assert (rates.input, rates.output, rates.image) == (Decimal("0.007"), Decimal("0.014"), Decimal(0))
    listed = tariffs.millicredit_rates(small.highest, Decimal(1000))
    assert (listed.input, listed.output) == (Decimal("0.05"), Decimal("0.1"))


@settings(max_examples=300, deadline=None)
@given(
    prices=st.tuples(*[st.one_of(st.none(), st.decimals(min_value=0, max_value=1, places=12)) for _ in range(3)]),
    markup=st.decimals(min_value=0, max_value=3, places=20),
    multiplier=st.decimals(min_value=0, max_value=2, places=20),
    credits_per_usd=st.sampled_from([Decimal(1000), Decimal("1"), Decimal("333.3")]),
    units=st.tuples(st.integers(0, 10**7), st.integers(0, 10**7), st.integers(0, 100)),
)
def test_integer_tariff_equals_the_exact_formula(
    prices: tuple[Decimal | None, Decimal | None, Decimal | None],
    markup: Decimal,
    multiplier: Decimal,
    credits_per_usd: Decimal,
    units: tuple[int, int, int],
) -> None:
    price = Price(*prices)
    usd = tariffs.usd_cost(price, *units[:2], images=units[2])
    tariff = tariffs.Tariff.of(price, credits_per_usd, tariffs.factor(markup, multiplier))
    assert tariff.charge(*units) == tariffs.charge(usd, credits_per_usd, markup, multiplier)
    assert tariffs.Tariff.of(price, credits_per_usd).charge(*units) == tariffs.list_price(usd, credits_per_usd)


def test_factor_and_rates_never_round() -> None:
    markup, multiplier = Decimal("0.1234567890123456789"), Decimal("1.000000000000000000001")
    exact = Fraction(1) + Fraction(markup)
    assert Fraction(tariffs.factor(markup, multiplier)) == exact * Fraction(multiplier)  # 40 digits
    rates = tariffs.millicredit_rates(Price(Decimal("0.0000000123456789")), Decimal("333.3"), multiplier)
    assert Fraction(rates.input) == Fraction("0.0000000123456789") * Fraction("333.3") * 1000 * Fraction(multiplier)
