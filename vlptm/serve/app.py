"""The retrieval demo's FastAPI app.

Routes:
    ``GET /``                      the web page (query box, result grid, word-to-region attention view)
    ``GET /api/health``            index size, model fingerprint, whether image-to-text is available
    ``GET /api/search?q=&k=``      text-to-image results: ``{"query", "results": [{"image_id", "score", "itc",
                                   "itm", "url"}], "seconds"}``
    ``GET /api/attention?q=&image_id=``  word-to-region attention of the query on one indexed image
    ``GET /api/captions?image_id=&k=``   image-to-text results for an indexed image (needs a caption index)
    ``GET /api/images/{image_id}`` the file of an indexed image

Safety: the server binds 127.0.0.1 unless told otherwise; images are served only by indexed id, from the
path recorded in the index (a request never names a path); queries longer than ``max_query_chars`` and
out-of-range ``k`` are rejected with 422; unknown images give 404.
"""
from __future__ import annotations

import logging
import mimetypes
import time
from importlib import resources
from pathlib import Path
from typing import Any, Optional

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
MAX_QUERY_CHARS = 200
MAX_K = 50


def _page() -> str:
    return resources.files("vlptm.serve").joinpath("static/index.html").read_text(encoding="utf-8")


def create_app(searcher: Any, *, max_query_chars: int = MAX_QUERY_CHARS, max_k: int = MAX_K) -> Any:
    """The FastAPI app serving ``searcher`` (a :class:`~vlptm.retrieval.Searcher`).

    Args:
        searcher: the searcher (its image index must carry image paths for the page to show images).
        max_query_chars: longest accepted query (characters, after stripping whitespace).
        max_k: most results one request may ask for.

    Returns:
        A ``fastapi.FastAPI`` application.
    """
    from fastapi import FastAPI, HTTPException, Query
    from fastapi.responses import FileResponse, HTMLResponse

    from vlptm.retrieval.search import QueryBatcher

    app = FastAPI(title="vlptm retrieval demo", docs_url="/api/docs", openapi_url="/api/openapi.json")
    page = _page()
    images = searcher.images
    batcher = QueryBatcher(searcher)  # concurrent searches share encoder batches

    def clean_query(q: str) -> str:
        text = " ".join(q.split())
        if not text:
            raise HTTPException(status_code=422, detail="the query is empty")
        if len(text) > max_query_chars:
            raise HTTPException(status_code=422, detail=f"the query is longer than {max_query_chars} characters")
        return text

    def indexed_image(image_id: str) -> Path:
        if image_id not in images:
            raise HTTPException(status_code=404, detail="no such image in the index")
        path = images.payload(image_id)
        if not path or not Path(path).is_file():
            raise HTTPException(status_code=404, detail="the index has no file for this image")
        return Path(path)

    @app.get("/", response_class=HTMLResponse)
    def index_page() -> str:
        return page

    @app.get("/api/health")
    def health() -> dict:
        return {"status": "ok", "images": len(images), "factory": images.factory,
                "model": searcher.model.fingerprint, "captions": len(searcher.captions) if searcher.captions else 0,
                "rerank": searcher.rerank, "max_query_chars": max_query_chars, "max_k": max_k}

    @app.get("/api/search")
    def search(q: str = Query(..., max_length=4 * max_query_chars), k: int = Query(8, ge=1, le=max_k),
               rerank: Optional[int] = Query(None, ge=0, le=1000)) -> dict:
        query = clean_query(q)
        start = time.perf_counter()
        hits = batcher.text_to_image(query, k=k, rerank=rerank)
        results = [{"image_id": h.item_id, "score": h.score, "itc": h.itc, "itm": h.itm,
                    "url": f"/api/images/{h.item_id}"} for h in hits]
        return {"query": query, "results": results, "seconds": time.perf_counter() - start}

    @app.get("/api/attention")
    def attention(q: str = Query(..., max_length=4 * max_query_chars), image_id: str = Query(..., max_length=512)
                  ) -> dict:
        query = clean_query(q)
        if image_id not in images:
            raise HTTPException(status_code=404, detail="no such image in the index")
        out = searcher.word_region_attention(query, image_id)
        out["url"] = f"/api/images/{image_id}"
        return out

    @app.get("/api/captions")
    def captions(image_id: str = Query(..., max_length=512), k: int = Query(5, ge=1, le=max_k)) -> dict:
        if searcher.captions is None:
            raise HTTPException(status_code=404, detail="this index has no caption index (vlptm index --captions)")
        if image_id not in images or searcher.store is None:
            raise HTTPException(status_code=404, detail="no such image in the index")
        hits = searcher.image_to_text([searcher.store[image_id]], k=k)[0]
        return {"image_id": image_id, "results": [h.as_dict() for h in hits]}

    @app.get("/api/images/{image_id:path}")
    def image(image_id: str) -> FileResponse:
        path = indexed_image(image_id)
        media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return FileResponse(path, media_type=media_type, headers={"Cache-Control": "max-age=3600"})

    return app


def serve(index: str, *, host: str = DEFAULT_HOST, port: int = 8000, model: Optional[str] = None,
          store: Optional[str] = None, rerank: int = 16, itc_weight: float = 0.0, device: Optional[str] = None,
          max_query_chars: int = MAX_QUERY_CHARS, log_level: str = "info") -> None:
    """Open the index (with the model and store it names unless given) and serve the demo until interrupted.

    Args:
        index: index directory (``vlptm index``).
        host: interface to bind (default loopback only; ``0.0.0.0`` exposes the demo to the network).
        port: TCP port.
        model: pretraining checkpoint (default: the index's).
        store: feature store (default: the index's).
        rerank: candidates re-ranked by ITM per query.
        itc_weight: ITC weight in the final score.
        device: where the model runs.
        max_query_chars: longest accepted query.
        log_level: uvicorn's log level.
    """
    import uvicorn

    from vlptm.retrieval.build import open_searcher

    searcher = open_searcher(index, model, store, rerank=rerank, itc_weight=itc_weight, device=device)
    app = create_app(searcher, max_query_chars=max_query_chars)
    if host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("serving on %s: the demo is reachable from other machines", host)
    logger.info("serving %d images on http://%s:%d", len(searcher.images), host, port)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
