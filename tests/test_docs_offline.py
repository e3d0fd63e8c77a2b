"""/docs works on a network without internet: every file the page loads is served here."""

from html.parser import HTMLParser

import httpx

# Python's mimetypes and the system's mime.types disagree on JavaScript's type; both work.
CONTENT_TYPES = {
    "js": ("text/javascript", "application/javascript"),
    "css": ("text/css",),
    "png": ("image/png",),
}


class _AssetLinks(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        url = named.get("src") if tag == "script" else named.get("href") if tag == "link" else None
        if url:
            self.urls.append(url)


async def test_docs_load_nothing_from_another_host(client: httpx.AsyncClient) -> None:
    page = await client.get("/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "http://" not in page.text and "https://" not in page.text
    links = _AssetLinks()
    links.feed(page.text)
    assert {url.rsplit(".", 1)[-1] for url in links.urls} == set(CONTENT_TYPES)

    for url in links.urls:
        assert url.startswith("/") and not url.startswith("//"), url
        asset = await client.get(url)
        assert asset.status_code == 200, url
        content_type = asset.headers["content-type"].split(";")[0]
        assert content_type in CONTENT_TYPES[url.rsplit(".", 1)[-1]], url
        assert len(asset.content) > 4096, url


async def test_the_schema_the_page_loads_is_served(client: httpx.AsyncClient) -> None:
    page = await client.get("/docs")
    assert "url: '/openapi.json'" in page.text
    schema = await client.get("/openapi.json")
    assert schema.status_code == 200
    assert schema.json()["info"]["title"] == "wecom-hub"
