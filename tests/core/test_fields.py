"""The shared field types: one definition of a digest, a name, a time and a hashed number."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from pydantic import BaseModel, ConfigDict, ValidationError

from veracity.core.fields import (
    MAX_SAFE_INTEGER,
    Ident,
    Number,
    Timestamp,
    check_hex64,
    check_site_name,
    format_timestamp,
    is_hex64,
)
from veracity.errors import InputError


class _Document(BaseModel):
    model_config = ConfigDict(strict=True)
    value: Number = 0.0
    at: Timestamp = "2026-11-27T15:47:52.123456Z"
    ident: Ident = "cohort-1"


def test_timestamps_are_rfc3339_utc_with_microseconds() -> None:
    moment = datetime(2026, 11, 27, 16, 47, 52, 123456, tzinfo=timezone(timedelta(hours=1)))
    assert format_timestamp(moment) == "2026-11-27T15:47:52.123456Z"
    with pytest.raises(InputError):
        format_timestamp(datetime(2026, 1, 1))


@pytest.mark.parametrize("text", ["2026-02-30T00:00:00Z", "2026-11-27 15:47:52Z", "yesterday"])
def test_a_timestamp_that_is_not_a_real_rfc3339_time_is_refused(text: str) -> None:
    with pytest.raises(ValidationError):
        _Document(at=text)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1e16, -1e20, 2.0**53])
def test_a_hashed_number_is_finite_and_below_two_to_the_53(value: float) -> None:
    with pytest.raises(ValidationError):
        _Document(value=value)


def test_the_largest_safe_numbers_are_accepted() -> None:
    assert _Document(value=float(MAX_SAFE_INTEGER)).value == MAX_SAFE_INTEGER
    assert _Document(value=-1e15).value == -1e15


def test_hex_digests_are_64_lowercase_hex_characters() -> None:
    assert is_hex64("ab" * 32)
    for bad in ("AB" * 32, "ab" * 31, "zz" * 32, None, 42):
        assert not is_hex64(bad)
    with pytest.raises(InputError, match="model_hash"):
        check_hex64("nope", what="model_hash")


@pytest.mark.parametrize("name", ["Hospital-A", "-a", "a_b", "a" * 64, "", "a.b"])
def test_a_site_name_is_a_dns_label(name: str) -> None:
    with pytest.raises(InputError, match="site name"):
        check_site_name(name)
    assert check_site_name("hospital-a") == "hospital-a"


@pytest.mark.parametrize(
    "ident", ["nul\x00id", "line\nbreak", "tab\t", "\x1f", "del\x7f", "", "x" * 129]
)
def test_an_identifier_is_1_to_128_characters_none_of_them_control(ident: str) -> None:
    with pytest.raises(ValidationError, match="ident"):
        _Document(ident=ident)


def test_an_identifier_may_hold_any_other_character() -> None:
    assert _Document(ident="cohort 1/é \u202e 中").ident == "cohort 1/é \u202e 中"
