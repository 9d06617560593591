"""Rankings, the HTML report (escaping, assets, no EXIF), report/inspect commands, and the report
opened in a real headless Chromium."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import TEST_IMAGE_SIZE, make_dataset, make_image
from imagefit.cli.main import main
from imagefit.errors import ConfigError
from imagefit.evaluation.ranking import most_confused, rank_per_class
from imagefit.metrics import classification_metrics
from imagefit.report.html import ReportData, render_report

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def _rows(r, c, gallery):
    return r.row[r.select(c, gallery)].tolist()


def test_rankings_known_order_ties_and_classes_without_errors():
    y = np.array([0, 0, 0, 0, 1, 1])
    p = np.array([[.9, .1], [.6, .4], [.6, .4], [.2, .8], [.1, .9], [.3, .7]])
    r = rank_per_class(y, p, k=3)
    assert _rows(r, 0, "confident") == [0, 1, 2]        # tie between rows 1 and 2 keeps order
    assert _rows(r, 0, "unconfident") == [3, 1, 2]
    assert _rows(r, 0, "wrong") == [3]
    assert _rows(r, 1, "wrong") == []                   # class 1 has no errors
    assert _rows(r, 1, "confident") == [4, 5]
    wrong = r.select(0, "wrong")[0]
    assert r.p_true[wrong] == pytest.approx(0.2) and r.p_pred[wrong] == pytest.approx(0.8)
    assert r.predicted[wrong] == 1 and r.rank[wrong] == 1


def test_rankings_limit_and_excluded_rows():
    rng = np.random.default_rng(0)
    p = rng.dirichlet([1, 1, 1], 50)
    y = rng.integers(0, 3, 50)
    y[0] = -1
    p[1] = np.nan
    r = rank_per_class(y, p, k=4)
    assert 0 not in r.row and 1 not in r.row
    for c in range(3):
        for gallery in ("confident", "unconfident", "wrong"):
            positions = r.select(c, gallery)
            assert len(positions) <= 4
            assert r.rank[positions].tolist() == list(range(1, len(positions) + 1))
    unconfident = r.p_true[r.select(2, "unconfident")]
    assert np.all(np.diff(unconfident) >= 0)
    with pytest.raises(ConfigError, match="'k' parameter"):
        rank_per_class(y, p, k=0)


def test_most_confused_orders_off_diagonal_cells():
    matrix = np.array([[9, 1, 4], [0, 5, 0], [2, 4, 7]])
    assert most_confused(matrix, k=3) == [(0, 2, 4), (2, 1, 4), (2, 0, 2)]


def test_report_escapes_hostile_names_and_strips_exif(tmp_path):
    hostile_class = "<script>alert(1)</script>"
    photo = tmp_path / "<img src=x onerror=alert(2)>.jpg"
    image = Image.new("RGB", (60, 40), (200, 30, 30))
    exif = image.getexif()
    exif[0x010F] = "SecretCameraMaker"
    image.save(photo, "JPEG", exif=exif)
    other = make_image(tmp_path / "javascript:alert(3).png", (10, 200, 10), seed=1)
    paths = np.array([str(photo), str(other)])
    y, proba = np.array([0, 1]), np.array([[0.2, 0.8], [0.3, 0.7]])
    metrics = {"accuracy": 0.5, "balanced_accuracy": 0.5, "macro_f1": 0.33, "log_loss": 1.0,
               "ece": 0.1, "n": 2, "classes": [hostile_class, "ok"],
               "confusion_matrix": [[0, 1], [0, 1]],
               "per_class": {hostile_class: {"precision": 0, "recall": 0, "f1": 0, "support": 1},
                             "ok": {"precision": .5, "recall": 1, "f1": .67, "support": 1}}}
    data = ReportData("t", metrics, (hostile_class, "ok"), paths, y, proba,
                      rank_per_class(y, proba), label_issues=[(str(photo), hostile_class, "ok",
                                                               0.9)])
    index = render_report(data, tmp_path / "report")
    html = index.read_text()
    assert "<script>" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "javascript:" not in re.findall(r"(?:src|href)='([^']*)'", html).__str__()
    sources = re.findall(r"<img src='([^']+)'", html)
    assert sources and all(s.startswith("assets/") for s in sources)
    for source in sources:
        thumb = Image.open(index.parent / source)
        assert len(thumb.getexif()) == 0
        assert b"SecretCameraMaker" not in (index.parent / source).read_bytes()


class _Page(HTMLParser):
    """The page as a browser's parser sees it: every tag with its attributes, and the text (entities
    decoded) of the part of the page that each tag and text falls in: "head", "top" (header, cards,
    nav) or the heading of its <section>."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict, str]] = []
        self.text: dict[str, str] = {}
        self.part, self._in_h2 = "head", False
        self.feed(html)
        self.close()

    def handle_starttag(self, tag, attrs):
        if tag == "body":
            self.part = "top"
        elif tag == "h2":
            self._in_h2, self.part = True, ""
        self.tags.append((tag, dict(attrs), self.part))
        # Attribute values that show text (tooltips) count as the part's text.
        self._add(" ".join(v for k, v in attrs if k in ("title", "alt", "aria-label") and v))

    def handle_endtag(self, tag):
        if tag == "h2":
            self._in_h2 = False

    def handle_data(self, data):
        if self._in_h2:
            self.part += data
        else:
            self._add(data)

    def _add(self, text):
        self.text[self.part] = self.text.get(self.part, "") + " " + text


