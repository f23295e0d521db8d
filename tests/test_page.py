"""The page of `dsanchor serve` in a real headless Chromium: the g slider re-runs the query and the header says
which g was used and why, a failed upload clears the previous result, a long query is cut with a note, a narrow
window stacks the panels, and the favicon is there. On the tiny pipeline of conftest.py (seconds, no downloads).

Needs the ``chromium`` and ``chromedriver`` binaries and the ``selenium`` package (``apt-get install chromium
chromium-driver``, ``pip install -e .[dev]``); skipped without them. With ``DSANCHOR_SCREENSHOT=path.png`` the
first test saves a screenshot of the page after a text query there.
"""

from __future__ import annotations

import os

import pytest
from test_serve import QUERY, _browser, _images, _start

K = 4
WAIT_S = 30  # the longest any step may take (each takes well under a second here)


@pytest.fixture(scope="module")
def page_server(parts, pipe):
    """A server on a dataset index of the tiny pipeline (it has a controller and a decoder)."""
    from dsanchor.index import build_index

    build_index(pipe, data=parts / "synth", format="synth", out=parts / "idx-page", workers=0, progress=False)
    srv = _start(parts / "idx-page", parts / "pipe")
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def browser():
    driver = _browser()
    yield driver
    driver.quit()


@pytest.fixture
def page(browser, page_server):
    """The page, freshly loaded at 1280x900 (its info line shown); after the test, its console holds no error."""
    browser.set_window_size(1280, 900)
    browser.get(page_server.url)
    _wait(browser, lambda: "images" in _text(browser, "info"))
    browser.get_log("browser")  # start the console from here
    yield browser
    errors = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []


def _wait(driver, condition, timeout: float = WAIT_S):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda _: condition())


def _text(driver, element_id: str) -> str:
    return driver.execute_script(f"return document.getElementById('{element_id}').textContent")


def _items(driver, css: str) -> list[str]:
    return driver.execute_script(f"return [...document.querySelectorAll('{css}')].map(e => e.textContent)")


def _search(driver, query: str, k: int = K) -> None:
    """Type ``query`` (set at once, not key by key), ask for ``k`` results and submit."""
    from selenium.webdriver.common.by import By

    driver.execute_script("document.getElementById('q').value = arguments[0]", query)
    driver.find_element(By.ID, "k").clear()
    driver.find_element(By.ID, "k").send_keys(str(k))
    driver.find_element(By.ID, "search").click()


def _count_requests(driver) -> None:
    """From now on, ``window.requests`` counts the page's calls of /api/search and /api/image."""
    driver.execute_script("""window.requests = {search: 0, image: 0}; const f = window.fetch;
        window.fetch = (url, opts) => { window.requests[url.startsWith('/api/search') ? 'search' : 'image']++;
                                        return f(url, opts); };""")


