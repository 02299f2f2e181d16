"""Issue 9 item 9: a read-only state directory, or a DuckDB file held by another process, stops
`sluice serve` with one clear line and a non-zero exit code, before it ever says "serving on"
(it used to print "serving on ..." and then a traceback)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.servers import free_port

ROOT = Path(__file__).resolve().parent.parent


def serve(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sluice.cli", "serve", "--port", str(free_port()), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def read_only_dir(tmp_path: Path) -> Path:
    """A directory this process cannot create files in: chmod for a normal user; root ignores modes,
    so there a sysfs path (read-only to everyone) stands in."""
    if os.geteuid() == 0:
        d = Path("/sys/kernel/sluice-read-only-test")
        if not Path("/sys/kernel").is_dir():
            pytest.skip("running as root without /sys: no read-only directory to test with")
        return d
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o555)
    return d


def config_file(tmp_path: Path, db_path: Path) -> Path:
    cfg = tmp_path / "sluice.toml"
    cfg.write_text(textwrap.dedent(f"""
        [server]
        db_path = "{db_path}"
    """))
    return cfg


def assert_one_clear_line(proc: subprocess.CompletedProcess[str], *words: str) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0, proc.stderr
    assert "Traceback" not in proc.stderr and "serving on" not in proc.stderr, proc.stderr
    assert len(lines) == 1, proc.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def test_a_store_file_locked_by_another_process(tmp_path):
    db = tmp_path / "sluice.duckdb"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import duckdb, sys, time
        con = duckdb.connect({str(db)!r})
        print("ready", flush=True)
        time.sleep(120)
    """)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "ready"
        line = assert_one_clear_line(serve("--config", str(config_file(tmp_path, db))), "cannot start", "locked")
        assert str(holder.pid) in line  # DuckDB names the holder
    finally:
        holder.kill()
        holder.wait()


def test_a_read_only_store_directory(tmp_path):
    ro = read_only_dir(tmp_path)
    assert_one_clear_line(serve("--config", str(config_file(tmp_path, ro / "sluice.duckdb"))),
                          "cannot start", "cannot write to")


def test_a_read_only_state_directory_for_the_dev_setup(tmp_path):
    ro = read_only_dir(tmp_path)
    assert_one_clear_line(serve("--state-dir", str(ro)), "cannot use the state directory")
