"""The FastAPI app of the registry page, mounted by the api-server under ``/dataset-registry``.

Plugin apps are not protected by Airflow: every route here depends on Airflow's own access check
(``requires_access_asset("GET")``: an authenticated user allowed to read assets, which is what a
dataset version is). No credential, no route: 401 without one, 403 with a bad one or without the
permission. The app has no OpenAPI or docs routes (they would be unprotected).
"""
from __future__ import annotations

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from dataset_registry.web.api import router as api_router
from dataset_registry.web.page import page_router, unauthenticated_page
from dataset_registry.web.sources import RegistrySources

URL_PREFIX = "/dataset-registry"


def access_dependency():
    """Airflow's own check: an authenticated user who may read assets (401/403 otherwise)."""
    from airflow.api_fastapi.core_api.security import requires_access_asset

    return Depends(requires_access_asset("GET"))


def create_app(sources: RegistrySources | None = None) -> FastAPI:
    """The registry app.

    :param sources: where the registry, the model DB and the project configs come from (default:
        the ``dvc_registry`` and ``model_db`` connections through the package's hooks).
    """
    app = FastAPI(
        title="Dataset registry",
        docs_url=None, redoc_url=None, openapi_url=None,
        dependencies=[access_dependency()],
    )
    app.state.sources = sources or RegistrySources()
    app.include_router(api_router, prefix="/api")
    app.include_router(page_router)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        # A person opening the page without a session gets the status and a link to the login page;
        # the JSON API keeps FastAPI's {"detail": ...}.
        path, root = request.url.path, request.scope.get("root_path", "")
        relative = path[len(root):] if root and path.startswith(root) else path
        wants_html = not relative.startswith("/api/") and "text/html" in request.headers.get("accept", "")
        if exc.status_code in (401, 403) and wants_html:
            return HTMLResponse(unauthenticated_page(request, exc.status_code, str(exc.detail)),
                                status_code=exc.status_code)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    return app
