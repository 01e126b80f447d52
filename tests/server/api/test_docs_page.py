"""``/docs``: Swagger UI served by the API itself, so the page loads nothing from elsewhere.

FastAPI's default page pulls its script and style from a CDN (a coordinator behind a
firewall shows a blank page, and a third party learns who reads the docs). Here every
``src`` and ``href`` of the page is a path on this server, and each one answers.
"""

from __future__ import annotations

import re

from .conftest import Api


def test_the_docs_page_loads_swagger_ui_from_this_server_only(api: Api) -> None:
    page = api.call("GET", "/docs", None)
    assert page.status_code == 200, page.text
    assert "cdn" not in page.text.lower()
    links = re.findall(r"""(?:src|href)\s*=\s*['"]([^'"]+)['"]""", page.text)
    assert links, page.text
    assert not [link for link in links if "//" in link], links
    for link in links:
        assert api.call("GET", link, None).status_code == 200, link
    assert "/openapi.json" in page.text
    assert api.call("GET", "/openapi.json", None).status_code == 200


def test_the_swagger_script_is_served_as_javascript(api: Api) -> None:
    script = api.call("GET", "/docs/static/swagger-ui-bundle.js", None)
    assert script.status_code == 200
    assert "javascript" in script.headers["content-type"]


def test_redoc_which_only_loads_from_a_cdn_is_not_served(api: Api) -> None:
    assert api.call("GET", "/redoc", None).status_code == 404