def _move_slider(driver, steps: int) -> float:
    """Press an arrow key ``steps`` times on the slider (left when it is above 0.5, else right), quickly enough
    for one debounced re-run; the slider's new g."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    slider = driver.find_element(By.ID, "g")
    key = Keys.ARROW_LEFT if float(slider.get_attribute("value")) > 0.5 else Keys.ARROW_RIGHT
    slider.send_keys(*[key] * steps)
    return float(slider.get_attribute("value"))


def _controller_label(choice) -> str:
    return f"g = {choice.g:.2f} (chosen by the controller, query type {choice.query_type})"


def test_slider_reruns_the_search_and_the_header_says_which_g(page, page_server):
    from selenium.webdriver.common.by import By

    pipe = page_server.app.pipe
    choice = pipe.choose_g(text=QUERY)
    _search(page, QUERY)
    _wait(page, lambda: len(_items(page, "#results .hit")) == K)
    shot = os.environ.get("DSANCHOR_SCREENSHOT")
    if shot:
        page.save_screenshot(shot)
    assert _text(page, "g-used") == _controller_label(choice)
    assert float(_text(page, "g-value")) == pytest.approx(choice.g, abs=0.005)  # the slider shows the g used
    assert _items(page, ".hit .g") == [f"g {choice.g:.2f}"] * K
    _count_requests(page)
    g = _move_slider(page, 5)
    _wait(page, lambda: _text(page, "g-used") == f"g = {g:.2f} (set by the slider)")
    assert abs(g - choice.g) >= 0.04 and not page.find_element(By.ID, "use-controller").is_selected()
    _wait(page, lambda: _items(page, ".hit .g") == [f"g {g:.2f}"] * K)
    hits = pipe.search(QUERY, page_server.app.index, k=K, g=g)
    assert [s.split()[-1] for s in _items(page, ".hit .score")] == [f"{h.score:.3f}" for h in hits]
    requests = page.execute_script("return window.requests")  # 5 moves: one re-run (two if the keys were slow)
    assert 1 <= requests["search"] <= 2 and requests["image"] == 0
    page.find_element(By.ID, "use-controller").click()  # back to the controller's g
    _wait(page, lambda: _text(page, "g-used") == _controller_label(choice))
    assert float(_text(page, "g-value")) == pytest.approx(choice.g, abs=0.005)
    assert _items(page, ".hit .g") == [f"g {choice.g:.2f}"] * K


def test_slider_reruns_the_image_query(page, page_server, parts):
    from selenium.webdriver.common.by import By

    pipe, image = page_server.app.pipe, _images(parts)[0]
    choice = pipe.choose_g(image=image)
    page.find_element(By.ID, "file").send_keys(str(image))
    _wait(page, lambda: len(_items(page, "#captions li")) == 2)
    assert _text(page, "image-g") == _controller_label(choice)
    assert float(_text(page, "g-value")) == pytest.approx(choice.g, abs=0.005)  # no text query: it follows the image
    g = _move_slider(page, 5)
    _wait(page, lambda: _text(page, "image-g").startswith(f"g = {g:.2f} (set by the slider)"))
    assert f"the controller would pick {choice.g:.2f}" in _text(page, "image-g")
    _wait(page, lambda: len(_items(page, "#captions li")) == 2)
    want = pipe.caption(image, g=g)[0]["captions"]
    assert _items(page, "#captions li") == [f"{k}: {v}" for k, v in want.items()]


def _upload_good_image(page, image) -> list[str]:
    from selenium.webdriver.common.by import By

    page.find_element(By.ID, "file").send_keys(str(image))
    _wait(page, lambda: len(_items(page, "#captions li")) == 2)
    return _items(page, "#captions li")


def _assert_only_the_error(page, match: str) -> None:
    """The image panel shows one line of error containing ``match`` and nothing of the previous image."""
    _wait(page, lambda: _text(page, "image-error") != "")
    assert match in _text(page, "image-error") and "\n" not in _text(page, "image-error")
    line = page.execute_script("const e = document.getElementById('image-error'); return [e.clientHeight, "
                               "parseFloat(getComputedStyle(e).lineHeight) + 12.5]")
    assert line[0] <= line[1]  # one line high (its padding aside)
    assert _items(page, "#captions li") == [] and _items(page, "#index-captions li") == []
    assert _text(page, "image-g") == ""
    assert page.execute_script("return document.getElementById('captions-box').hidden "
                               "&& document.getElementById('index-captions-box').hidden")


def test_failed_upload_clears_the_previous_result(page, page_server, parts, tmp_path, monkeypatch):
    from selenium.webdriver.common.by import By

    _upload_good_image(page, _images(parts)[0])
    bad = tmp_path / "notes.txt"
    bad.write_text("certainly not an image\n" * 20)
    page.find_element(By.ID, "file").send_keys(str(bad))
    _assert_only_the_error(page, "notes.txt: the body is not a readable image")
    _wait(page, lambda: not page.find_element(By.ID, "preview").is_displayed())  # no broken picture either
    page.get_log("browser")  # the broken preview's load error is expected

    _upload_good_image(page, _images(parts)[1])
    assert _text(page, "image-error") == ""

    def broken(*args):
        raise RuntimeError("the decoder fell over\nsecond line")

    monkeypatch.setattr(page_server.app, "image_query", broken)
    page.find_element(By.ID, "file").send_keys(str(_images(parts)[2]))
    _assert_only_the_error(page, "server error: RuntimeError: the decoder fell over")
    page.get_log("browser")  # the 500 is expected


def test_long_query_is_cut_with_a_note(page):
    long = (QUERY + " ") * 400
    _search(page, long[:10_000])
    _wait(page, lambda: len(_items(page, "#results .hit")) == K)
    assert _text(page, "note") == "query cut to 300 characters (it had 10,000)"
    summary = _text(page, "summary")
    assert len(summary) < 200 and summary.endswith("\u2026\u201d")  # the query is not echoed whole
    _search(page, QUERY)
    _wait(page, lambda: page.execute_script("return document.getElementById('note').hidden"))


def test_failed_search_clears_the_previous_results(page):
    _search(page, QUERY)
    _wait(page, lambda: len(_items(page, "#results .hit")) == K)
    _search(page, "   ")
    _wait(page, lambda: _text(page, "error") != "")
    assert _text(page, "error") == "search: the query is empty; type what to look for (q=...)"
    assert _items(page, "#results .hit") == [] and _text(page, "summary") == ""
    page.get_log("browser")  # the 400 is expected


def _rects(driver) -> dict:
    return driver.execute_script("""const r = id => document.getElementById(id).getBoundingClientRect().toJSON();
        return {left: r('left'), right: r('right'), width: window.innerWidth,
                scroll: document.documentElement.scrollWidth};""")


def test_narrow_window_stacks_the_panels(page):
    _search(page, QUERY)
    _wait(page, lambda: len(_items(page, "#results .hit")) == K)
    wide = _rects(page)
    assert wide["right"]["left"] >= wide["left"]["right"]  # side by side at 1280
    page.set_window_size(420, 900)
    _wait(page, lambda: _rects(page)["width"] <= 420)
    narrow = _rects(page)
    left, right = narrow["left"], narrow["right"]
    assert 380 <= narrow["width"] <= 420
    assert right["top"] >= left["bottom"]  # stacked: the image panel below the search panel
    for r in (left, right):
        assert r["left"] >= 0 and r["right"] <= narrow["width"] and r["width"] >= narrow["width"] - 40
    assert narrow["scroll"] <= narrow["width"]  # nothing sticks out sideways


def test_favicon(page):
    icon = page.execute_script("return document.querySelector('link[rel=icon]').href")
    assert icon == page.current_url.rstrip("/") + "/favicon.svg"
    got = page.execute_async_script("""const done = arguments[arguments.length - 1];
        Promise.all(['/favicon.ico', '/favicon.svg'].map(u => fetch(u).then(r => [r.status,
            r.headers.get('Content-Type')]))).then(done);""")
    assert got == [[200, "image/svg+xml"], [200, "image/svg+xml"]]


def test_out_of_domain_note_in_the_result_headers(page, page_server, parts, monkeypatch):
    """A query and an upload beyond the pipeline's domain thresholds get one line each in their result header;
    a query within them clears it."""
    import dataclasses

    from selenium.webdriver.common.by import By

    pipe = page_server.app.pipe
    monkeypatch.setattr(pipe, "domain", dataclasses.replace(pipe.domain, image_threshold=-1.0, text_threshold=2.0))
    _search(page, "a dog sitting on a bed")
    _wait(page, lambda: _text(page, "domain-note").startswith("note: this query looks unlike the pipeline's"))
    assert page.find_element(By.ID, "domain-note").is_displayed()
    height = page.execute_script("const e = document.getElementById('domain-note'); return [e.clientHeight, "
                                 "parseFloat(getComputedStyle(e).lineHeight) + 8.5]")
    assert height[0] <= height[1]  # one line
    page.find_element(By.ID, "file").send_keys(str(_images(parts)[0]))
    _wait(page, lambda: _text(page, "image-note").startswith("note: this image looks unlike the pipeline's"))
    monkeypatch.setattr(pipe, "domain", dataclasses.replace(pipe.domain, image_threshold=9.0, text_threshold=-9.0))
    _search(page, QUERY)
    _wait(page, lambda: page.execute_script("return document.getElementById('domain-note').hidden"))
    assert "trained on" in _text(page, "info")
