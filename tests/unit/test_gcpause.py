"""The CLI pauses the cyclic collector for start-up; a program that imports pvreg keeps its own settings."""

from __future__ import annotations

import subprocess
import sys

CHECKS = """
import gc
assert gc.isenabled()
import pvreg
assert gc.isenabled(), "import pvreg left the collector off"
from pvreg.registry import gcpause
gcpause.resume()
assert gc.isenabled() and gc.get_freeze_count() == 0, "resume without pause changed something"
gcpause.pause()
assert not gc.isenabled()
gcpause.resume()
assert gc.isenabled() and gc.get_freeze_count() > 0, "resume must freeze what start-up allocated, then collect again"
gc.disable()
gcpause.pause(); gcpause.resume()
assert not gc.isenabled(), "a collector the program turned off stays off"
print("ok")
"""


def test_pause_and_resume_touch_only_what_the_cli_changed() -> None:
    r = subprocess.run([sys.executable, "-c", CHECKS], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_the_console_script_runs_commands_with_the_collector_paused() -> None:
    code = (
        "import gc, sys\n"
        "from pvreg.cli import main as m\n"
        "seen = []\n"
        "real = m.app\n"
        "m.app = lambda **kw: seen.append(gc.isenabled())\n"
        "m.main()\n"
        "print(seen)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[False]", r.stdout + r.stderr
