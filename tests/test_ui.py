"""`adamole-bench ui` on a real store holding one tiny sweep: the API lists its runs, a real headless
Chromium reads every trial's method, task, seed, accuracy and interval off the page the printed
comparison link opens, and reaches the sweep's table in the clicks docs/ui.md documents (slow: the
server takes 10-60 s to start).

The browser test skips where Chromium, chromedriver or selenium are missing, except under CI (CI=true),
where .ci/run installs them and a skip would hide a broken install. ADAMOLE_BENCH_SCREENSHOTS=DIR keeps
its screenshots (docs/images/ came from there)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from adamole_bench.harness.report.stats import wilson_interval
from adamole_bench.tests.fault_tools import cli_env, free_port, run_cli, store_runs, trial_runs, wait_for_http

pytestmark = pytest.mark.slow

SWEEP = [
    "run",
    "--model",
    "tiny-llama",
    "--methods",
    "lora,mole",
    "--tasks",
    "fruit_or_color",
    "--limit",
    "8",
    "--max-steps",
    "2",
    "save_adapters=false",
]
CHROMIUM_FLAGS = [  # as root on a closed network: no sandbox, no background connections Chromium would retry
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--window-size=1400,1000",
]  # fmt: skip


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """A tiny finished sweep, then `adamole-bench ui` serving its store: (base URL, store URI, the links `ui` printed:
    the runs view, then the comparison)."""
    root = tmp_path_factory.mktemp("ui")
    env = cli_env(root / "runs")
    finished = run_cli(SWEEP, env)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    port = free_port()
    log = open(root / "ui.log", "w+")  # noqa: SIM115 - the server writes to it until the test stops it
    server = subprocess.Popen(
        [sys.executable, "-m", "adamole_bench.cli", "ui", "--port", str(port)], env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/health")
        log.seek(0)
        links = [word for word in log.read().split() if word.startswith(f"http://127.0.0.1:{port}/#/")]
        yield f"http://127.0.0.1:{port}", f"sqlite:///{root / 'runs' / 'mlflow.db'}", links
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=60)


def test_ui_lists_recorded_runs(ui):
    base_url, uri, _ = ui
    experiment_id = store_runs(uri)[0].info.experiment_id
    request = urllib.request.Request(
        f"{base_url}/ajax-api/2.0/mlflow/runs/search",
        data=json.dumps({"experiment_ids": [experiment_id]}).encode(),
        headers={"Content-Type": "application/json"},
    )
    runs = json.loads(urllib.request.urlopen(request, timeout=30).read())["runs"]
    assert {r["info"]["run_name"] for r in runs} >= {
        "base/fruit_or_color/seed0",
        "lora/fruit_or_color/seed0",
        "lora,mole × fruit_or_color · tiny-llama · 1 seed",
    }


def _browser():
    """Chromium driven through chromedriver, or a skip (a failure under CI) naming what is missing."""
    missing = [name for name in ("chromium", "chromedriver") if not shutil.which(name)]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("selenium (pip)")
    if missing:
        why = f"no headless browser: {', '.join(missing)} missing (apt-get install chromium chromium-driver; pip install selenium)"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    options = webdriver.ChromeOptions()
    chromium = shutil.which("chromium")
    assert chromium is not None  # the skip above covers a missing browser
    options.binary_location = chromium
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={Path(os.environ.get('TMPDIR', '/tmp')) / f'adamole-ui-test-{os.getpid()}-{time.time_ns()}'}"]:
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))


class Page:
    """Clicks by visible text, waiting for the UI to render each step; a screenshot after each."""

    def __init__(self, driver, folder: Path):
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver, self.folder, self.wait, self.shots = driver, folder, WebDriverWait(driver, 90), 0
        folder.mkdir(parents=True, exist_ok=True)

    def find(self, xpath: str):
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions

        return self.wait.until(expected_conditions.element_to_be_clickable((By.XPATH, xpath)))

    def click(self, xpath: str, name: str) -> None:
        self.find(xpath).click()
        time.sleep(2)  # let the page settle before the screenshot
        self.shots += 1
        self.driver.save_screenshot(str(self.folder / f"{self.shots}-{name}.png"))

    def title(self, part: str) -> str:
        """The page title once it names `part` (the UI sets it after rendering), e.g. 'Runs - Experiment 1'."""
        self.wait.until(lambda driver: part in driver.title)
        return self.driver.title

    def close_assistant(self) -> None:
        """MLflow 3.17 opens an assistant panel on the first visit; it takes a third of the width."""
        from selenium.common.exceptions import TimeoutException

        try:
            self.find("//button[@data-component-id='mlflow.assistant.chat_panel.close']").click()
        except TimeoutException:
            pass  # another MLflow version: no assistant

    def text(self) -> str:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.TAG_NAME, "body").text


def _sweep(uri: str):
    return next(r for r in store_runs(uri) if r.data.tags.get("kind") == "sweep")


def test_three_clicks_from_the_home_page_show_the_comparison(ui, tmp_path):
    base_url, uri, _ = ui
    sweep = _sweep(uri)
    name = sweep.data.tags["mlflow.runName"]
    driver = _browser()
    try:
        page = Page(driver, Path(os.environ.get("ADAMOLE_BENCH_SCREENSHOTS") or tmp_path / "screenshots"))
        driver.get(base_url)
        page.close_assistant()
        page.click("//*[text()='Model training']", "model-training")  # 1
        page.click("//a[text()='adamole-bench']", "experiment")  # 2: the runs view, not GenAI traces
        assert page.title("Runs").startswith("Runs")
        page.click(f"//a[normalize-space(.)='{name}']", "sweep-run")  # 3: the sweep, named by what it compares
        page.find("//*[text()='Description']")
        page.click("//button[@aria-label='Expand description']", "description")  # the table is taller than the preview
        text = page.text()
    finally:
        driver.quit()
    # The table `run` printed, rendered: every row with its cells (interval, n, tests), and the verdict.
    markdown = Path(sweep.info.artifact_uri.removeprefix("file://"), "tables", "summary.md").read_text()
    rows = [line.strip("| ").split(" | ") for line in markdown.splitlines() if line.startswith("| ") and not line.startswith("| method")]
    assert [row[0] for row in rows] == ["base (zero-shot)", "lora", "mole", "majority class"]
    for label, *cells in rows:
        assert label in text
        for cell in cells:
            assert cell.replace("**", "") in text, (cell, text)  # bold is markup, not text
    assert "verdict:" in text and "n.s. vs base" in text
    # The summary metrics beside it, per task and row.
    for metric in ("fruit_or_color/lora/acc", "fruit_or_color/lora/ci_low", "fruit_or_color/mole/ci_high", "fruit_or_color/lora/n"):
        assert metric in text


def test_the_link_ui_prints_opens_the_runs_view(ui, tmp_path):
    _, uri, (link, _) = ui
    assert link.endswith(f"/#/experiments/{_sweep(uri).info.experiment_id}/runs?workflowType=machine_learning")
    driver = _browser()
    try:
        page = Page(driver, tmp_path / "screenshots")
        driver.get(link)
        page.close_assistant()
        page.find(f"//a[normalize-space(.)='{_sweep(uri).data.tags['mlflow.runName']}']")  # one click from the comparison
        assert page.title("Runs").startswith("Runs")
    finally:
        driver.quit()


def _compare_page(page: Page) -> tuple[list[str], dict[str, list[str]], dict[str, list[str]]]:
    """What MLflow's compare page renders: the run ids of its columns, each parameter's row and each
    metric's row (the metrics are two grids, names and values, the values row by row)."""
    from selenium.webdriver.common.by import By

    page.find("//*[normalize-space(.)='eval/acc']")
    run_ids = [cell.text for cell in page.driver.find_elements(By.XPATH, "//tr[th[normalize-space(.)='Run ID:']]/th[position() > 1]")]

    def row(name: str) -> list[str]:  # the first table holding it: Parameters comes before Tags
        return [
            cell.text
            for cell in page.driver.find_elements(
                By.XPATH, f"(//table[.//th[normalize-space(.)='{name}']])[1]//tr[th[normalize-space(.)='{name}']]/td"
            )
        ]

    names_grid = page.driver.find_element(By.XPATH, "//*[@role='grid'][.//*[normalize-space(.)='eval/acc']]")
    names = [name.text for name in names_grid.find_elements(By.XPATH, ".//*[@role='rowgroup']/div")]
    values = [value.text for value in names_grid.find_elements(By.XPATH, "following::*[@role='grid'][1]//*[@role='rowgroup']/div")]
    width = len(run_ids)
    metrics = {name: values[i * width : (i + 1) * width] for i, name in enumerate(names)}
    return run_ids, {name: row(name) for name in ("method", "task", "seed")}, metrics


