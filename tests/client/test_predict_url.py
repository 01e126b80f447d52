from __future__ import annotations

import pytest

from veracity.api_options import api_base


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("https://coordinator:8443", "https://coordinator:8443/api/v1"),
        ("https://coordinator:8443/", "https://coordinator:8443/api/v1"),
        ("https://coordinator:8443/api/v1", "https://coordinator:8443/api/v1"),
        ("http://127.0.0.1:9000/custom/prefix/", "http://127.0.0.1:9000/custom/prefix"),
    ],
)
def test_a_bare_server_url_means_its_api_v1(given: str, expected: str) -> None:
    assert api_base(given) == expected
