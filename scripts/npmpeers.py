"""What the scripts that run Node.js MCP peers against Horace share: an npm package
installed into a cache folder (never inside the package), and a throwaway
``python -m horace serve``."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 60.0


class Trouble(Exception):
    """A peer could not be installed or run, or Horace did not start (exit 2)."""


def npm_install(package: str, version: str, cache: Path, say: Callable[[str], None]) -> Path:
    """*package* at *version* installed with npm into *cache* unless it is there already;
    the ``node_modules`` folder that holds it."""
    modules = cache / "node_modules"
    manifest = modules / package / "package.json"
    if manifest.exists() and json.loads(manifest.read_text())["version"] == version:
        return modules
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            raise Trouble(f"{tool} is not on PATH")
    cache.mkdir(parents=True, exist_ok=True)
    say(f"installing {package}@{version} into {cache}")
    done = subprocess.run(
        [
            "npm",
            "install",
            "--prefix",
            str(cache),
            "--no-audit",
            "--no-fund",
            "--loglevel=error",
            f"{package}@{version}",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0 or not manifest.exists():
        raise Trouble(f"npm install {package}@{version} failed:\n{done.stdout}{done.stderr}")
    return modules


def horace_env(store: Path) -> dict[str, str]:
    """The environment of a Horace on *store* with the SQLite catalog, no token, no Godot;
    this checkout's horace when none is installed."""
    env = dict(os.environ)
    env.update(HORACE_STORAGE_PATH=str(store), HORACE_MCP_HOST="127.0.0.1", HORACE_MCP_PORT="0")
    for name in ("HORACE_DATABASE_URL", "HORACE_DB_HOST", "HORACE_AUTH_TOKEN", "GODOT_URL", "GODOT_MCP_URL"):
        env.pop(name, None)
    if importlib.util.find_spec("horace") is None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


class Horace:
    """`python -m horace serve` on a free port, with a store of its own in *folder*."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.store = folder / "store"
        self.log = folder / "horace.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""

    def __enter__(self) -> Horace:
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "horace", "serve"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=horace_env(self.store),
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            found = re.search(r'"listening on 127\.0\.0\.1:(\d+)"', self.log.read_text(errors="replace"))
            if found:
                self.url = f"http://127.0.0.1:{found[1]}/mcp"
                return self
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        self.__exit__()
        raise Trouble(f"horace serve did not start:\n{self.log.read_text(errors='replace')[-3000:]}")

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # graceful shutdown: sessions drained, then stopped
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