def test_report_escapes_hostile_names_in_every_section(tmp_path):
    script, img, quote = ("<script>alert(1)</script>", '"><img src=x onerror=alert(1)>',
                          "' onmouseover='x")
    template, entity, control = "{{7*7}}", "&amp;", "bell\x07\x1b[2Jname"
    classes = (script, img, quote, template, entity, control)
    # File names cannot hold "/": the script tag is left open in them.
    stems = ("<script>alert(1)", img, quote, template, entity, control)
    paths = np.array([str(make_image(tmp_path / "in" / f"{stems[i % 6]}{i}.png",
                                     (40 * (i % 6), 90, 60), seed=i)) for i in range(12)])
    y = np.arange(12) % 6
    proba = np.random.default_rng(0).dirichlet(np.ones(6), 12)
    proba[np.arange(6), np.arange(6)] += 2   # some right, some confidently wrong
    proba /= proba.sum(axis=1, keepdims=True)
    hostile = " ".join(classes)
    data = ReportData(
        script + template, classification_metrics(y, proba, classes), classes, paths, y, proba,
        rank_per_class(y, proba), subtitle=hostile, temperature=1.3,
        history=[{"epoch": e, "train_loss": 1 / e, "val_loss": 1 / e, "val_accuracy": e / 4,
                  "val_balanced_accuracy": e / 4} for e in (1, 2, 3)],
        class_counts={"train": np.arange(6) + 2, hostile: np.arange(6) + 1},
        label_issues=[(paths[i], classes[i], classes[(i + 1) % 6], 0.5) for i in range(6)],
        label_issue_note=hostile,
        duplicates={"summary": {hostile: 1},
                    "groups": [[(paths[i], classes[i], classes[5 - i]) for i in range(6)]]},
        notes=list(classes))
    index = render_report(data, tmp_path / "report")
    html = index.read_text(encoding="utf-8")
    page = _Page(html)

    # No markup of ours comes from the data: no script, no event handler, nothing that loads
    # from outside assets/; the page keeps its one <style> and its Content-Security-Policy.
    assert "<script" not in html.lower() and "<img src=x" not in html
    assert html.count("onerror=") == html.count("&lt;img src=x onerror=")
    assert {tag for tag, _, _ in page.tags} <= {
        "html", "head", "meta", "title", "style", "body", "main", "header", "h1", "h2", "h3", "h4",
        "p", "div", "nav", "a", "section", "table", "thead", "tbody", "tr", "th", "td", "br",
        "small", "ol", "ul", "li", "figure", "img", "figcaption", "span", "svg", "text", "line",
        "rect", "polyline", "circle"}
    # A value that broke out of its quotes would show up as an attribute of its own.
    assert not [(tag, name) for tag, attrs, _ in page.tags for name in attrs
                if name.startswith("on") or not re.fullmatch(r"[a-z][a-z0-9-]*", name)]
    urls = [attrs[k] for _, attrs, _ in page.tags for k in ("src", "href") if k in attrs]
    assert urls and all(u.startswith(("assets/", "#")) for u in urls)
    assert [a["content"] for t, a, _ in page.tags if a.get("http-equiv")] == [
        "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'"]
    assert sum(tag == "style" for tag, _, _ in page.tags) == 1
    # Attribute values arrive whole: the confusion matrix's tooltips are the class names.
    assert [a["title"] for t, a, p in page.tags if t == "th" and "title" in a] == list(classes)

    # Each hostile name is shown as the literal text it is (escaped, not executed or evaluated)
    # in every part of the page that shows it.
    text = page.text
    assert script + template in text["head"] and script + template in text["top"]
    assert hostile in text["top"]                                       # subtitle
    files = [Path(p).name for p in paths]
    expected = {"top": classes,                                         # navigation
                "Per-class metrics": classes,
                "Confusion matrix": classes,
                "Galleries per class": classes + tuple(files),
                "Training and data": classes + (hostile,),              # bar tooltips, legend
                "Likely label issues": classes + (hostile,) + tuple(files[:6]),
                "Duplicates and leakage": classes + (hostile,) + tuple(files[:6]),
                "Notes": classes}
    for part, names in expected.items():
        missing = [name for name in names if name not in text[part]]
        assert not missing, (part, missing)
    # The escaped forms, as the page's bytes; template syntax in a name is not evaluated.
    for escaped in (r"&lt;script&gt;alert\(1\)&lt;/script&gt;", r"(&#34;|&quot;)&gt;&lt;img src=x",
                    r"(&#39;|&#x27;) onmouseover=(&#39;|&#x27;)x", "&amp;amp;",
                    r"<h3>\{\{7\*7\}\}</h3>", r"<td>\{\{7\*7\}\}</td>"):
        assert re.search(escaped, html), escaped


