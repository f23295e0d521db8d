"""A small local web page for a trained DSA over an index (``dsanchor serve``), on the standard library only.

:class:`ServeApp` answers the requests (it knows nothing of HTTP, so it is tested directly);
:func:`make_server` wraps it in a :class:`http.server.ThreadingHTTPServer` without blocking and :func:`serve`
runs that until Ctrl-C. The page itself is static: ``dsanchor/web/`` (HTML, CSS, JS and the favicon, nothing
fetched from elsewhere). The routes::

    GET  /                       the page (web/index.html); /page.css, /page.js: its style and script
    GET  /favicon.ico, /favicon.svg
                                 the page's icon (an SVG)
    GET  /api/info               {"images", "has_captions", "has_decoder", "has_controller", "fixed_g",
                                  "default_k", "max_query_chars", "trained_on", ...}
    GET  /api/search?q=..&k=10&g=0.3
                                 {"query", "query_chars", "cut", "results": [{"path", "url", "score", "g", "rank"}],
                                  "g", "source", "query_type", "describe", "domain_note"}; without g the
                                  controller chooses
    POST /api/image?g=0.3&k=5    body: the raw bytes of one image file (Content-Type image/*, not a form)
                                 {"g", "source", "query_type", "describe", "controller": {"g", "query_type",
                                  "describe"}, "captions": {granularity: text} or null,
                                  "index_captions": [{"caption", "score"}] or null, "domain_note"}
    GET  /image/<i>              the i-th indexed image file (only indexed files are served)

A query longer than :attr:`ServeConfig.max_query_chars` (300) is cut to it before it is encoded: the answer's
``query`` is the cut text, ``query_chars`` the length sent and ``cut`` one line saying so (null when nothing was
cut). 300 characters is about what CLIP's 77 text tokens hold; MiniLM reads up to 256 word pieces.

``domain_note`` is one line when the query text or the uploaded image looks out of the pipeline's training
domain (:mod:`dsanchor.domain`), else null (always null for a pipeline saved without that record); the page
shows it in the result header. ``index_captions`` shows each statement once (near-duplicates collapsed,
:mod:`dsanchor.duplicates`); ``trained_on`` says what the pipeline was trained on (null when not recorded).

Bad input (an empty query, g outside [0, 1], k < 1, a body that is not an image) answers HTTP 400 with
``{"error": "one line"}``; an unknown route 404, a bug 500 (also one line). The pipeline is not thread-safe (the
encoder is built on first use), so requests run it one at a time under a lock.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import math
import mimetypes
import threading
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from dsanchor.errors import DsanchorError

__all__ = ["ASSETS", "DEFAULT_HOST", "DEFAULT_PORT", "DSAServer", "RequestError", "ServeApp", "ServeConfig",
           "make_server", "page_asset", "serve"]

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000

# the page's static files: route -> (its file in dsanchor/web, Content-Type)
ASSETS = {"/": ("index.html", "text/html; charset=utf-8"), "/index.html": ("index.html", "text/html; charset=utf-8"),
          "/page.css": ("page.css", "text/css; charset=utf-8"),
          "/page.js": ("page.js", "text/javascript; charset=utf-8"),
          "/favicon.ico": ("favicon.svg", "image/svg+xml"), "/favicon.svg": ("favicon.svg", "image/svg+xml")}


@dataclass(frozen=True)
class ServeConfig:
    """What the API does when a request does not say."""

    k: int = field(default=10, metadata={"help": "results per search without ?k="})
    max_k: int = field(default=200, metadata={"help": "the most results (or index captions) one request may ask for"})
    m: int = field(default=100, metadata={"help": "faiss first-stage candidates re-ranked by DSA (raised to k)"})
    caption_k: int = field(default=5, metadata={"help": "index captions ranked for an uploaded image without ?k="})
    max_upload_mb: float = field(default=20.0, metadata={"help": "the largest image body POST /api/image accepts"})
    max_query_chars: int = field(default=300, metadata={"help": "a longer text query is cut to this many characters "
                                                                "(and the answer says so)"})

    def __post_init__(self):
        for name in ("k", "max_k", "m", "caption_k", "max_query_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.k <= self.max_k or not self.caption_k <= self.max_k:
            raise ValueError(f"k ({self.k}) and caption_k ({self.caption_k}) must be <= max_k ({self.max_k})")
        if not self.max_upload_mb > 0:
            raise ValueError(f"max_upload_mb must be > 0, got {self.max_upload_mb}")


class RequestError(Exception):
    """A request the API refuses: its HTTP status and one line for the person who sent it."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _bad(message: str) -> RequestError:
    return RequestError(HTTPStatus.BAD_REQUEST, message)


