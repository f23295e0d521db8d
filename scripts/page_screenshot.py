"""A screenshot of `dsanchor serve` in headless Chromium: a text query, and optionally an uploaded image.

Usage:
    python scripts/page_screenshot.py --index runs/demo_index --out docs/serve.png \
        --query "a large green metal sphere" [--image some.png] [--width 1280 --height 900]

Needs Debian's chromium and chromium-driver and selenium (the dev extra). Prints the page's header lines so the
screenshot can be checked without opening it.
"""

from __future__ import annotations

import argparse
import shutil
import threading
import time

from dsanchor.serve import make_server

FLAGS = ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync")


def browser(width: int, height: int):
    from selenium import webdriver

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
    for arg in (*FLAGS, f"--window-size={width},{height}"):
        opts.add_argument(arg)
    return webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=shutil.which("chromedriver")))


def wait(driver, condition, timeout: float = 60.0):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda _: condition())


def text(driver, element_id: str) -> str:
    return driver.execute_script(f"const e = document.getElementById('{element_id}'); return e ? e.textContent : ''")


def count(driver, css: str) -> int:
    return driver.execute_script(f"return document.querySelectorAll('{css}').length")


def shoot(index: str, out: str, query: str, image: str | None, k: int, width: int, height: int) -> None:
    from selenium.webdriver.common.by import By

    server = make_server(index, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    driver = browser(width, height)
    try:
        driver.set_window_size(width, height)
        driver.get(server.url)
        wait(driver, lambda: "images" in text(driver, "info"))
        driver.execute_script("document.getElementById('q').value = arguments[0]", query)
        driver.find_element(By.ID, "k").clear()
        driver.find_element(By.ID, "k").send_keys(str(k))
        driver.find_element(By.ID, "search").click()
        wait(driver, lambda: count(driver, "#results .hit") >= min(k, 1))
        if image:
            driver.find_element(By.ID, "file").send_keys(image)
            wait(driver, lambda: count(driver, "#captions li") > 0 or text(driver, "image-error"))
        time.sleep(1.0)  # thumbnails
        driver.execute_script("document.activeElement.blur()")
        driver.save_screenshot(out)
        for element in ("info", "summary", "image-g", "image-error"):
            print(f"{element}: {text(driver, element).strip()}")
    finally:
        driver.quit()
        server.shutdown()
        server.server_close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--index", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--query", default="a large green metal sphere")
    p.add_argument("--image", default=None)
    p.add_argument("--k", type=int, default=12)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=900)
    args = p.parse_args(argv)
    shoot(args.index, args.out, args.query, args.image, args.k, args.width, args.height)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