@pytest.fixture(scope="module")
def report_run(trained_run):
    run = trained_run["run"]
    assert (run / "report" / "index.html").is_file()  # train_run builds it by default
    return run


def test_run_report_files_and_contents(report_run, trained_run):
    report = report_run / "report"
    html = (report / "index.html").read_text()
    for name in trained_run["result"].classifier.classes_:
        assert f"<h3>{name}</h3>" in html
    for source in re.findall(r"<img src='([^']+)'", html):
        assert (report / source).is_file()
    with open(report / "rankings.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["class", "gallery", "rank", "path", "p_true", "p_pred", "predicted"]
    split = {r["path"]: r["split"] for r in csv.DictReader(open(report_run / "split.csv"))}
    assert all(split[r["path"]] == "val" for r in rows)
    with open(report / "label_issues.csv", newline="") as f:
        assert next(csv.reader(f)) == ["path", "given_label", "suggested_label", "score"]


def test_report_on_test_folder_and_evaluate_report(report_run, trained_run, tmp_path):
    out = tmp_path / "r"
    assert main(["report", str(report_run), "--data", str(trained_run["test"]), "--out",
                 str(out), "--quiet"]) == 0
    with open(out / "rankings.csv", newline="") as f:
        paths = {r["path"] for r in csv.DictReader(f)}
    assert paths and all(str(trained_run["test"]) in p for p in paths)
    out2 = tmp_path / "e"
    assert main(["evaluate", str(report_run / "model"), str(trained_run["test"]), "--report",
                 str(out2), "--quiet"]) == 0
    assert (out2 / "index.html").is_file() and (out2 / "label_issues.csv").is_file()


def test_evaluation_result_api(trained_run):
    import imagefit

    clf = trained_run["result"].classifier
    result = imagefit.evaluate(clf, trained_run["test"])
    rankings = result.rankings(2)
    assert 0 < len(rankings.row) <= 3 * 3 * 2
    for pos, row in enumerate(rankings.row):   # every ranked row is a real prediction
        truth = result.y_true[row]
        assert rankings.true_class[pos] == truth
        assert rankings.p_true[pos] == pytest.approx(result.predictions.proba[row, truth])
        assert rankings.predicted[pos] == result.predictions.proba[row].argmax()
    paths = result.predictions.paths.tolist()
    for path, given, suggested, score in result.label_issues():
        assert given == Path(path).parent.name and suggested != given
        assert suggested in clf.classes_ and 0 <= score <= 1
        assert path in paths


def test_inspect_finds_conflicts_leakage_and_writes_contract_json(tmp_path, capsys):
    data = tmp_path / "data"
    make_dataset(data / "train", {"cat": 6, "dog": 6})
    make_dataset(data / "val", {"cat": 2, "dog": 2}, seed=3)
    shutil.copy(data / "train/cat/cat_001.png", data / "train/dog/copy_of_cat.png")  # conflict
    shutil.copy(data / "train/dog/dog_002.jpg", data / "val/dog/leaked.jpg")         # leakage
    (data / "train/cat/.DS_Store").write_bytes(b"x")
    (data / "train/cat/broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    out = tmp_path / "audit.json"
    assert main(["inspect", str(data), "--json", str(out), "--image-size",
                 str(TEST_IMAGE_SIZE)]) == 0
    audit = json.loads(out.read_text())
    for key in ("n_images", "classes", "bad_files", "ignored", "duplicates", "modes"):
        assert key in audit
    assert audit["classes"] == {"cat": 8, "dog": 10}
    assert len(audit["bad_files"]) == 1
    assert audit["bad_files"][0]["path"].endswith("broken.jpg")
    assert audit["bad_files"][0]["reason"] in ("truncated", "corrupt")
    assert audit["ignored"] == {".DS_Store": 1}
    assert len(audit["label_conflicts"]) == 1 and len(audit["leakage"]) >= 1
    assert any(p.endswith("leaked.jpg") for group in audit["leakage"] for p in group)
    assert isinstance(audit["near_duplicates"], list)
    assert "Suggestion:" in capsys.readouterr().out
    assert main(["inspect", str(data), "--json", str(out), "--no-near", "--quiet"]) == 0
    assert json.loads(out.read_text())["near_duplicates"] is None


def _browser_or_skip():
    if os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER):
        return
    if os.environ.get("CI"):
        pytest.fail(".ci/run must install chromium and chromium-driver (make system-deps)")
    pytest.skip("Debian chromium/chromium-driver not installed (make system-deps)")


@pytest.mark.slow
def test_report_opens_in_chromium_without_broken_images_or_console_errors(report_run, tmp_path):
    _browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        driver.get((report_run / "report" / "index.html").as_uri())
        driver.execute_script("document.querySelectorAll('img').forEach(i => i.loading='eager')")
        driver.execute_script("window.scrollTo(0, document.body.scrollHeight)")
        # The images now load asynchronously: wait until each has finished, loaded or broken
        # (`complete` is true either way), before looking for broken ones. Checked at once, a
        # busy machine reported images still loading as broken. A hang guard, not a limit.
        WebDriverWait(driver, 120).until(lambda d: d.execute_script(
            "return Array.from(document.images).every(i => i.complete)"))
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete,"
            " i.naturalWidth])")
        assert images, "the report shows no images"
        broken = [src for src, complete, width in images if not complete or width == 0]
        assert not broken, f"broken images: {broken[:5]}"
        errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        assert not errors, errors
        assert driver.find_element("id", "galleries").is_displayed()
        driver.save_screenshot(str(tmp_path / "report.png"))
        assert (tmp_path / "report.png").stat().st_size > 5000
    finally:
        driver.quit()
