"""The retrieval demo: a FastAPI app (JSON API + one web page) over a :class:`~vlptm.retrieval.Searcher`.

Example:
    >>> from vlptm.serve import create_app, serve       # doctest: +SKIP
    >>> serve("runs/demo/index", port=8000)               # doctest: +SKIP
"""
from vlptm.serve.app import DEFAULT_HOST, MAX_K, MAX_QUERY_CHARS, create_app, serve

__all__ = ["DEFAULT_HOST", "MAX_K", "MAX_QUERY_CHARS", "create_app", "serve"]
