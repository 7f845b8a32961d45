"""The HTML run report: built from the files a run wrote (train, tune, workflow; old 0-based runs too), one file
with inline images, and rendered by a real headless Chromium without console errors."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.report import REPORT_FILE, ReportError, build_report, write_report
from support.run_dirs import CLASSES, write_train_run, write_tune_run, write_workflow_run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TRAIN_SECTIONS = ["summary", "curves", "confusion", "per-class", "data", "rebalance", "augmentation", "spec",
                  "environment"]


def _sections(html: str) -> list[str]:
    return re.findall(r'<section id="([^"]+)"', html)


def test_train_report_has_every_section_inline_and_offline(tmp_path):
    run = write_train_run(tmp_path / "run")
    html = (write_report(run)).read_text(encoding="utf-8")
    assert _sections(html) == TRAIN_SECTIONS
    images = re.findall(r'<img src="([^"]+)"', html)
    assert len(images) == 4 and all(src.startswith("data:image/png;base64,") for src in images)
    assert not re.search(r'(src|href)="(https?:)?//', html)  # nothing from the network
    for c in CLASSES:  # per-class table and histogram, Unicode intact
        assert f"<td>{c}</td>" in html
    assert "détail ünïcode 错误" in html and "image_undecodable" in html
    assert "<b>0.900</b><span>test accuracy" in html and "<b>0.840</b><span>test macro-F1" in html
    assert "name: tiny-run" in html  # the resolved spec


def test_the_rebalance_section_names_a_further_task_and_its_unlabelled_rows(tmp_path):
    run = write_train_run(tmp_path / "run")
    report = json.loads((run / "data_report.json").read_text(encoding="utf-8"))
    assert "over the classes of task" not in write_report(run).read_text(encoding="utf-8")  # the primary's
    report["rebalance"].update({"task": "说话人", "unlabelled_rows": 7})  # rebalance.task: a further task
    (run / "data_report.json").write_text(json.dumps(report, ensure_ascii=False), encoding="utf-8")
    html = write_report(run).read_text(encoding="utf-8")
    assert "over the classes of task <b>说话人</b> (7 rows without its label, each kept once)" in html


def test_old_zero_based_runs_read_one_based(tmp_path):
    run = write_train_run(tmp_path / "run", epochs=2)
    csv = (run / "epochs.csv").read_text(encoding="utf-8").splitlines()
    head, rows = csv[0], csv[1:]
    (run / "epochs.csv").write_text("\n".join([head] + [r.replace("1,", "0,", 1) if r.startswith("1,")
                                                        else r.replace("2,", "1,", 1) for r in rows]))
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    (run / "metrics.json").write_text(json.dumps({**metrics, "best_epoch": 1}))  # epoch index 1 = the 2nd
    html = build_report(run)
    assert re.findall(r'<tr><td class="n">(\d+)</td><td class="n">0\.00', html) == ["1", "2"]
    assert "<b>2</b><span>best epoch (of 2)" in html


def test_tune_report_lists_trials_and_the_best(tmp_path):
    html = build_report(write_tune_run(tmp_path / "tune"))
    assert _sections(html)[:2] == ["trials", "best-trial"] and "data" in _sections(html)
    assert re.search(r'<tr class="best">.*?t0002', html, re.S)  # the best val.macro_f1 is highlighted
    assert "the best trial&#39;s learning curves" in html or "best trial's learning curves" in html


def test_workflow_report_shows_steps_and_decision(tmp_path):
    html = build_report(write_workflow_run(tmp_path / "wf"))
    assert _sections(html)[:2] == ["steps", "promotion"] and "curves" in _sections(html)
    assert "beats the champion" in html and "promoted" in html
    assert "step train" in html  # wall time per step in the environment section


def test_not_a_run_directory_names_the_folder(tmp_path):
    with pytest.raises(ReportError, match=f"{tmp_path}: not an mmpipe run directory"):
        build_report(tmp_path)
    (tmp_path / "metrics.json").write_text("{not json")
    with pytest.raises(ReportError, match="metrics.json: not valid JSON"):
        build_report(tmp_path)


def test_mmpipe_report_rebuilds_it(tmp_path):
    run = write_train_run(tmp_path / "run")
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "report", str(run)], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "NO_COLOR": "1"})
    assert done.returncode == 0, done.stderr
    assert (run / REPORT_FILE).stat().st_size > 10_000 and "wrote" in done.stdout
    bad = subprocess.run([sys.executable, "-m", "pipeline.cli", "report", str(tmp_path / "nope")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "nope: no such run directory" in bad.stderr


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium; CI installs it)")
def test_report_renders_in_headless_chromium(tmp_path):
    from playwright.sync_api import sync_playwright

    html = write_report(write_workflow_run(tmp_path / "wf"))
    problems, requests = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: problems.append(f"{m.type}: {m.text}") if m.type in ("error", "warning")
                    else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(html.as_uri(), wait_until="load")
            assert page.title() == "mmpipe workflow report: nightly"
            sections = page.eval_on_selector_all("section[id]", "s => s.map(x => x.id)")
            assert sections == ["steps", "promotion"] + TRAIN_SECTIONS
            images = page.eval_on_selector_all("img", "i => i.map(x => [x.alt, x.complete, x.naturalWidth])")
            assert [alt for alt, *_ in images] == ["learning curves", "confusion matrix", "class histogram",
                                                    "rebalance before and after"]
            assert all(complete and width > 300 for _, complete, width in images), images
            assert "promoted: macro_f1 0.84 beats" in page.locator("#promotion").inner_text()
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert problems == []
    assert requests == [html.as_uri()]  # the page itself and nothing else: no network
    assert shot.stat().st_size > 50_000


def test_augmentation_preview_is_drawn_from_the_first_train_shard(demo_dir, tmp_path):
    from pipeline.report.preview import write_augment_preview
    from pipeline.spec import load_spec

    classes = json.loads((demo_dir / "manifest.json").read_text(encoding="utf-8"))["classes"]
    run = write_train_run(tmp_path / "run")
    png = write_augment_preview(load_spec(demo_dir / "spec.yaml"), classes, run)
    assert png == run / "augment_preview.png" and png.read_bytes()[:4] == b"\x89PNG"
    texts = json.loads((run / "augment_preview.json").read_text(encoding="utf-8"))
    assert len(texts) == 4 and all(t["key"].startswith("train/") for t in texts)
    html = build_report(run)
    assert 'alt="augmentation preview"' in html
    assert write_augment_preview(load_spec(demo_dir / "spec.yaml", ["augment.enabled=false"]), classes,
                                 tmp_path) is None
