"""A small local web page for a trained DSA over an index (``dsanchor serve``), on the standard library only.

:class:`ServeApp` answers the requests (it knows nothing of HTTP, so it is tested directly);
:func:`make_server` wraps it in a :class:`http.server.ThreadingHTTPServer` without blocking and :func:`serve`
runs that until Ctrl-C. The routes::

    GET  /                       one self-contained HTML page (inline CSS and JS, nothing fetched elsewhere)
    GET  /api/info               {"images", "has_captions", "has_decoder", "has_controller", "fixed_g", ...}
    GET  /api/search?q=..&k=10&g=0.3
                                 {"results": [{"path", "url", "score", "g", "rank"}], "g", "source",
                                  "query_type", "describe"}; without g the controller chooses
    POST /api/image?g=0.3&k=5    body: the raw bytes of one image file (Content-Type image/*, not a form)
                                 {"g", "source", "query_type", "describe", "controller": {"g", "query_type",
                                  "describe"}, "captions": {granularity: text} or null,
                                  "index_captions": [{"caption", "score"}] or null}
    GET  /image/<i>              the i-th indexed image file (only indexed files are served)

Bad input (an empty query, g outside [0, 1], k < 1, a body that is not an image) answers HTTP 400 with
``{"error": "one line"}``; an unknown route 404. The pipeline is not thread-safe (the encoder is built on first
use), so requests run it one at a time under a lock.
"""

from __future__ import annotations

import io
import json
import logging
import math
import mimetypes
import threading
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from dsanchor.errors import DsanchorError

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "DSAServer", "RequestError", "ServeApp", "ServeConfig", "make_server",
           "serve"]

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


