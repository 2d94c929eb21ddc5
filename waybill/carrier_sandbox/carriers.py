"""The sandbox's pretend carriers: their services, tariffs and transit times.

Quotes are pure functions of route and parcels, so the same request always gets
the same answer. Distance is a zone: within one country it comes from how much
of the postal code two places share, across borders from whether both are in
the EU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from enum import IntEnum

CURRENCY = "EUR"

EU_COUNTRIES = frozenset(
    {
        "AT",
        "BE",
        "BG",
        "CY",
        "CZ",
        "DE",
        "DK",
        "EE",
        "ES",
        "FI",
        "FR",
        "GR",
        "HR",
        "HU",
        "IE",
        "IT",
        "LT",
        "LU",
        "LV",
        "MT",
        "NL",
        "PL",
        "PT",
        "RO",
        "SE",
        "SI",
        "SK",
    }
)


class Zone(IntEnum):
    LOCAL = 0  # same country, same two-character postal prefix
    REGIONAL = 1  # same country, same first character
    NATIONAL = 2  # same country, elsewhere
    EU = 3  # another EU country (both ends in the EU)
    WORLD = 4  # any other cross-border route


@dataclass(frozen=True, slots=True)
class Tariff:
    """One carrier service: price = base + per_kg * chargeable kg + zone surcharge."""

    carrier: str
    service: str
    base: Decimal
    per_kg: Decimal
    zone_surcharge: tuple[Decimal, Decimal, Decimal, Decimal, Decimal]
    transit_days: tuple[int, int, int, int, int]
    tracking_prefix: str


def _eur(*amounts: str) -> tuple[Decimal, Decimal, Decimal, Decimal, Decimal]:
    a, b, c, d, e = (Decimal(amount) for amount in amounts)
    return (a, b, c, d, e)


TARIFFS: tuple[Tariff, ...] = (
    Tariff(
        "parcelfast", "standard", Decimal("4.90"), Decimal("0.85"),
        _eur("0", "0.80", "1.60", "6.50", "19.00"), (1, 2, 2, 4, 7), "PF",
    ),
    Tariff(
        "parcelfast", "express", Decimal("9.50"), Decimal("1.40"),
        _eur("0", "1.20", "2.40", "9.00", "29.00"), (1, 1, 1, 2, 4), "PF",
    ),
    Tariff(
        "swiftpost", "economy", Decimal("3.60"), Decimal("0.70"),
        _eur("0", "0.60", "1.30", "5.50", "16.00"), (2, 3, 4, 6, 10), "SP",
    ),
    Tariff(
        "swiftpost", "express", Decimal("10.90"), Decimal("1.25"),
        _eur("0", "1.00", "2.00", "8.00", "26.00"), (1, 1, 2, 2, 5), "SP",
    ),
    Tariff(
        "ecoship", "economy", Decimal("3.20"), Decimal("0.95"),
        _eur("0.40", "0.90", "1.50", "6.00", "21.00"), (3, 3, 4, 7, 12), "EC",
    ),
)  # fmt: skip

CARRIERS: tuple[str, ...] = tuple(dict.fromkeys(tariff.carrier for tariff in TARIFFS))

# Volumetric weight: 1 kg per 5000 cm^3, i.e. grams = mm^3 / 5000.
_VOLUMETRIC_DIVISOR_MM3_PER_GRAM = 5000


@dataclass(frozen=True, slots=True)
class ParcelSize:
    weight_grams: int
    length_mm: int
    width_mm: int
    height_mm: int


@dataclass(frozen=True, slots=True)
class Quote:
    carrier: str
    service: str
    price: Decimal
    currency: str
    transit_days: int


def tariff_for(carrier: str, service: str) -> Tariff | None:
    for tariff in TARIFFS:
        if tariff.carrier == carrier and tariff.service == service:
            return tariff
    return None


def services_of(carrier: str) -> list[str]:
    return [tariff.service for tariff in TARIFFS if tariff.carrier == carrier]


def normalise_postal_code(postal_code: str) -> str:
    return "".join(char for char in postal_code.upper() if char.isalnum())


def zone_between(
    from_country: str, from_postal_code: str, to_country: str, to_postal_code: str
) -> Zone:
    if from_country.upper() != to_country.upper():
        both_eu = from_country.upper() in EU_COUNTRIES and to_country.upper() in EU_COUNTRIES
        return Zone.EU if both_eu else Zone.WORLD
    origin = normalise_postal_code(from_postal_code)
    destination = normalise_postal_code(to_postal_code)
    if origin[:2] and origin[:2] == destination[:2]:
        return Zone.LOCAL
    if origin[:1] and origin[:1] == destination[:1]:
        return Zone.REGIONAL
    return Zone.NATIONAL


def chargeable_grams(parcel: ParcelSize) -> int:
    """The larger of actual and volumetric weight, as carriers bill."""
    volume = parcel.length_mm * parcel.width_mm * parcel.height_mm
    volumetric = math.ceil(volume / _VOLUMETRIC_DIVISOR_MM3_PER_GRAM)
    return max(parcel.weight_grams, volumetric)


def quote(tariff: Tariff, zone: Zone, parcels: list[ParcelSize]) -> Quote:
    price = Decimal(0)
    for parcel in parcels:
        # Billed per started half kilogram, as most carriers do.
        half_kilos = max(1, math.ceil(chargeable_grams(parcel) / 500))
        price += tariff.base + tariff.per_kg * Decimal(half_kilos) / 2 + tariff.zone_surcharge[zone]
    return Quote(
        carrier=tariff.carrier,
        service=tariff.service,
        price=price.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP),
        currency=CURRENCY,
        transit_days=tariff.transit_days[zone],
    )
