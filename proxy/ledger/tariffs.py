"""The charge formula: `ceil(usd * credits_per_usd * 1000 * (1 + markup) * multiplier)` millicredits.

Money is exact: prices are Decimals from their YAML text, the arithmetic runs on `Fraction`s (or, per
tariff, on integer numerators over one denominator) and the only rounding is the final `ceil` to whole
millicredits (CONTRACT.md, Money).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

from proxy.config.catalogue import Price


@dataclass(frozen=True, slots=True)
class Rates:
    """Millicredits per unit (exact): what the ledger needs to settle a dead replica's hold."""

    input: Decimal
    output: Decimal
    image: Decimal


def factor(markup: Decimal, multiplier: Decimal) -> Decimal:
    """`(1 + markup) * multiplier`, exactly (a Decimal product could round at 28 digits)."""
    return _fraction_to_decimal((1 + Fraction(markup)) * Fraction(multiplier))


def millicredit_rates(price: Price, credits_per_usd: Decimal, factor: Decimal = Decimal(1)) -> Rates:
    """Per-token (and per-image) rates in millicredits, times `factor` ((1 + markup) * multiplier)."""
    return Rates(
        _rate(price.input, credits_per_usd, factor),
        _rate(price.output, credits_per_usd, factor),
        _rate(price.image, credits_per_usd, factor),
    )


def _rate(usd: Decimal | None, credits_per_usd: Decimal, factor: Decimal) -> Decimal:
    return _fraction_to_decimal(Fraction(usd or 0) * Fraction(credits_per_usd) * 1000 * Fraction(factor))


def _fraction_to_decimal(value: Fraction) -> Decimal:
    """A Fraction whose denominator is 2^a * 5^b as the exact Decimal."""
    num, den = value.numerator, value.denominator
    scale = 0
    while den % 10 == 0:
        den //= 10
        scale += 1
    while den % 2 == 0:
        den //= 2
        num *= 5
        scale += 1
    while den % 5 == 0:
        den //= 5
        num *= 2
        scale += 1
    if den != 1:
        raise ValueError("not a finite decimal")
    sign = 1 if num < 0 else 0
    return Decimal((sign, tuple(int(d) for d in str(abs(num))), -scale))  # exact: no context rounding


def usd_cost(price: Price, prompt_tokens: int, completion_tokens: int, images: int = 0) -> Fraction:
    """`prompt * input + completion * output (+ images * per_image)`, exactly; a missing price is 0."""
    return (
        prompt_tokens * Fraction(price.input or 0)
        + completion_tokens * Fraction(price.output or 0)
        + images * Fraction(price.image or 0)
    )


def charge(usd: Fraction, credits_per_usd: Decimal, markup: Decimal, multiplier: Decimal) -> int:
    """`ceil(usd * credits_per_usd * 1000 * (1 + markup) * multiplier)` in millicredits, exactly."""
    return math.ceil(usd * Fraction(credits_per_usd) * 1000 * (1 + Fraction(markup)) * Fraction(multiplier))


def list_price(usd: Fraction, credits_per_usd: Decimal) -> int:
    """`ceil(usd * credits_per_usd * 1000)`: no markup, no multiplier (what BYOK would have cost)."""
    return math.ceil(usd * Fraction(credits_per_usd) * 1000)


@dataclass(frozen=True, slots=True)
class Tariff:
    """One price at one (credits per USD x markup x multiplier) factor, as integer numerators over one
    denominator, so a charge is a few integer operations and one exact ceiling division; equal to
    `charge(usd_cost(...), ...)` (tests/policies check it against the Fraction formula)."""

    input: int
    output: int
    image: int
    denominator: int

    @classmethod
    def of(cls, price: Price, credits_per_usd: Decimal, factor: Decimal = Decimal(1)) -> Tariff:
        """`factor` is `(1 + markup) * multiplier` (1 for the list price)."""
        scale = Fraction(credits_per_usd) * 1000 * Fraction(factor)
        rates = [Fraction(usd or 0) * scale for usd in (price.input, price.output, price.image)]
        denominator = math.lcm(*(r.denominator for r in rates))
        numerators = [r.numerator * (denominator // r.denominator) for r in rates]
        return cls(numerators[0], numerators[1], numerators[2], denominator)

    def charge(self, prompt_tokens: int, completion_tokens: int, images: int = 0) -> int:
        """Millicredits, rounded up once."""
        total = prompt_tokens * self.input + completion_tokens * self.output + images * self.image
        return -(-total // self.denominator)
