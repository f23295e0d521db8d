"""`dsanchor serve`: the JSON API and the page's files over HTTP (a server on port 0 in a thread). Built on a tiny
random CLIP encoder and randomly initialised parts (seconds, no downloads). The page in headless Chromium is
tests/test_page.py; :func:`_browser` (shared with it) starts the browser or skips saying what is missing.
"""

from __future__ import annotations

import json
import shutil
import threading
import urllib.error
import urllib.request

import pytest

from dsanchor.cli import main as cli_main
from dsanchor.errors import ConfigError

QUERY = "a large green metal sphere"


def _images(parts):
    return sorted((parts / "synth" / "images").glob("*.png"))


def _start(index_dir, pipeline):
    from dsanchor.serve import make_server

    server = make_server(index_dir, port=0, pipeline=pipeline)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def server(parts, pipe):
    """A server on a dataset index (it holds captions) of the tiny pipeline (it has a decoder)."""
    from dsanchor.index import build_index

    build_index(pipe, data=parts / "synth", format="synth", out=parts / "idx", workers=0, progress=False)
    srv = _start(parts / "idx", parts / "pipe")
    yield srv
    srv.shutdown()
    srv.server_close()


def _call(srv, path: str, body: bytes | None = None, ctype: str | None = None):
    """(status, headers, payload): the JSON of a JSON answer, else its bytes."""
    req = urllib.request.Request(srv.url.rstrip("/") + path, data=body, headers={"Content-Type": ctype} if ctype
                                 else {}, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=60) as res:
            status, headers, data = res.status, res.headers, res.read()
    except urllib.error.HTTPError as err:
        status, headers, data = err.code, err.headers, err.read()
    return status, headers, json.loads(data) if headers["Content-Type"] == "application/json" else data


