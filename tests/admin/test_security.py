"""What a browser and a cache are told: security headers, and /docs served by the service alone."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
import phonenumbers
import pytest

from tests.admin.conftest import LIST

BASE = "http://admin"


class Assets(HTMLParser):
    """Every URL a page makes the browser load, and whether it holds inline script or style."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline_scripts: list[str] = []
        self.inline_handlers: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        for name in ("src", "href", "srcset", "data", "poster", "action"):
            if values.get(name):
                self.urls.append(str(values[name]))
        self.inline_handlers += [name for name, _ in attrs if name.startswith("on")]
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline_scripts.append(data)


def csp(response: httpx.Response) -> dict[str, str]:
    policy = response.headers["Content-Security-Policy"]
    directives = (part.strip().split(None, 1) for part in policy.split(";") if part.strip())
    return {d[0]: d[1] if len(d) > 1 else "" for d in directives}


async def test_docs_load_nothing_from_outside(api: httpx.AsyncClient) -> None:
    # Given /docs, When its HTML is parsed
    page = await api.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assets = Assets()
    assets.feed(page.text)
    # Then every script, style sheet and icon is on the service itself, and each loads
    assert any(u.endswith(".js") for u in assets.urls) and any(
        u.endswith(".css") for u in assets.urls
    )
    for url in assets.urls:
        absolute = urljoin(f"{BASE}/docs", url)
        assert urlsplit(absolute).netloc == "admin", f"{url} is not on the service"
        asset = await api.get(absolute)
        assert asset.status_code == 200, url
        assert asset.headers["X-Content-Type-Options"] == "nosniff"
    # And there is no inline script for the policy to allow
    assert assets.inline_scripts == [] and assets.inline_handlers == []
    # And the init script points Swagger UI at the service's document, with no validator
    [init] = [u for u in assets.urls if u.endswith("swagger-init.js")]
    script = (await api.get(urljoin(f"{BASE}/docs", init))).text
    assert "validatorUrl: null" in script and "http" not in script
    assert (await api.get("/openapi.json")).json()["info"]["title"] == "smsrelay admin"


async def test_the_docs_page_has_a_strict_policy(api: httpx.AsyncClient) -> None:
    page = await api.get("/docs")
    policy = csp(page)
    assert policy["default-src"] == "'none'"
    assert policy["script-src"] == "'self'"  # no inline script, no eval, no CDN
    assert policy["frame-ancestors"] == "'none'"
    assert "'unsafe-inline'" not in policy["script-src"]
    assert all("http" not in value and "*" not in value for value in policy.values())
    assert page.headers["Referrer-Policy"] == "no-referrer"
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert page.headers["X-Frame-Options"] == "DENY"


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        (LIST, None, 200),
        (LIST, {"Authorization": ""}, 401),
        (LIST + "?limit=0", None, 400),
        ("/api/admin/nothing-here", None, 404),
    ],
)
async def test_api_answers_are_never_cached(
    api: httpx.AsyncClient, path: str, headers: dict[str, str] | None, status: int
) -> None:
    # Given an /api/ answer, success or error, Then no cache keeps it, nor sniffs it
    response = await (api.get(path) if headers is None else api.get(path, headers=headers))
    assert response.status_code == status, response.text
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert csp(response)["frame-ancestors"] == "'none'"


async def test_api_413_and_405_carry_the_headers_too(api: httpx.AsyncClient) -> None:
    big = await api.post(
        LIST, content=b" " * (65 * 1024), headers={"Content-Type": "application/json"}
    )
    wrong = await api.put(LIST)
    for response, status in ((big, 413), (wrong, 405)):
        assert response.status_code == status
        assert response.headers["Cache-Control"] == "no-store"
        assert response.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize("path", ["/metrics", "/healthz", "/readyz", "/openapi.json"])
async def test_every_response_is_nosniff(api: httpx.AsyncClient, path: str) -> None:
    response = await api.get(path, headers={})
    assert response.status_code == 200
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert csp(response)["frame-ancestors"] == "'none'"


async def test_the_document_tells_roles_limits_and_a_valid_example(api: httpx.AsyncClient) -> None:
    document = (await api.get("/openapi.json")).json()
    paths = document["paths"]
    for path, operations in paths.items():
        for method, operation in operations.items():
            statuses = set(operation["responses"])
            if path.startswith("/api/"):
                # any /api/ call may meet the failed-authentication limit
                assert {"401", "429"} <= statuses, (method, path)
                assert ("403" in statuses) == (method != "get"), (method, path)
    [phone] = [p for p in paths[LIST]["get"]["parameters"] if p["name"] == "phone"]
    example = phone["description"].rsplit(" ", 1)[-1]
    assert phonenumbers.is_valid_number(phonenumbers.parse(example)), example
    wrong = (await api.get(LIST, params={"phone": "12"})).json()["error"]
    assert phonenumbers.is_valid_number(phonenumbers.parse(wrong.split("like ")[1].split()[0]))
    assert "8761234567" not in str(document)


async def test_security_md_names_every_route_open_without_a_token(api: httpx.AsyncClient) -> None:
    # A route added outside /api/ is reachable by anyone: SECURITY.md must say so.
    text = (Path(__file__).parents[2] / "SECURITY.md").read_text()
    open_paths = [
        path
        for path in (await api.get("/openapi.json")).json()["paths"]
        if not path.startswith("/api/")
    ] + ["/openapi.json", "/docs"]
    assert len(open_paths) >= 5
    for path in open_paths:
        assert f"`{path}`" in text, f"{path} is not in SECURITY.md"
