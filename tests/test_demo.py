"""`sluice demo --headless`: the demo's server, load and shutdown, bounded in time (CI smoke test)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import duckdb

from tests.servers import free_port


def test_demo_headless_serves_the_load_and_stops_cleanly(tmp_path: Path) -> None:
    state = tmp_path / "state"
    proc = subprocess.run(
        [sys.executable, "-m", "sluice.cli", "demo", "--headless", "6", "--port", str(free_port()),
         "--state-dir", str(state)],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "requests finished" in proc.stdout
    ok = int(proc.stdout.split(" ok")[0].rsplit(" ", 1)[-1])
    assert ok > 0
    # a clean shutdown flushed the store: the file opens and holds the requests
    con = duckdb.connect(str(state / "sluice.duckdb"), read_only=True)
    rows = con.execute("SELECT count(*), count(DISTINCT tenant) FROM requests").fetchone()
    assert rows[0] >= ok and rows[1] >= 2
    assert con.execute("SELECT count(*) FROM spans").fetchone()[0] > 0
