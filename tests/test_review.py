"""weakshot review in a real browser (headless Chromium from Debian's packages, driven by Selenium): the page
loads from disk, every thumbnail resolves, filters change what is shown, and rejections saved from the page make
retrain read exactly those pseudo-labels as ignore, base masks untouched."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import TINY, assert_user_error, run_cli, snapshot
from weakshot_cli.data.dataset import item_label
from weakshot_cli.data.manifest import load_manifest
from weakshot_cli.data.rejections import read_rejections

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
# CI installs both (.ci/run); elsewhere the browser test is skipped when they are missing
needs_browser = pytest.mark.skipif(not (CHROMIUM and DRIVER) and not os.environ.get("CI"),
                                   reason="needs chromium and chromedriver (apt-get install chromium chromium-driver)")


@pytest.fixture(scope="module")
def reviewed(tiny_ckpt, synth, tmp_path_factory) -> Path:
    """A pseudo-labelled copy of the synthetic dataset and its review site."""
    pl = tmp_path_factory.mktemp("review") / "pl"
    r = run_cli("pseudolabel", tiny_ckpt, synth, "-o", pl, "--device", "cpu", "--imgsz", "64", "--amp", "off")
    assert r.returncode == 0, r.stderr
    r = run_cli("review", pl)
    assert r.returncode == 0, r.stderr
    assert f"Review: open {pl / 'review' / 'index.html'}" in r.stdout
    return pl


def _data(pl: Path) -> dict:
    return json.loads((pl / "review" / "data.js").read_text().removeprefix("const REVIEW = ").rstrip().rstrip(";"))


def test_the_site_lists_every_image_most_doubtful_first(reviewed):
    data = _data(reviewed)
    m = load_manifest(reviewed)
    assert sorted(r["label"] for r in data["images"]) == sorted(it.label for it in m.splits["train"])
    doubts = [r["doubt"] for r in data["images"]]
    assert doubts == sorted(doubts)
    for r in data["images"]:
        for key in ("thumb", "overlay", "image", "truth"):  # benchmark mode: the full mask too
            assert (reviewed / "review" / r[key]).stat().st_size > 0
        stats = json.loads((reviewed / "stats" / "train" / f"{Path(r['label']).stem}.json").read_text())
        assert set(r["classes"]) == set(stats["pseudo"])
    assert_user_error(run_cli("review", reviewed), "already holds a review; pass --exist-ok")
    assert_user_error(run_cli("review", reviewed.parent / "missing"), "missing")


def test_a_non_pseudo_labelled_dataset_is_refused(synth, tmp_path):
    before = snapshot(synth.parent)
    assert_user_error(run_cli("review", synth, "-o", tmp_path / "r"), "review needs a pseudo-labelled dataset")
    assert snapshot(synth.parent) == before and not (tmp_path / "r").exists()


def _browser(download: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000"):
        options.add_argument(arg)
    options.add_experimental_option("prefs", {"download.default_directory": str(download),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(download)})
    return driver


@needs_browser
def test_filter_reject_save_and_retrain_without_them(reviewed, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    data, m = _data(reviewed), load_manifest(reviewed)
    download = tmp_path / "downloads"
    download.mkdir()
    driver = _browser(download)
    try:
        driver.get((reviewed / "review" / "index.html").as_uri())
        cards = driver.find_elements(By.CSS_SELECTOR, ".card")
        assert len(cards) == min(100, len(data["images"]))  # one page
        assert [c.get_attribute("data-label") for c in cards] == [r["label"] for r in data["images"][:100]]
        loaded = driver.execute_async_script("""
            const done = arguments[arguments.length - 1];
            const srcs = REVIEW.images.map((r) => r.thumb);
            let ok = 0, seen = 0;
            for (const src of srcs) {
              const img = new Image();
              img.onload = () => { ok += img.naturalWidth > 0; if (++seen === srcs.length) done(ok); };
              img.onerror = () => { if (++seen === srcs.length) done(ok); };
              img.src = src;
            }""")
        assert loaded == len(data["images"])  # every thumbnail of every page resolves
        star = [r for r in data["images"] if "star" in r["classes"] or "star" in r["untagged"]]
        Select(driver.find_element(By.ID, "class")).select_by_value("star")
        cards = driver.find_elements(By.CSS_SELECTOR, ".card")
        assert [c.get_attribute("data-label") for c in cards] == [r["label"] for r in star[:100]]
        assert f"({len(star)} images)" in driver.find_element(By.ID, "page").text
        Select(driver.find_element(By.ID, "class")).select_by_value("")
        first, second = data["images"][0], next(r for r in data["images"][1:] if r["classes"])
        driver.find_element(By.CSS_SELECTOR, f'.card[data-label="{first["label"]}"] .reject').click()
        chip_class = next(iter(second["classes"]))
        driver.find_element(By.CSS_SELECTOR, f'.card[data-label="{second["label"]}"] .chip[data-cls="{chip_class}"]'
                            ).click()
        assert driver.find_element(By.ID, "count").text == "2 rejected"
        driver.find_element(By.ID, "save").click()
        saved = download / "rejections.json"
        for _ in range(100):
            if saved.exists():
                break
            time.sleep(0.1)
    finally:
        driver.quit()
    rejections = json.loads(saved.read_text())
    assert rejections["images"] == {first["label"]: None, second["label"]: [chip_class]}
    # retrain reads those pseudo-labels as ignore: the first image's novel pixels, the second's one class
    m.rejected = read_rejections(saved, m)
    for r, dropped in ((first, set(m.novel)), (second, {m.classes.index(chip_class)})):
        item = next(it for it in m.splits["train"] if it.label == r["label"])
        raw = np.asarray(Image.open(m.resolve(item.label)))
        read = item_label(m, item, raw.shape)
        gone = np.isin(raw, sorted(dropped))
        assert (read[gone] == 255).all() and np.array_equal(read[~gone], raw[~gone])
    r = run_cli("retrain", reviewed, *TINY, "--iters", "1", "--reject", saved, "--project", tmp_path / "runs")
    assert r.returncode == 0, r.stderr
    assert "--reject: the pseudo-labels of 1 images dropped, and 1 classes' in 1 more" in " ".join(r.stdout.split())
    assert json.loads((tmp_path / "runs" / "retrain" / "retrain" / "config.json").read_text())["reject"] == str(saved)


def test_rejections_for_another_dataset_or_unknown_labels_are_refused(reviewed, tmp_path):
    path = tmp_path / "rejections.json"
    m = load_manifest(reviewed)
    label = m.splits["train"][0].label
    for images, dataset, says in (({"labels/train/nope.png": None}, str(reviewed), "is not a training label"),
                                  ({label: ["zebra"]}, str(reviewed), "must be a list of class names"),
                                  ({label: None}, "/elsewhere", "saved for another dataset")):
        path.write_text(json.dumps({"kind": "weakshot-rejections", "dataset": dataset, "images": images}))
        assert_user_error(run_cli("retrain", reviewed, *TINY, "--iters", "1", "--reject", path, "--project",
                                  tmp_path / "runs"), str(path), says)
    assert not (tmp_path / "runs").exists()


@needs_browser
def test_ten_thousand_images_open_as_pages(reviewed, tmp_path):
    """The page holds 10,000 records (the site's own, repeated) and shows 100 at a time."""
    from selenium.webdriver.common.by import By

    site = tmp_path / "review"
    shutil.copytree(reviewed / "review", site)
    data = _data(reviewed)
    records = data["images"]
    data["images"] = [dict(records[i % len(records)], label=f"labels/train/{i:06d}.png") for i in range(10_000)]
    (site / "data.js").write_text("const REVIEW = " + json.dumps(data) + ";\n")
    driver = _browser(tmp_path)
    try:
        driver.get((site / "index.html").as_uri())
        assert len(driver.find_elements(By.CSS_SELECTOR, ".card")) == 100
        assert driver.find_element(By.ID, "page").text == "page 1 of 100 (10000 images)"
        driver.find_element(By.ID, "next").click()
        assert driver.find_elements(By.CSS_SELECTOR, ".card")[0].get_attribute("data-label") == "labels/train/000100.png"
    finally:
        driver.quit()