class ServeApp:
    """The API over one index and its pipeline: each method takes a request's parts and returns its JSON."""

    def __init__(self, index, pipe, config: ServeConfig | None = None):
        self.index = index
        self.pipe = pipe
        self.config = config or ServeConfig()
        self._pos = {p: i for i, p in enumerate(index.paths)}  # path -> its number in /image/<i>
        self._lock = threading.Lock()

    def warm(self) -> None:
        """Build the encoder's text and image sides now, so that the first request is not the slow one."""
        from PIL import Image

        with self._lock:
            self.pipe.choose_g(text="a photo")
            self.pipe.choose_g(image=Image.new("RGB", (32, 32)))

    # ---- parameters -------------------------------------------------------------------------------------------

    @staticmethod
    def _g(params: dict[str, str]) -> float | None:
        raw = params.get("g", "").strip()
        if not raw:
            return None
        try:
            g = float(raw)
        except ValueError:
            raise _bad(f"g must be a number in [0, 1], got {raw!r}") from None
        if not (math.isfinite(g) and 0.0 <= g <= 1.0):
            raise _bad(f"g must lie in [0, 1], got {raw}")
        return g

    def _query(self, params: dict[str, str]) -> tuple[str, int, str | None]:
        """The query (cut to ``max_query_chars``), its length as sent and a note when it was cut."""
        query = params.get("q", "").strip()
        if not query:
            raise _bad("the query is empty; type what to look for (q=...)")
        limit = self.config.max_query_chars
        if len(query) <= limit:
            return query, len(query), None
        return query[:limit].rstrip(), len(query), f"query cut to {limit} characters (it had {len(query):,})"

    def _k(self, params: dict[str, str], default: int) -> int:
        raw = params.get("k", "").strip()
        if not raw:
            return default
        try:
            k = int(raw)
        except ValueError:
            raise _bad(f"k must be a whole number >= 1, got {raw!r}") from None
        if not 1 <= k <= self.config.max_k:
            raise _bad(f"k must lie in [1, {self.config.max_k}], got {k}")
        return k

    # ---- routes -----------------------------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        pipe = self.pipe
        return {"images": len(self.index), "has_captions": bool(self.index.has_captions),
                "has_decoder": pipe.decoder is not None, "has_controller": pipe.controller is not None,
                "fixed_g": pipe.fixed_g, "default_k": self.config.k,
                "max_query_chars": self.config.max_query_chars,
                "index": str(self.index.folder) if self.index.folder else None,
                "pipeline": str(pipe.path) if pipe.path else None, "trained_on": pipe.trained_on()}

    def search(self, params: dict[str, str]) -> dict[str, Any]:
        """``GET /api/search``: the top k images for the text ``q`` (cut to ``max_query_chars``)."""
        query, chars, cut = self._query(params)
        k, g = self._k(params, self.config.k), self._g(params)
        with self._lock:
            hits, choice = self.pipe.search_with_choice(query, self.index, k=k, g=g, m=max(self.config.m, k))
            note = self.pipe.text_note(query)
        results = [{"path": h.path, "url": f"/image/{self._pos[h.path]}", "score": h.score, "g": h.g,
                    "rank": h.rank} for h in hits]
        return {"query": query, "query_chars": chars, "cut": cut, "results": results, **_choice(choice),
                "domain_note": note}

    def image_query(self, body: bytes, content_type: str, params: dict[str, str]) -> dict[str, Any]:
        """``POST /api/image``: the controller's g for an uploaded image, its captions and the index's."""
        image = self._decode_image(body, content_type)
        g, k = self._g(params), self._k(params, self.config.caption_k)
        with self._lock:
            feats = self.pipe.encode_images([image])  # once, for every question below
            controller = self.pipe.choose_g(image=feats)
            used = controller if g is None else self.pipe.choose_g(image=feats, g=g)
            captions = None
            if self.pipe.decoder is not None:
                captions = self.pipe.caption(feats, g=used.g)[0]["captions"]
            ranked = None
            if self.index.has_captions:
                from dsanchor.index import rank_index_captions

                top, _ = rank_index_captions(self.pipe, self.index, feats, k, used.g)
                ranked = [{"caption": c, "score": s} for c, s in top]
            note = self.pipe.image_notes(feats)[0]
        return {**_choice(used), "controller": {key: v for key, v in _choice(controller).items() if key != "source"},
                "size": list(image.size), "captions": captions, "index_captions": ranked, "domain_note": note}

    def _decode_image(self, body: bytes, content_type: str):
        from PIL import Image, UnidentifiedImageError

        if content_type.startswith("multipart/"):
            raise _bad("send the image file's raw bytes as the body (Content-Type image/*), not a form")
        if not body:
            raise _bad("the request has no image (send the image file's bytes as the body)")
        try:
            with Image.open(io.BytesIO(body)) as im:
                im.load()
                return im.convert("RGB")
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise _bad(f"the body is not a readable image ({type(exc).__name__}); upload a PNG or JPEG") from None

    def image_file(self, number: str) -> tuple[bytes, str]:
        """``GET /image/<i>``: the bytes and MIME type of the i-th indexed image."""
        if not number.isdigit():
            raise RequestError(HTTPStatus.NOT_FOUND,
                               f"no image {number!r}: images are numbered 0..{len(self.index) - 1}")
        i = int(number)
        if i >= len(self.index):
            raise RequestError(HTTPStatus.NOT_FOUND, f"no image {i}: the index holds {len(self.index)} images")
        path = Path(self.index.paths[i])
        try:
            data = path.read_bytes()
        except OSError:
            raise RequestError(HTTPStatus.NOT_FOUND, f"image {i} ({path}) is no longer on disk") from None
        return data, mimetypes.guess_type(path.name)[0] or "application/octet-stream"


