"""benchmarks/unseen_speakers.py end to end on the 36-clip FSDD fixture: prepare-digits --split speaker, pack and
train through the real commands, one fold, one epoch; a second call reads the finished fold back."""

import csv
import json
import os
import subprocess
import sys

import pytest

from support import FIXTURES, ROOT

pytestmark = [pytest.mark.cluster, pytest.mark.slow]  # each mmpipe train starts its own Ray; ~45 s


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "unseen_speakers.py"), *args],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_quick_holds_out_a_speaker_and_prints_the_table(tmp_path):
    runs = tmp_path / "runs"
    done = run(str(FIXTURES / "fsdd"), "--quick", "--runs", str(runs))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "| held-out speaker | test macro-F1 |" in done.stdout and "\n| jackson | " in done.stdout
    assert "**mean ± SD (min)**" in done.stdout
    metrics = json.loads((runs / "jackson" / "val-takes" / "audio_only" / "metrics.json").read_text())
    assert 0 <= metrics["test.macro_f1"] <= 1
    with open(runs / "jackson" / "val-takes" / "raw" / "manifest.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert {r["speaker"] for r in rows if r["split"] == "test"} == {"jackson"}
    assert {r["speaker"] for r in rows if r["split"] == "val"} == {"nicolas", "theo"}  # their takes 5-9
    assert json.loads((runs / "audio_only.val-takes.json").read_text())["protocol"] == "val-takes"
    # benchmarks/unseen_speakers_adapt.py on the finished fold: the same weights scored as trained and adapted
    paired = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "unseen_speakers_adapt.py"),
                             str(FIXTURES / "fsdd"), str(runs), "audio_only"], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert paired.returncode == 0, paired.stdout[-3000:] + paired.stderr[-3000:]
    [line] = [line for line in paired.stdout.splitlines() if line.startswith("| jackson | ")]
    plain, adapted, gain, product = (float(v) for v in line.strip("| ").split(" | ")[1:])
    assert abs(gain - (adapted - plain)) < 2e-3 and product == pytest.approx(metrics["test.macro_f1"], abs=5e-4)
    again = run(str(FIXTURES / "fsdd"), "--quick", "--runs", str(runs))  # finished: read back, not retrained
    assert again.returncode == 0 and "| reused |" in again.stdout
    wrong = run(str(FIXTURES / "fsdd"), "--speakers", "bob", "--runs", str(runs))
    assert wrong.returncode != 0 and "bob: not among the recordings' speakers jackson, nicolas, theo" in wrong.stderr
