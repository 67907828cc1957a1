"""The radiologist's page in a real browser: Debian's chromium driven through the system chromedriver
(selenium; nothing is downloaded), against the session's demo-sized app (tests/web/conftest.py).

Uploads a phantom CXR (with its report) and a phantom CT series (with known PHI planted in its
DICOM headers), waits for the cards, checks k cards with images and both heat maps, highlighted
shared phrases, the CT slice slider, the case record, the token gate, and that no planted PHI
reaches the page, its URLs or the console. Screenshots go to the test's tmp dir; with
``LUNGSEARCH_VIEWER_SCREENSHOTS=<dir>`` they are also copied there (docs/img/viewer/ was made so).
The upload-to-first-cards time is measured in the page (``performance.now()``) over several
uploads; all numbers are on synthetic phantoms with untrained tiny models.
"""

from __future__ import annotations

import os
import statistics
from pathlib import Path

import pytest


def _helpers():
    import importlib.util
    import sys

    name = "lungsearch_tests_reliability_helpers"  # loaded by tests/web/conftest.py already
    if name not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "reliability" / "_reliability.py"
        spec = importlib.util.spec_from_file_location(name, path)
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


R = _helpers()

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.browser]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
K = 5
WAIT_S = 120


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip("needs Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never try to download a browser or driver
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        "--window-size=1360,1000",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    drv = webdriver.Chrome(options=opts, service=Service(executable_path=CHROMEDRIVER))
    drv.set_page_load_timeout(60)
    yield drv
    drv.quit()


def _wait(drv, cond, timeout=WAIT_S, what="condition"):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(drv, timeout, poll_frequency=0.05).until(lambda d: cond(d), message=f"waiting for {what}")


def _by(css):
    from selenium.webdriver.common.by import By

    return By.CSS_SELECTOR, css


def _screenshot(drv, tmp_path: Path, name: str) -> Path:
    out = tmp_path / f"{name}.png"
    drv.save_screenshot(str(out))
    target = os.environ.get("LUNGSEARCH_VIEWER_SCREENSHOTS")
    if target:
        from PIL import Image

        Path(target).mkdir(parents=True, exist_ok=True)
        # a palette PNG keeps the docs' screenshots small
        Image.open(out).convert("RGB").quantize(colors=128).save(Path(target) / f"{name}.png", optimize=True)
    return out


def _open_fresh(drv, url):
    drv.get(url)
    drv.execute_script("sessionStorage.clear()")
    drv.get(url)


def _sign_in(drv, web_app):
    _open_fresh(drv, web_app.http)
    _wait(drv, lambda d: d.find_element(*_by("#login")).is_displayed(), what="the token form")
    drv.find_element(*_by("#token")).send_keys(web_app.read_token)
    drv.find_element(*_by("#login-form button")).click()
    _wait(
        drv,
        lambda d: d.find_element(*_by("#app")).is_displayed() and d.find_elements(*_by("#profile option")),
        what="the signed-in page",
    )


def _select(drv, css, value):
    from selenium.webdriver.support.ui import Select

    Select(drv.find_element(*_by(css))).select_by_value(value)


def _query(drv, *, files, profile, report="", top_k=K):
    drv.execute_script("document.body.removeAttribute('data-cards'); document.body.removeAttribute('data-explained');")
    inp = drv.find_element(*_by("#files"))
    inp.clear()
    inp.send_keys("\n".join(str(f) for f in files))
    _select(drv, "#profile", profile)
    rep = drv.find_element(*_by("#report"))
    rep.clear()
    if report:
        rep.send_keys(report)
    k = drv.find_element(*_by("#topk"))
    k.clear()
    k.send_keys(str(top_k))
    drv.find_element(*_by("#go")).click()
    _wait(drv, lambda d: d.execute_script("return document.body.dataset.cards"), what="the first cards")
    _wait(drv, lambda d: d.execute_script("return document.body.dataset.explained"), what="every card's explanation")


def _img_loaded(drv, el) -> bool:
    return bool(drv.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", el))


def _check_cards(drv, k=K):
    cards = drv.find_elements(*_by(".card"))
    assert len(cards) == k
    for card in cards:
        assert card.get_attribute("data-explained") == "1", card.find_element(*_by(".why")).text
        for cls in (".query-heat", ".case-heat"):
            img = card.find_element(*_by(cls))
            assert img.get_attribute("src").startswith("data:image/png;base64,") and _img_loaded(drv, img)
        assert card.find_element(*_by(".sim")).text.startswith("#")
        assert "model " in card.text and card.find_element(*_by("a.record")).get_attribute("href")
    return cards


def test_no_token_shows_nothing(browser, web_app, tmp_path):
    _open_fresh(browser, web_app.http)
    _wait(browser, lambda d: d.find_element(*_by("#login")).is_displayed(), what="the token form")
    assert not browser.find_element(*_by("#app")).is_displayed()
    assert not browser.find_elements(*_by(".card"))
    # a wrong token is refused and still nothing shows
    browser.find_element(*_by("#token")).send_keys("not-a-valid-token-at-all")
    browser.find_element(*_by("#login-form button")).click()
    _wait(browser, lambda d: d.find_element(*_by("#login-error")).text, what="the refusal")
    assert not browser.find_element(*_by("#app")).is_displayed()
    _screenshot(browser, tmp_path, "no-token")
    # and the API itself answers 401 without a token (the page is not the only gate)
    status = browser.execute_script("return fetch('api/models', {cache: 'no-store'}).then(r => r.status)")
    assert status == 401


def test_cxr_cards_heat_maps_and_phrases(browser, web_app, tmp_path):
    q = web_app.data["cxr"][0]
    _sign_in(browser, web_app)
    _query(browser, files=q["image_paths"], profile="cxr-hash", report=q.get("report") or "")
    cards = _check_cards(browser)
    # the classification table is filled (probabilities + kNN vote)
    assert browser.find_elements(*_by("#classification tbody tr"))
    marked = [
        c for c in cards if c.find_elements(*_by(".case-excerpt mark")) and c.find_elements(*_by(".query-excerpt mark"))
    ]
    assert marked, "no card highlights a phrase shared by both reports"
    for c in marked:
        case_marks = {m.text.lower() for m in c.find_elements(*_by(".case-excerpt mark"))}
        query_marks = {m.text.lower() for m in c.find_elements(*_by(".query-excerpt mark"))}
        assert case_marks and query_marks
    _screenshot(browser, tmp_path, "cxr-cards")


def test_upload_to_first_cards_time(browser, web_app, capsys):
    """p50 over 5 uploads, measured in the page from submit to the cards on screen."""
    _sign_in(browser, web_app)
    browser.execute_script("window.lungsearchTimings.length = 0; window.lungsearchExplainTimings.length = 0")
    for i in range(5):
        q = web_app.data["cxr"][i % 4]
        _query(browser, files=q["image_paths"], profile="cxr-hash", report=q.get("report") or "")
    times = browser.execute_script("return window.lungsearchTimings.slice()")
    explained = browser.execute_script("return window.lungsearchExplainTimings.slice()")
    assert len(times) == 5
    p50 = statistics.median(times)
    load = os.getloadavg()[0]
    with capsys.disabled():
        print(
            f"\nupload-to-first-cards (cxr-hash index of {len(web_app.data['cxr']) - 4 + web_app.filler_rows} "
            f"rows: {len(web_app.data['cxr']) - 4} ingested CXR + {web_app.filler_rows} filler; synthetic "
            f"phantoms, untrained 64-px models): p50 {p50:.0f} ms, all {[round(t) for t in times]} ms; every "
            f"card explained (k={K}): p50 {statistics.median(explained):.0f} ms; load average {load:.2f}"
        )
    assert p50 < 10_000  # a bound that catches a hang; the 1 s target is reported, not asserted on a shared CI box


def test_ct_series_slider_and_no_phi(browser, web_app, tmp_path):
    series = web_app.data["ct"][0]["image_paths"]
    blobs = R.with_phi([Path(p).read_bytes() for p in series])
    folder = tmp_path / "ct-upload"
    folder.mkdir()
    files = []
    for i, b in enumerate(blobs):
        f = folder / f"slice-{i:03d}.dcm"
        f.write_bytes(b)
        files.append(f)
    _sign_in(browser, web_app)
    _query(browser, files=files, profile="ct-ild", top_k=3)
    _check_cards(browser, 3)
    assert browser.find_element(*_by("#query-slider")).is_displayed()
    slider = browser.find_element(*_by("#slice"))
    assert int(slider.get_attribute("max")) == len(files) - 1
    first = browser.find_element(*_by("#query-img")).get_attribute("src")
    browser.execute_script("arguments[0].value = 0; arguments[0].dispatchEvent(new Event('input'))", slider)
    assert browser.find_element(*_by("#query-img")).get_attribute("src") != first
    assert "lung window" in browser.find_element(*_by("#query-slider")).text
    _screenshot(browser, tmp_path, "ct-cards")
    # the case record opens from a card
    browser.find_element(*_by(".card a.record")).click()
    _wait(
        browser,
        lambda d: d.find_element(*_by("#record")).is_displayed() and d.find_elements(*_by("#record-body table")),
        what="the case record",
    )
    assert browser.find_elements(*_by("#record-body img"))
    # no planted PHI anywhere the browser saw: the DOM, the URLs it requested, the console
    page = browser.page_source
    logs = [e["message"] for kind in ("browser", "performance") for e in browser.get_log(kind)]
    urls = [m for m in logs if '"url"' in m]
    found = R.find_needles(
        {"page": page, "console+network": "\n".join(logs), "url": browser.current_url}, R.phi_needles()
    )
    assert not found, found
    assert urls, "the performance log recorded no request (the check above would be vacuous)"
    browser.find_element(*_by("#record form button")).click()
