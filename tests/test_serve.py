"""The demo's real HTTP server (``vlptm serve`` under uvicorn in a subprocess, loopback only)."""
from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from retrieval_fixtures import built_assets, shared_server  # noqa: E402


@pytest.fixture(scope="module")
def server():
    running = shared_server()
    running.assets = built_assets()
    return running


def _get(server, path: str):
    try:
        with urllib.request.urlopen(server.url + path, timeout=60) as response:
            return response.status, response.headers.get("content-type", ""), response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("content-type", ""), err.read()


def _json(server, path: str):
    status, _, body = _get(server, path)
    return status, json.loads(body)


def test_page_and_health(server):
    status, content_type, body = _get(server, "/")
    assert status == 200 and content_type.startswith("text/html") and b'id="query"' in body
    status, health = _json(server, "/api/health")
    assert status == 200 and health["images"] == 12 and health["captions"] > 12


def test_search_returns_indexed_images_with_scores(server):
    status, body = _json(server, "/api/search?" + urllib.parse.urlencode({"q": "a red circle", "k": 5}))
    assert status == 200 and body["query"] == "a red circle" and len(body["results"]) == 5
    scores = [r["score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True)
    first = body["results"][0]
    status, content_type, data = _get(server, first["url"])
    world_images = server.assets["world"] / "images"
    assert status == 200 and content_type == "image/jpeg"
    assert data in {p.read_bytes() for p in world_images.iterdir()}


def test_attention_and_captions(server):
    query = urllib.parse.urlencode({"q": "a small blue star", "image_id": "3"})
    status, body = _json(server, "/api/attention?" + query)
    assert status == 200 and body["tokens"] == ["a", "small", "blue", "star"]
    assert len(body["attention"]) == 4 and len(body["attention"][0]) == len(body["boxes"])
    status, body = _json(server, "/api/captions?image_id=3&k=2")
    assert status == 200 and len(body["results"]) == 2


@pytest.mark.parametrize("path, code", [
    ("/api/search?q=" + "a" * 201, 422),  # query-length limit
    ("/api/search?q=%20%20", 422),  # empty after stripping
    ("/api/search", 422),  # no query
    ("/api/search?q=red&k=0", 422),
    ("/api/search?q=red&k=51", 422),
    ("/api/search?q=red&k=abc", 422),
    ("/api/images/999999", 404),  # not indexed
    ("/api/images/..%2F..%2F..%2Fetc%2Fpasswd", 404),  # traversal attempts never reach the file system
    ("/api/images/%2Fetc%2Fpasswd", 404),
    ("/api/images/../../../../etc/passwd", 404),
    ("/api/attention?q=red&image_id=..%2Fworld%2Finstances.json", 404),
    ("/api/captions?image_id=nope", 404),
    ("/api/nothing", 404),
])
def test_bad_requests_get_4xx(server, path, code):
    status, _, body = _get(server, path)
    assert status == code, body
    assert b"root:" not in body


def test_binds_loopback_only(server):
    import socket

    addresses = {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)}
    addresses.discard("127.0.0.1")
    for address in addresses:
        with socket.socket() as sock:
            sock.settimeout(1)
            assert sock.connect_ex((address, server.port)) != 0, f"the demo answers on {address}"


def test_concurrent_requests_all_succeed(server):
    queries = [f"{size} {colour} {shape}" for size in ("a small", "a large", "two")
               for colour in ("red", "blue", "green", "purple") for shape in ("circle", "squares", "star")]

    def one(query):
        return _get(server, "/api/search?" + urllib.parse.urlencode({"q": query, "k": 4}))[0]

    with ThreadPoolExecutor(max_workers=len(queries)) as pool:
        codes = list(pool.map(one, queries))
    assert codes == [200] * len(queries)


def test_page_ships_inside_the_package():
    import vlptm.serve

    page = Path(vlptm.serve.__file__).parent / "static" / "index.html"
    assert page.is_file() and "api/search" in page.read_text()
