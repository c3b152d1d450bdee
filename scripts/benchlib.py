"""Shared helpers of scripts/bench_*: timing, statistics, temp dirs, time limits, output.

Not part of the product: only the benchmark scripts import it. Importing it puts the
checkout it belongs to on ``sys.path``; scripts that take ``--horace-src DIR`` (e.g. a
scratch copy with a candidate fix) call :func:`use_source` to benchmark that tree instead.
"""

from __future__ import annotations

import contextlib
import cProfile
import io
import json
import os
import pstats
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent  # the checkout these scripts belong to
if str(ROOT) not in sys.path:  # importable from a checkout; use_source() can put another first
    sys.path.insert(1, str(ROOT))


class BenchTimeout(Exception):
    """The benchmark ran past its --timeout."""


# -- time limits ---------------------------------------------------------------------------

_deadline: float | None = None


def set_deadline(seconds: float) -> None:
    """Bound the whole run: SIGALRM raises BenchTimeout in the main thread (cleanup runs)."""
    global _deadline
    _deadline = time.monotonic() + seconds

    def ring(_sig: int, _frame: Any) -> None:
        raise BenchTimeout(f"benchmark exceeded its time limit of {seconds:.0f} s")

    def terminate(_sig: int, _frame: Any) -> None:
        raise KeyboardInterrupt  # unwinds through the finally blocks that remove temp dirs

    signal.signal(signal.SIGALRM, ring)
    signal.signal(signal.SIGTERM, terminate)
    signal.setitimer(signal.ITIMER_REAL, seconds)


def remaining(default: float = 3600.0) -> float:
    """Seconds left before the deadline (for subprocess timeouts)."""
    if _deadline is None:
        return default
    return max(1.0, _deadline - time.monotonic())


# -- temp dirs -----------------------------------------------------------------------------


@contextlib.contextmanager
def temp_dir(prefix: str, keep: bool = False, base: str | None = None) -> Iterator[Path]:
    """A temp dir removed on the way out (also on errors, Ctrl-C and timeouts)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    try:
        yield path
    finally:
        if keep:
            log(f"kept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


# -- running and timing --------------------------------------------------------------------


def log(message: str) -> None:
    """Progress on stderr, so stdout stays the report."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run(
    argv: Sequence[str] | str,
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    shell: bool = False,
    capture: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion (checked, bounded by the deadline)."""
    return subprocess.run(
        argv,
        env=env,
        cwd=cwd,
        shell=shell,
        executable="/bin/bash" if shell else None,
        check=True,
        text=True,
        stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
        stderr=subprocess.PIPE if capture else None,
        timeout=remaining(),
    )


def timed(
    argv: Sequence[str] | str,
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    shell: bool = False,
) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Whole-process wall time of a command, in seconds, and its result.

    The result also carries ``cpu_seconds``: user + system CPU time of the command and
    every process it waited for. On a busy machine wall time swings with the load, CPU
    time much less, so it is the better figure for comparing two versions of the code.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    try:
        done = run(argv, env=env, cwd=cwd, shell=shell)
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(
            f"command failed ({exc.returncode}): {argv}\nstdout: {exc.stdout}\nstderr: {exc.stderr}"
        ) from None
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    done.cpu_seconds = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)  # type: ignore[attr-defined]
    return wall, done


def sync_disks() -> None:
    """Flush dirty pages so one measurement does not pay for the previous one's writes."""
    os.sync()


def _block_stat(path: Path) -> Path | None:
    dev = os.stat(path).st_dev
    candidate = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}/stat")
    return candidate if candidate.exists() else None


SETTLE_LIMIT = 5.0  # scripts set it from --settle


def settle(path: Path, quiet: float = 1.0, limit: float | None = None) -> float:
    """Flush dirty pages, then wait until the disk stops discarding (at most *limit* s).

    Deleting many files on a filesystem mounted with ``discard`` (as here) makes the
    journal issue TRIMs for a while afterwards, and every create and rename in the next
    measurement waits behind them: a scan right after removing the previous run's tree
    took 4.7-6.7 s, the same scan after the discards finished 3.1-3.7 s. The counters are
    the whole device's, so other work on the machine can keep them moving: hence the
    limit (``SETTLE_LIMIT``, ``--settle``). Returns the seconds waited.
    """
    limit = SETTLE_LIMIT if limit is None else limit
    start = time.monotonic()
    os.sync()
    stat_file = _block_stat(path)
    if stat_file is None:
        return time.monotonic() - start

    def discards() -> tuple[str, ...]:
        fields = stat_file.read_text().split()
        return tuple(fields[11:13]) if len(fields) >= 13 else ()

    last, quiet_since = discards(), time.monotonic()
    while time.monotonic() - start < limit:
        time.sleep(0.2)
        now_seen = discards()
        if now_seen != last:
            last, quiet_since = now_seen, time.monotonic()
        elif time.monotonic() - quiet_since >= quiet:
            break
    return time.monotonic() - start


