"""/docs: Swagger UI from assets inside the installed packages, started by a script file.

The assets (the Swagger UI bundle, its stylesheet, an icon) ship in the `fastapi-offline`
package, so the page makes no request outside the service and works without internet; the
start-up script is smsrelay's own (static/swagger-init.js), since the page's
Content-Security-Policy forbids inline script.
"""

from __future__ import annotations

import html
import importlib.util
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse
from starlette.exceptions import HTTPException

DOCS_URL = "/docs"
ASSETS_URL = "/docs/assets"
_OWN = Path(__file__).parent / "static"


def _offline_assets() -> Path:
    spec = importlib.util.find_spec("fastapi_offline")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the fastapi-offline package (Swagger UI's assets) is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


def _assets() -> dict[str, tuple[Path, str]]:
    offline = _offline_assets()
    return {
        "swagger-ui-bundle.js": (offline / "swagger-ui-bundle.js", "text/javascript"),
        "swagger-ui.css": (offline / "swagger-ui.css", "text/css"),
        "favicon.png": (offline / "favicon.png", "image/png"),
        "swagger-init.js": (_OWN / "swagger-init.js", "text/javascript"),
    }


def _page(root: str, openapi_url: str, title: str) -> str:
    assets = html.escape(root + ASSETS_URL)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<title>{html.escape(title)} - Swagger UI</title>
<link rel="stylesheet" href="{assets}/swagger-ui.css">
<link rel="icon" type="image/png" href="{assets}/favicon.png">
</head>
<body>
<div id="swagger-ui" data-openapi-url="{html.escape(root + openapi_url)}"></div>
<script src="{assets}/swagger-ui-bundle.js"></script>
<script src="{assets}/swagger-init.js"></script>
</body>
</html>
"""


def install_docs(app: FastAPI) -> None:
    """Serve /docs and its assets (the app is made with `docs_url=None`)."""
    assets = _assets()
    missing = [str(path) for path, _ in assets.values() if not path.is_file()]
    if missing:
        raise RuntimeError(f"Swagger UI asset missing: {missing[0]}")
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        return HTMLResponse(_page(request.scope.get("root_path", ""), openapi_url, app.title))

    @app.get(ASSETS_URL + "/{name}", include_in_schema=False)
    async def swagger_asset(name: str) -> FileResponse:
        if name not in assets:
            raise HTTPException(404)
        path, media_type = assets[name]
        return FileResponse(path, media_type=media_type)
