"""The report end to end: a tiny real grid (2 seeds, 2 training fractions, learning-rate candidates,
a freeze:k sweep, a pretrained source) through Snakemake, every section of the report present,
`snakemake --report` working, and the page opened in headless Chromium: every image loads, no
JavaScript error, the leaderboard sorts, and a screenshot is saved."""

import json
import os
import re
import shutil
import subprocess
import zipfile

import pytest
from test_workflow import IMAGES_PER_CLASS, grid_config, snakemake, write_config

pytestmark = pytest.mark.e2e

SECTIONS = (
    "summary",
    "leaderboard",
    "heatmaps",
    "size",
    "freeze-depth",
    "curves",
    "confusion",
    "predictions",
    "map",
    "learning-rates",
    "cost",
)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def decision_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("decision")
    config = grid_config({"digits": {"source": "builtin", "name": "digits", "max_per_class": 2 * IMAGES_PER_CLASS}})
    config["grid"].update(
        fractions=[0.5, 1.0],
        backbones=[{"name": "efficientnet_lite0", "weights": ["imagenet_pkg"]}],
        strategies=["full", "frozen", "freeze:6"],
        seeds=[0, 1],
        lrs=[0.5, 1.0],
    )
    config["report"] = {"quadrant": {"size_threshold": 6}}
    write_config(workdir, config)
    snakemake(workdir)
    return workdir


def section(page: str, section_id: str) -> str:
    match = re.search(rf'<section id="{section_id}">(.*?)</section>', page, flags=re.S)
    assert match, f"no section {section_id}"
    return match.group(1)


def test_every_section_of_the_report_shows_real_numbers(decision_run):
    page = (decision_run / "results/report/index.html").read_text()
    for section_id in SECTIONS:
        body = section(page, section_id)
        assert 'class="how"' in body, section_id
        assert 'class="note"' not in body or section_id == "summary", f"{section_id} has no data: {body[-300:]}"
    assert section(page, "map").count("<tr>") >= 3  # header + one point per fraction
    assert "± " in section(page, "leaderboard")
    for name in ("summary.csv", "recipes.csv", "leaderboard.md"):
        assert (decision_run / "results" / name).is_file()
    recipes = (decision_run / "results/recipes.csv").read_text().splitlines()
    assert len(recipes) == 1 + 2 * 3  # fractions x strategies (one head, one backbone)


def test_snakemake_report_zip_holds_the_report_and_tables(decision_run):
    snakemake(decision_run, "--report", "report.zip")
    with zipfile.ZipFile(decision_run / "report.zip") as archive:
        names = archive.namelist()
    for name in ("index.html", "summary.csv", "recipes.csv", "leaderboard.md"):
        assert any(n.endswith(name) for n in names), name


CHECK_HEAD = (
    "<script>window.__errors = []; window.addEventListener('error', function (e) {"
    " window.__errors.push(String(e.message || (e.target && e.target.src))); }, true);</script>"
)
CHECK_BODY = """<script>
window.addEventListener('load', function () {
  var images = Array.from(document.images);
  var broken = images.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
  var header = document.querySelector('#leaderboard-table th.sortable');
  var first = function () { return document.querySelector('#leaderboard-table tbody tr').cells[0].textContent; };
  var before = first(); header.click(); var ascending = first(); header.click(); var descending = first();
  document.body.setAttribute('data-check', JSON.stringify({errors: window.__errors, images: images.length,
    broken: broken.length, sorted: [before, ascending, descending]}));
});
</script>"""


@pytest.mark.skipif(CHROMIUM is None and os.environ.get("CI") != "true", reason="Debian package chromium not installed")
def test_the_report_opens_in_a_browser_without_errors(decision_run, tmp_path):
    if CHROMIUM is None:
        pytest.fail("CI=true: Debian package chromium not installed (.ci/run installs it)")
    report = decision_run / "results/report/index.html"
    checked = tmp_path / "checked.html"
    page = report.read_text()
    checked.write_text(page.replace("<head>", "<head>" + CHECK_HEAD, 1).replace("</body>", CHECK_BODY + "</body>", 1))
    profile = ["--user-data-dir=" + str(tmp_path / "profile")]
    dom = subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, *profile, "--virtual-time-budget=10000", "--dump-dom", checked.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    found = re.search(r'data-check="([^"]*)"', dom)
    assert found, dom[-2000:]
    check = json.loads(found.group(1).replace("&quot;", '"'))
    assert check["errors"] == [] and check["broken"] == 0 and check["images"] >= 10, check
    _before, ascending, descending = check["sorted"]
    assert int(ascending) <= int(descending)  # clicking the rank column sorts the rows, twice reverses
    screenshot = tmp_path / "report.png"
    subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, *profile, "--window-size=1300,2400", f"--screenshot={screenshot}", report.as_uri()],
        capture_output=True,
        timeout=120,
    )
    assert screenshot.stat().st_size > 50_000
    print(f"\nscreenshot: {screenshot}")