def drop_caches() -> bool:
    """Drop the page cache when we may (root); False otherwise."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def warm(paths: Sequence[Path]) -> None:
    """Read files once so they are in the page cache."""
    buf = bytearray(1 << 20)
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass


def which(name: str) -> str:
    found = shutil.which(name)
    if not found:
        raise SystemExit(f"{name!r} is not on PATH")
    return found


# -- statistics ----------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (p99 of 200 samples is the 198th smallest)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), int(-(-pct * len(ordered) // 100))))
    return ordered[rank - 1]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def secs(seconds: float) -> str:
    return f"{seconds:.3f} s"


def verdict(value: float, target: float) -> str:
    return "MET" if value <= target else "MISSED"


# -- profiling across threads --------------------------------------------------------------


class ThreadProfiler:
    """cProfile for the main thread *and* the work Trio hands to worker threads.

    Plain ``python -m cProfile`` sees only the main thread, where a Trio program spends
    its time waiting in epoll while the real work (copying, hashing, fsync, SQLite) runs
    in ``trio.to_thread`` workers. This wraps ``trio.to_thread.run_sync`` so every worker
    call runs under its own profiler, and merges all of them into one ``pstats.Stats``.
    """

    def __init__(self) -> None:
        self._main = cProfile.Profile()
        self._worker: list[cProfile.Profile] = []
        self._lock = threading.Lock()
        self._original: Callable[..., Any] | None = None

    def __enter__(self) -> ThreadProfiler:
        import trio

        original = trio.to_thread.run_sync
        self._original = original
        profiler = self

        async def run_sync(sync_fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
            def profiled(*a: Any) -> Any:
                prof = cProfile.Profile()
                try:
                    return prof.runcall(sync_fn, *a)
                finally:
                    with profiler._lock:
                        profiler._worker.append(prof)

            return await original(profiled, *args, **kwargs)

        trio.to_thread.run_sync = run_sync
        self._main.enable()
        return self

    def __exit__(self, *exc: object) -> None:
        import trio

        self._main.disable()
        trio.to_thread.run_sync = self._original

    def stats(self) -> pstats.Stats:
        out = io.StringIO()
        stats = pstats.Stats(self._main, stream=out)
        for prof in self._worker:
            stats.add(prof)
        return stats

    def report(self, sort: str, lines: int) -> str:
        stats = self.stats()
        out = io.StringIO()
        stats.stream = out  # type: ignore[attr-defined]
        stats.strip_dirs().sort_stats(sort).print_stats(lines)
        text = out.getvalue()
        # Keep the table: drop pstats' blank preamble lines.
        return "\n".join(line for line in text.splitlines() if line.strip() or False)


class PhaseTimer:
    """Wall time spent in chosen functions, whichever thread runs them.

    ``wrap(obj, "name", "label")`` replaces ``obj.name`` by a timing wrapper (sync or
    async); ``restore()`` puts every original back.
    """

    def __init__(self) -> None:
        self.total: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._lock = threading.Lock()
        self._undo: list[tuple[Any, str, Any]] = []

    def add(self, label: str, seconds: float) -> None:
        with self._lock:
            self.total[label] = self.total.get(label, 0.0) + seconds
            self.calls[label] = self.calls.get(label, 0) + 1

    def wrap(
        self,
        obj: Any,
        name: str,
        label: str,
        *,
        materialize: bool = False,
        contextmanager: bool = False,
    ) -> None:
        """``materialize``: the function returns an iterator; time its full consumption
        (the wrapper returns a list). ``contextmanager``: time entering and leaving only,
        not the body of the ``with``."""
        import inspect

        raw = vars(obj).get(name) if isinstance(obj, type) or hasattr(obj, "__dict__") else None
        original = getattr(obj, name)
        timer = self
        self._undo.append((obj, name, raw))
        static = isinstance(raw, staticmethod)

        if contextmanager:

            @contextlib.contextmanager
            def cm_wrapper(*args: Any, **kwargs: Any) -> Iterator[Any]:
                start = time.perf_counter()
                manager = original(*args, **kwargs)
                value = manager.__enter__()
                spent = time.perf_counter() - start
                try:
                    yield value
                except BaseException as exc:
                    start = time.perf_counter()
                    try:
                        if not manager.__exit__(type(exc), exc, exc.__traceback__):
                            raise
                    finally:
                        timer.add(label, spent + time.perf_counter() - start)
                else:
                    start = time.perf_counter()
                    try:
                        manager.__exit__(None, None, None)
                    finally:
                        timer.add(label, spent + time.perf_counter() - start)

            setattr(obj, name, cm_wrapper)
        elif materialize:

            def list_wrapper(*args: Any, **kwargs: Any) -> list[Any]:
                start = time.perf_counter()
                try:
                    return list(original(*args, **kwargs))
                finally:
                    timer.add(label, time.perf_counter() - start)

            setattr(obj, name, list_wrapper)
        elif inspect.iscoroutinefunction(original):

            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                start = time.perf_counter()
                try:
                    return await original(*args, **kwargs)
                finally:
                    timer.add(label, time.perf_counter() - start)

            setattr(obj, name, async_wrapper)
        else:

            def wrapper(*args: Any, **kwargs: Any) -> Any:
                start = time.perf_counter()
                try:
                    return original(*args, **kwargs)
                finally:
                    timer.add(label, time.perf_counter() - start)

            setattr(obj, name, wrapper)
        if static:
            setattr(obj, name, staticmethod(getattr(obj, name)))

    def wrap_any(self, obj: Any, names: Sequence[str], label: str, **options: bool) -> bool:
        """Wrap the first of *names* that *obj* has (code under test gets renamed); False
        and a note on stderr when it has none of them."""
        for name in names:
            if hasattr(obj, name):
                self.wrap(obj, name, label, **options)
                return True
        log(f"note: {getattr(obj, '__name__', obj)} has none of {', '.join(names)}: not timed")
        return False

    def restore(self) -> None:
        for obj, name, original in reversed(self._undo):
            if original is None:
                with contextlib.suppress(AttributeError):
                    delattr(obj, name)
            else:
                setattr(obj, name, original)
        self._undo.clear()

    def table(self, whole: float | None = None) -> list[dict[str, Any]]:
        rows = []
        for label, seconds in sorted(self.total.items(), key=lambda kv: -kv[1]):
            row = {"phase": label, "seconds": seconds, "calls": self.calls[label]}
            if whole:
                row["share"] = seconds / whole
            rows.append(row)
        return rows


def format_phases(rows: list[dict[str, Any]]) -> str:
    lines = [f"  {'phase':<44} {'seconds':>9} {'calls':>7} {'share':>7}"]
    for row in rows:
        share = f"{row['share'] * 100:6.1f}%" if "share" in row else ""
        lines.append(f"  {row['phase']:<44} {row['seconds']:9.3f} {row['calls']:7d} {share:>7}")
    return "\n".join(lines)


# -- output --------------------------------------------------------------------------------


def emit(as_json: bool, data: dict[str, Any], text: str) -> None:
    if as_json:
        print(json.dumps(data, indent=2, default=str))
    else:
        print(text)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU time of these processes (all their threads) so far."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


class GodotStandIn:
    """``scripts/rpcpeers.py godot`` in a process of its own: a Godot that answers each
    log call as cheaply as it can (asyncio and the C-accelerated ``websockets``), so that
    a benchmark measures the sink, not its peer. (tests/godot_standin.py, on
    trio-websocket, spent 190-240 µs an entry: more than the sink.)"""

    def __init__(self) -> None:
        port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "scripts" / "rpcpeers.py"), "godot", "--port", str(port)],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.url = f"ws://127.0.0.1:{port}"
        self.entries: int | None = None
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if line.strip() != "READY":
            self.proc.kill()
            raise SystemExit(f"the Godot stand-in did not start: {line!r}")

    def cpu_seconds(self) -> float:
        return cpu_seconds([self.proc.pid])

    def stop(self) -> int | None:
        """Stop it (once); how many log entries it took."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            out, _ = self.proc.communicate(timeout=30)
            said = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
            self.entries = int(said[0]["entries"]) if said else None
        return self.entries