def test_the_comparison_link_shows_every_trial_with_method_task_seed_accuracy_and_interval(ui, tmp_path):
    _, uri, (_, link) = ui
    assert "/#/compare-runs?runs=" in link
    driver = _browser()
    try:
        page = Page(driver, Path(os.environ.get("ADAMOLE_BENCH_SCREENSHOTS") or tmp_path / "screenshots"))
        driver.get(link)
        page.close_assistant()
        run_ids, params, metrics = _compare_page(page)
        driver.save_screenshot(str(page.folder / "compare-runs.png"))
    finally:
        driver.quit()
    trials = {run.info.run_id: run for run in trial_runs(uri)}
    assert sorted(run_ids) == sorted(trials)  # every trial of the sweep, base included, and nothing else
    for column, run_id in enumerate(run_ids):
        tags, recorded = trials[run_id].data.tags, trials[run_id].data.metrics
        assert (params["method"][column], params["task"][column], params["seed"][column]) == (tags["method"], tags["task"], tags["seed"])
        low, high = wilson_interval(recorded["eval/acc"], int(recorded["eval/docs"]))
        shown = {name: float(metrics[name][column]) for name in ("eval/acc", "eval/acc_ci_low", "eval/acc_ci_high")}
        # The page shows 3 decimals: a value read back is within half of its last digit of the true one.
        assert shown == pytest.approx({"eval/acc": recorded["eval/acc"], "eval/acc_ci_low": low, "eval/acc_ci_high": high}, abs=5e-4 + 1e-9)


def test_ui_refuses_a_sweep_id_that_is_not_a_sweep_of_the_experiment(ui, tmp_path):
    _, uri, _ = ui
    env = cli_env(Path(uri.removeprefix("sqlite:///")).parent)
    for not_a_sweep in ("3f2a9c1b0d4e4f6a8b7c6d5e4f3a2b1c", trial_runs(uri)[0].info.run_id):
        refused = run_cli(["ui", "--sweep", not_a_sweep], env)
        assert refused.returncode == 2 and refused.stderr.startswith(f"error: --sweep {not_a_sweep} is not a sweep run"), refused.stderr