def test_page_and_info(server, parts):
    status, headers, page = _call(server, "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    html = page.decode()
    for element in ('id="q"', 'id="search"', 'id="g"', 'type="range"', 'step="0.01"', 'id="use-controller"',
                    "checked", 'type="file"', 'id="results"', 'id="error"', 'id="image-error"', 'id="g-used"',
                    'id="note"', '<script src="/page.js">', 'href="/page.css"', 'rel="icon"'):
        assert element in html
    for path, ctype in (("/page.js", "text/javascript"), ("/page.css", "text/css")):
        status, headers, text = _call(server, path)
        assert status == 200 and headers["Content-Type"].startswith(ctype) and len(text) > 500
        html += text.decode()
    assert "http://" not in html and "https://" not in html  # self-contained: nothing fetched from elsewhere
    status, _, info = _call(server, "/api/info")
    assert status == 200 and info["images"] == len(_images(parts))
    assert info["has_captions"] and info["has_decoder"] and info["has_controller"]
    assert info["max_query_chars"] == server.app.config.max_query_chars == 300


@pytest.mark.parametrize("path", ["/favicon.ico", "/favicon.svg"])
def test_favicon(server, path):
    status, headers, data = _call(server, path)
    assert status == 200 and headers["Content-Type"] == "image/svg+xml" and data.startswith(b"<svg")


def test_long_query_is_cut_with_a_note(server, pipe):
    from urllib.parse import quote

    words = (QUERY + " ") * 400  # 10,800 characters
    status, _, out = _call(server, "/api/search?k=3&q=" + quote(words[:10_000]))
    assert status == 200 and out["query_chars"] == 10_000 and len(out["query"]) <= 300
    assert out["query"] == words[:300].rstrip() and out["cut"] == "query cut to 300 characters (it had 10,000)"
    expected = pipe.search(words[:300].rstrip(), server.app.index, k=3)  # the cut text is what was searched
    assert [r["path"] for r in out["results"]] == [h.path for h in expected]
    status, _, exact = _call(server, "/api/search?k=3&q=" + quote("x" * 300))
    assert status == 200 and exact["cut"] is None and exact["query_chars"] == 300 and exact["query"] == "x" * 300


def test_serve_config_from_flags_and_its_checks(server, tmp_path, capsys):
    from dsanchor.cli import build_parser
    from dsanchor.config import resolve_config
    from dsanchor.serve import ServeApp, ServeConfig

    args = build_parser().parse_args(["serve", "--index", "x", "--max-query-chars", "10", "--k", "3"])
    config = resolve_config(ServeConfig, args, {}, section="serve")
    assert (config.max_query_chars, config.k, config.max_k) == (10, 3, 200)
    app = ServeApp(server.app.index, server.app.pipe, config)
    assert app._query({"q": " a large green sphere "}) == ("a large gr", 20, "query cut to 10 characters (it had 20)")
    for bad, match in ((["--max-query-chars", "0"], "max_query_chars must be >= 1"),
                       (["--k", "300"], "must be <= max_k")):
        assert cli_main(["serve", "--index", str(tmp_path / "none"), "--port", "0", *bad]) == 2
        assert match in capsys.readouterr().err


def test_a_bug_is_a_500_line(server, monkeypatch):
    def broken(*args):
        raise RuntimeError("the index moved\nsecond line")

    monkeypatch.setattr(server.app, "search", broken)
    status, _, out = _call(server, "/api/search?q=a+cube")
    assert status == 500 and out["error"] == "server error: RuntimeError: the index moved"


def test_search_matches_the_pipeline(server, pipe):
    status, _, out = _call(server, "/api/search?q=a+large+green+metal+sphere&k=3")
    assert status == 200 and out["source"] == "controller" and out["query_type"] in (0, 1)
    expected = pipe.search(QUERY, server.app.index, k=3)
    assert [r["path"] for r in out["results"]] == [h.path for h in expected]
    assert [r["score"] for r in out["results"]] == pytest.approx([h.score for h in expected])
    assert [r["rank"] for r in out["results"]] == [1, 2, 3] and out["g"] == expected[0].g
    assert out["describe"] == pipe.choose_g(text=QUERY).describe()
    for r in out["results"]:
        assert set(r) == {"path", "url", "score", "g", "rank"} and r["g"] == out["g"]
        assert server.app.index.paths[int(r["url"].removeprefix("/image/"))] == r["path"]
    status, _, given = _call(server, "/api/search?q=a+large+green+metal+sphere&k=4&g=0.3")
    assert status == 200 and len(given["results"]) == 4 and given["source"] == "given"
    assert given["describe"] == "g = 0.30 (given)" and {r["g"] for r in given["results"]} == {0.3}
    status, _, many = _call(server, "/api/search?q=a+cube&k=50")  # more than the index holds
    assert status == 200 and len(many["results"]) == len(server.app.index)


def test_image_query_gives_the_controllers_g_captions_and_index_captions(server, parts, pipe):
    img = _images(parts)[0]
    status, _, out = _call(server, "/api/image", img.read_bytes(), "image/png")
    assert status == 200, out
    want = pipe.choose_g(image=img)
    assert out["source"] == "controller" and out["g"] == pytest.approx(want.g) and out["query_type"] in (2, 3)
    assert out["controller"]["g"] == out["g"] and out["describe"] == out["controller"]["describe"]
    assert set(out["captions"]) == {"scene", "object"} and all(isinstance(c, str) for c in out["captions"].values())
    assert len(out["index_captions"]) == server.app.config.caption_k
    scores = [c["score"] for c in out["index_captions"]]
    assert scores == sorted(scores, reverse=True)
    status, _, given = _call(server, "/api/image?g=0.7&k=2", img.read_bytes(), "image/png")
    assert status == 200 and given["g"] == 0.7 and given["source"] == "given" and len(given["index_captions"]) == 2
    assert given["controller"]["g"] == pytest.approx(want.g)  # the controller's pick is still shown
    assert given["captions"] == pipe.caption(img, g=0.7)[0]["captions"]


def test_image_files_are_served_by_number_only(server):
    index = server.app.index
    status, headers, data = _call(server, "/image/0")
    assert status == 200 and headers["Content-Type"] == "image/png"
    assert data == open(index.paths[0], "rb").read()
    for bad in (f"/image/{len(index)}", "/image/-1", "/image/..%2F..%2Fetc%2Fpasswd", "/image/../api/info",
                "/image/", "/nowhere"):
        status, _, out = _call(server, bad)
        assert status == 404 and "error" in out, bad


@pytest.mark.parametrize(("path", "body", "ctype", "match"), [
    ("/api/search?q=", None, None, "query is empty"),
    ("/api/search?q=%20%20&k=3", None, None, "query is empty"),
    ("/api/search?k=3", None, None, "query is empty"),
    ("/api/search?q=a+cube&g=1.5", None, None, r"\[0, 1\]"),
    ("/api/search?q=a+cube&g=-0.1", None, None, r"\[0, 1\]"),
    ("/api/search?q=a+cube&g=nan", None, None, r"\[0, 1\]"),
    ("/api/search?q=a+cube&g=abc", None, None, "number"),
    ("/api/search?q=a+cube&k=0", None, None, "k must lie"),
    ("/api/search?q=a+cube&k=ten", None, None, "whole number"),
    ("/api/image", b"certainly not a png", "image/png", "not a readable image"),
    ("/api/image", b"", "image/png", "no image"),
    ("/api/image", b"--x\r\n", "multipart/form-data; boundary=x", "raw bytes"),
    ("/api/image?g=2", b"x", "image/png", "not a readable image"),
])
def test_bad_input_is_a_400_line(server, path, body, ctype, match):
    import re

    status, _, out = _call(server, path, body, ctype)
    assert status == 400 and re.search(match, out["error"]) and "\n" not in out["error"]


def test_bad_g_on_a_good_image_is_a_400(server, parts):
    status, _, out = _call(server, "/api/image?g=1.2", _images(parts)[0].read_bytes(), "image/png")
    assert status == 400 and "[0, 1]" in out["error"]


def test_folder_index_without_decoder_answers_nulls(parts, pipe, tmp_path):
    from dsanchor.index import build_index
    from dsanchor.pipeline import _replace

    build_index(pipe, parts / "synth" / "images", tmp_path / "idx", workers=0, progress=False)
    srv = _start(tmp_path / "idx", _replace(pipe, decoder=None))
    try:
        _, _, info = _call(srv, "/api/info")
        assert not info["has_captions"] and not info["has_decoder"]
        status, _, out = _call(srv, "/api/image", _images(parts)[1].read_bytes(), "image/png")
        assert status == 200 and out["captions"] is None and out["index_captions"] is None
        assert out["source"] == "controller"
    finally:
        srv.shutdown()
        srv.server_close()


def test_busy_port_and_bad_index_are_one_line_errors(server, parts, tmp_path, capsys):
    from dsanchor.cli import build_parser
    from dsanchor.serve import DEFAULT_PORT, make_server

    host, port = server.server_address[:2]
    with pytest.raises(ConfigError, match="cannot listen"):
        make_server(parts / "idx", host=host, port=port, pipeline=server.app.pipe)
    args = build_parser().parse_args(["serve", "--index", "x"])
    assert (args.port, args.host, args.pipeline) == (DEFAULT_PORT, "127.0.0.1", None)
    assert cli_main(["serve", "--index", str(tmp_path / "none"), "--port", "0"]) == 2
    assert "not a dsanchor index" in capsys.readouterr().err


# ---- the browser (tests/test_page.py drives the page in it) ----------------------------------------------------


def _browser(width: int = 1280, height: int = 900):
    """A headless Chromium driver (its console kept for ``get_log("browser")``), or skip saying what is missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs selenium (pip install "
                                                                 "-e .[dev])")
    chromium = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)),
                    None)
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.skip("the browser test needs the chromium and chromedriver binaries "
                    "(apt-get install chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--window-size={width},{height}"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=driver))