def use_source(src: str | None) -> Path:
    """Benchmark the Horace source tree *src* (default: this checkout) in this process
    and in the children we start (PYTHONPATH goes before the editable install's path)."""
    root = Path(src).resolve() if src else ROOT
    if str(root) in sys.path:
        sys.path.remove(str(root))
    sys.path.insert(0, str(root))
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(root), *(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p)]
    )
    return root


def horace_command() -> list[str]:
    """How to start the CLI: the installed ``horace`` console script (past a pyenv shim,
    whose bash start-up is not Horace's), else the same thing spelled with ``python -c``.
    Either imports the source tree chosen by :func:`use_source` through PYTHONPATH."""
    beside = Path(sys.executable).parent / "horace"  # this interpreter's console script
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    found = shutil.which("horace")
    if found and "/shims/" not in found:
        return [found]
    return [
        sys.executable,
        "-c",
        "import sys; sys.argv[0] = 'horace'; from horace.cli import main; sys.exit(main())",
    ]


def environment() -> dict[str, Any]:
    import platform

    fs = "?"
    with contextlib.suppress(Exception):
        fs = run(["stat", "-f", "-c", "%T", tempfile.gettempdir()]).stdout.strip()
    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "tmp_filesystem": fs,
        "tmp": tempfile.gettempdir(),
        "loadavg": os.getloadavg(),
    }
