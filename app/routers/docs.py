"""GET /docs: Swagger UI served from this process, not from a CDN.

FastAPI's own page loads its JavaScript and CSS from jsDelivr and its icon from
fastapi.tiangolo.com, so on a network without internet, where a hub next to a corp's own
systems often runs, it stays blank. The files come from the `fastapi-offline` wheel (Swagger
UI 5, refreshed with its releases): a dependency instead of 1.5 MB vendored into git,
and only its files, not its `FastAPIOffline()` factory, which would build the application.

No OAuth2 redirect page: Swagger UI needs it only for OAuth2 login flows, which this service
does not offer.
"""

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = "/docs/assets"


def install(app: FastAPI) -> None:
    """Call with FastAPI(docs_url=None), or FastAPI's CDN page takes /docs first."""
    openapi_url = app.openapi_url
    assert openapi_url is not None, "/docs needs the OpenAPI schema"
    app.mount(ASSETS, StaticFiles(packages=[("fastapi_offline", "static")]), name="docs-assets")

    async def swagger_ui(request: Request) -> HTMLResponse:
        # Behind a proxy that mounts the service under a prefix, every URL needs it.
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} API",
            swagger_js_url=f"{root}{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS}/favicon.png",
            swagger_ui_parameters=app.swagger_ui_parameters,
        )

    app.add_route("/docs", swagger_ui, methods=["GET"], include_in_schema=False)
