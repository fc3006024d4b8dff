"""/docs and /redoc work offline: the pages and every asset they reference come from the server itself."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import httpx
import pytest

from tests.integration.conftest import RunningServer


class _References(HTMLParser):
    """Every URL a page makes the browser fetch: script/img src, link href, ReDoc's spec-url."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value and (name == "src" or name == "spec-url" or (tag == "link" and name == "href")):
                self.urls.append(value)


def references(html: str) -> list[str]:
    parser = _References()
    parser.feed(html)
    # Swagger UI gets the document's URL in its inline script: `url: '/openapi.json'`.
    return parser.urls + re.findall(r"\burl:\s*'([^']+)'", html)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_page_and_all_its_assets_come_from_the_server(server: RunningServer, page: str) -> None:
    response = httpx.get(f"{server.url}{page}", timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    assert not re.search(r"https?://|//cdn", html), "the page must not load anything from another host"
    urls = references(html)
    assert any(u.endswith(".js") for u in urls) and "/openapi.json" in urls, urls
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), f"{url} is not served by this server"
        asset = httpx.get(f"{server.url}{url}", timeout=30)
        assert asset.status_code == 200, url
        assert len(asset.content) > 0, url
        if url.endswith(".js"):
            assert "javascript" in asset.headers["content-type"], (url, asset.headers["content-type"])
            assert len(asset.content) > 100_000, f"{url} is not the real bundle ({len(asset.content)} bytes)"
        if url.endswith(".css"):
            assert asset.headers["content-type"].startswith("text/css"), url


def test_openapi_document_is_served(server: RunningServer) -> None:
    document = httpx.get(f"{server.url}/openapi.json", timeout=30).json()
    assert document["openapi"].startswith("3.1")
    assert "/v1/chat/completions" in document["paths"]
