"""The leaderboard page in a real browser: tables render, sorting works, images load."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from benchmark.report.leaderboard import render_html
from benchmark.store.cell import CellKey, CellResult

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER),
    reason="Debian's chromium and chromium-driver are not installed (.ci/run installs them)",
)


def cell(model: str, attack: str, gain: float, eps: float) -> CellResult:
    rng = np.random.default_rng(len(model) + int(eps * 1000))
    n = 30
    mos = rng.uniform(0, 1, n)
    clean = np.clip(mos + rng.normal(0, 0.05, n), 0, 1)
    return CellResult(
        key=CellKey(model, "builtin", attack, eps, "up"),
        status="done",
        image_id=np.array([f"i{j}" for j in range(n)], dtype=object),
        mos=mos,
        clean=clean,
        attacked=clean + gain,
        linf=np.full(n, eps),
        l2=np.full(n, 0.5),
        psnr=np.full(n, 40.0),
        ssim=np.full(n, 0.98),
        seconds=np.full(n, 0.01),
        model_info={
            "name": model,
            "lower_better": False,
            "score_range": [0, 1],
            "source": "zoo",
            "kind": "NR",
        },
        attack_config={"name": attack, "norm": "linf", "gradient_free": False},
        meta={"seed": 0},
    )


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--no-first-run",
                 "--disable-sync", "--window-size=1400,1000"):  # fmt: skip
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path=DRIVER)
    driver = webdriver.Chrome(options=options, service=service)
    yield driver
    driver.quit()


def test_page_renders_sorts_and_loads_images(tmp_path: Path, browser):
    gains = {"sturdy": 0.02, "fragile": 0.30, "middling": 0.10, "<b>bold</b>": 0.05}
    cells = [cell(m, a, g * (1 + 0.5 * (a == "pgd")) * (eps * 255 / 4), eps)
             for m, g in gains.items() for a in ("ifgsm", "pgd") for eps in (4 / 255, 8 / 255)]  # fmt: skip
    out = render_html(cells, tmp_path / "leaderboard.html", n_boot=50)
    browser.get(out.as_uri())
    by = webdriver.common.by.By
    tables = browser.find_elements(by.CSS_SELECTOR, "table.sortable")
    assert len(tables) >= 4  # two ranking tables, two matrices, ...
    ranking = tables[0]
    models = [
        r.find_elements(by.TAG_NAME, "td")[1].text
        for r in ranking.find_elements(by.CSS_SELECTOR, "tbody tr")
    ]
    assert models == ["sturdy", "<b>bold</b>", "middling", "fragile"]  # escaped, shown as text

    header = next(
        h for h in ranking.find_elements(by.CSS_SELECTOR, "thead th") if h.text.startswith("Model")
    )
    header.click()
    models = [
        r.find_elements(by.TAG_NAME, "td")[1].text
        for r in ranking.find_elements(by.CSS_SELECTOR, "tbody tr")
    ]
    assert models == sorted(models, key=str.lower)
    header.click()
    models = [
        r.find_elements(by.TAG_NAME, "td")[1].text
        for r in ranking.find_elements(by.CSS_SELECTOR, "tbody tr")
    ]
    assert models == sorted(models, key=str.lower, reverse=True)

    gain = next(
        h
        for h in ranking.find_elements(by.CSS_SELECTOR, "thead th")
        if h.text.startswith("Abs gain")
    )
    gain.click()
    values = [
        float(r.find_elements(by.TAG_NAME, "td")[9].text.split()[0])
        for r in ranking.find_elements(by.CSS_SELECTOR, "tbody tr")
    ]
    assert values == sorted(values)

    images = browser.find_elements(by.TAG_NAME, "img")
    assert len(images) >= 3
    for img in images:
        assert browser.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth > 0", img
        )