@dataclass(frozen=True)
class ServeConfig:
    """What the API does when a request does not say."""

    k: int = 10  # results per search without ?k=
    max_k: int = 200  # the most results (or index captions) one request may ask for
    m: int = 100  # faiss first-stage candidates re-ranked by DSA (raised to k when k is larger)
    caption_k: int = 5  # index captions ranked for an uploaded image without ?k=
    max_upload_mb: float = 20.0  # the largest image body POST /api/image accepts


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
                "index": str(self.index.folder) if self.index.folder else None,
                "pipeline": str(pipe.path) if pipe.path else None}

    def search(self, params: dict[str, str]) -> dict[str, Any]:
        """``GET /api/search``: the top k images for the text ``q``."""
        query = params.get("q", "").strip()
        if not query:
            raise _bad("the query is empty; type what to look for (q=...)")
        k, g = self._k(params, self.config.k), self._g(params)
        with self._lock:
            hits, choice = self.pipe.search_with_choice(query, self.index, k=k, g=g, m=max(self.config.m, k))
        results = [{"path": h.path, "url": f"/image/{self._pos[h.path]}", "score": h.score, "g": h.g,
                    "rank": h.rank} for h in hits]
        return {"query": query, "results": results, **_choice(choice)}

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
        return {**_choice(used), "controller": {key: v for key, v in _choice(controller).items() if key != "source"},
                "size": list(image.size), "captions": captions, "index_captions": ranked}

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
        if url.path in ("/", "/index.html"):
            self._send(HTTPStatus.OK, PAGE.encode(), "text/html; charset=utf-8")
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


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>DSA search</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f4f5f7;color:#222}
header{background:#263238;color:#fff;padding:10px 18px}header h1{font-size:18px;margin:0 8px 0 0;display:inline}
#info{color:#b0bec5}main{display:flex;gap:16px;padding:14px 18px;align-items:flex-start}
section{background:#fff;border-radius:6px;padding:12px;box-shadow:0 1px 2px #0002}
#left{flex:1;min-width:0}#right{width:330px}
.row{display:flex;gap:8px;align-items:center;flex-wrap:wrap;margin-bottom:8px}
#q{flex:1;min-width:200px;padding:6px 8px;font-size:15px}#k{width:56px;padding:5px}
button{padding:6px 14px;background:#1565c0;color:#fff;border:0;border-radius:4px;cursor:pointer}
#g{width:180px}#g-value{font-family:monospace;width:36px}
#error{color:#b71c1c;background:#ffebee;padding:6px 8px;border-radius:4px;margin-bottom:8px;white-space:nowrap;
overflow:hidden;text-overflow:ellipsis}
#summary,#image-g{font-weight:600;margin:4px 0 8px}
#results{display:grid;grid-template-columns:repeat(auto-fill,minmax(132px,1fr));gap:10px}
.hit{background:#fafafa;border:1px solid #e0e0e0;border-radius:4px;padding:4px;font-size:12px}
.hit img{width:100%;aspect-ratio:1;object-fit:cover;display:block;border-radius:2px}
.hit .meta{display:flex;justify-content:space-between;font-family:monospace}
#preview{width:100%;max-width:220px;display:block;margin:6px 0;border-radius:4px}
ul{padding-left:18px;margin:4px 0}li{margin:2px 0}.muted{color:#757575}h2{font-size:15px;margin:10px 0 4px}
</style></head><body>
<header><h1>Dynamic Semantic Anchoring</h1><span id="info">loading...</span></header>
<main>
<section id="left">
 <form id="search-form" class="row" autocomplete="off">
  <input id="q" placeholder="describe an image, e.g. a large green metal sphere">
  <label>k <input id="k" type="number" min="1" value="10"></label>
  <button id="search" type="submit">Search</button>
 </form>
 <div class="row">
  <label><input id="use-controller" type="checkbox" checked> use the controller's g</label>
  <label>g <input id="g" type="range" min="0" max="1" step="0.05" value="0.5"></label>
  <span id="g-value">0.50</span>
  <span class="muted">(coarse scene 0 &larr; g &rarr; 1 fine regions)</span>
 </div>
 <div id="error" hidden></div>
 <div id="summary"></div>
 <div id="results"></div>
</section>
<section id="right">
 <h2>Image query</h2>
 <input id="file" type="file" accept="image/*">
 <img id="preview" alt="" hidden>
 <div id="image-g"></div>
 <div id="captions-box" hidden><h2>Captions</h2><ul id="captions"></ul></div>
 <div id="index-captions-box" hidden><h2>Top captions from the index</h2><ul id="index-captions"></ul></div>
</section>
</main>
<script>
const $ = id => document.getElementById(id);
function showError(msg) { const e = $("error"); e.textContent = msg; e.title = msg; e.hidden = !msg; }
async function api(url, opts) {
  let res;
  try { res = await fetch(url, opts); } catch (err) { throw new Error("the server did not answer (" + err + ")"); }
  let body = null;
  try { body = await res.json(); } catch (err) { body = null; }
  if (!res.ok) throw new Error((body && body.error) || (res.status + " " + res.statusText));
  return body;
}
function gParam() { return $("use-controller").checked ? "" : "&g=" + Number($("g").value).toFixed(2); }
function el(tag, cls, text) {
  const e = document.createElement(tag); if (cls) e.className = cls; if (text !== undefined) e.textContent = text;
  return e;
}
function list(id, items) {
  const ul = $(id); ul.replaceChildren(...items.map(t => el("li", "", t)));
  $(id + "-box").hidden = items.length === 0;
}
$("g").addEventListener("input", () => {
  $("g-value").textContent = Number($("g").value).toFixed(2); $("use-controller").checked = false;
});
$("search-form").addEventListener("submit", async ev => {
  ev.preventDefault(); showError("");
  const url = "/api/search?q=" + encodeURIComponent($("q").value) + "&k=" + encodeURIComponent($("k").value)
    + gParam();
  try {
    const out = await api(url);
    $("summary").textContent = out.results.length + " results for \\u201c" + out.query + "\\u201d: " + out.describe;
    $("results").replaceChildren(...out.results.map(r => {
      const card = el("div", "hit"); card.title = r.path;
      const img = el("img"); img.src = r.url; img.alt = r.path; img.loading = "lazy";
      const meta = el("div", "meta");
      meta.append(el("span", "rank", "#" + r.rank), el("span", "score", r.score.toFixed(3)),
                  el("span", "g", "g " + r.g.toFixed(2)));
      card.append(img, meta); return card;
    }));
  } catch (err) { showError("search: " + err.message); }
});
async function sendImage() {
  const file = $("file").files[0]; if (!file) return;
  showError(""); $("image-g").textContent = "reading the image...";
  try {
    const out = await api("/api/image?" + gParam().slice(1), {method: "POST", body: file,
      headers: {"Content-Type": file.type || "application/octet-stream"}});
    let text = "picked for this image: " + out.controller.describe;
    if (out.source !== "controller") text += "; shown at " + out.describe;
    $("image-g").textContent = text;
    list("captions", out.captions ? Object.entries(out.captions).map(([k, v]) => k + ": " + v) : []);
    list("index-captions",
         out.index_captions ? out.index_captions.map(c => c.score.toFixed(3) + "  " + c.caption) : []);
  } catch (err) { $("image-g").textContent = ""; showError("image: " + err.message); }
}
$("file").addEventListener("change", () => {
  const file = $("file").files[0]; if (!file) return;
  const p = $("preview"); p.src = URL.createObjectURL(file); p.hidden = false; sendImage();
});
$("use-controller").addEventListener("change", sendImage);
$("g").addEventListener("change", sendImage);
window.addEventListener("error", ev => showError("page: " + ev.message));
api("/api/info").then(i => {
  $("info").textContent = i.images + " images" + (i.has_captions ? ", with captions" : "")
    + (i.has_decoder ? ", caption decoder" : "") + (i.has_controller ? ", PPO controller" : ", fixed g " + i.fixed_g);
  $("k").value = i.default_k;
}).catch(err => { $("info").textContent = ""; showError("info: " + err.message); });
</script></body></html>
"""