@functools.cache
def page_asset(name: str) -> bytes:
    """The bytes of one of the page's files in ``dsanchor/web`` (read once)."""
    return (resources.files("dsanchor") / "web" / name).read_bytes()


def _choice(choice) -> dict[str, Any]:
    return {"g": choice.g, "source": choice.source, "query_type": choice.query_type, "describe": choice.describe()}


class _Handler(BaseHTTPRequestHandler):
    """Routes a request to the server's :class:`ServeApp` and writes its answer (JSON, HTML or an image)."""

    server: DSAServer
    server_version = "dsanchor-serve"

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        url = urlsplit(self.path)
        params = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        app = self.server.app
        if url.path in ASSETS:
            name, ctype = ASSETS[url.path]
            self._send(HTTPStatus.OK, page_asset(name), ctype)
        elif url.path == "/api/info":
            self._answer(app.info)
        elif url.path == "/api/search":
            self._answer(app.search, params)
        elif url.path.startswith("/image/"):
            try:
                data, ctype = app.image_file(url.path[len("/image/"):])
            except RequestError as exc:
                return self._json(exc.status, {"error": str(exc)})
            self._send(HTTPStatus.OK, data, ctype, cache=True)
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no route {url.path} (see /api/info, /api/search)"})

    def do_POST(self) -> None:  # noqa: N802
        url = urlsplit(self.path)
        if url.path != "/api/image":
            return self._json(HTTPStatus.NOT_FOUND, {"error": f"no POST route {url.path} (POST /api/image)"})
        params = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            return self._json(HTTPStatus.BAD_REQUEST, {"error": "bad Content-Length"})
        limit = int(self.server.app.config.max_upload_mb * 2**20)
        if length > limit:
            self.close_connection = True
            return self._json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                              {"error": f"the image is {length / 2**20:.1f} MB; the limit is "
                                        f"{self.server.app.config.max_upload_mb:g} MB"})
        body = self.rfile.read(length) if length else b""
        self._answer(self.server.app.image_query, body, self.headers.get("Content-Type", ""), params)

    def _answer(self, route, *args) -> None:
        """Run a route and send its JSON; a refused request or a project error is a 400 line, a bug a 500 line."""
        try:
            out = route(*args)
        except RequestError as exc:
            return self._json(exc.status, {"error": str(exc)})
        except DsanchorError as exc:
            return self._json(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
        except Exception as exc:
            log.exception("%s %s failed", self.command, self.path)
            return self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"server error: {type(exc).__name__}: "
                                                                          f"{exc}".splitlines()[0]})
        self._json(HTTPStatus.OK, out)

    def _json(self, status: int, data: dict[str, Any]) -> None:
        self._send(status, json.dumps(data).encode(), "application/json")

    def _send(self, status: int, body: bytes, ctype: str, cache: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "max-age=3600" if cache else "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (http.server's signature)
        log.debug("%s " + format, self.address_string(), *args)


class DSAServer(ThreadingHTTPServer):
    """A :class:`ThreadingHTTPServer` that answers with a :class:`ServeApp` (``server.app``)."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], app: ServeApp):
        self.app = app
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}/"


def make_server(index_dir: str | Path, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, pipeline=None,
                config: ServeConfig | None = None) -> DSAServer:
    """Load the index (and its pipeline, or ``pipeline``: a saved folder or a loaded
    :class:`~dsanchor.pipeline.DSAPipeline`) and bind a server to ``host:port`` without serving yet.

    Port 0 takes any free port (``server.url`` says which). The encoder is built before this returns. Call
    ``serve_forever()`` (in a thread, for tests) and ``shutdown()`` + ``server_close()`` to stop.
    """
    from dsanchor.errors import ConfigError
    from dsanchor.index import load_index
    from dsanchor.pipeline import load

    if isinstance(pipeline, (str, Path)):
        pipeline = load(pipeline)
    index, pipe = load_index(index_dir, pipeline)
    app = ServeApp(index, pipe, config)
    try:
        server = DSAServer((host, port), app)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); pick another --port") from None
    try:
        app.warm()
    except BaseException:
        server.server_close()
        raise
    return server


def serve(index_dir: str | Path, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, pipeline=None,
          config: ServeConfig | None = None) -> None:
    """Serve the page for ``index_dir`` on ``host:port`` until interrupted (see :func:`make_server`)."""
    server = make_server(index_dir, host, port, pipeline, config)
    print(f"dsanchor serve: {len(server.app.index)} images at {server.url} (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
