"""SIGKILL in the middle of versioning loses nothing that was committed (SPEC §2).

A worker process (tests/workers/version_loop.py) versions two files in a loop and prints
every version that ``catalog.update`` returned. It is killed with SIGKILL at random
moments, many times, then restarted (some restarts run the start-up fsck, most do not, so
leftovers pile up). Afterwards ``fsck --repair --deep`` may only find the kinds of
leftover a crash can make (temp files of dead processes, objects without a row) and must
repair all of them; every version a worker reported is still there with correct bytes,
versions are dense, and a second fsck is clean.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import attrs
import pytest
import trio
from helpers import write
from processes import parse, start_worker, worker_command
from soundness import assert_sound, check_file_versions, digest, object_digest, temps_left

from horace.assemble import open_catalog
from horace.backends.records import FileChanges
from horace.config import Settings
from horace.fsck import fsck
from horace.storage import TMP_PREFIX

KILLS = 25
PATHS = ("user/crash/a.bin", "shared/crash/deep/b.bin")
CRASH_LEFTOVERS = {"temp_leftover", "orphan_object"}


@pytest.mark.slow
async def test_sigkill_loses_no_committed_version(settings: Settings, files: Path) -> None:
    rng = random.Random()
    initial = {}
    async with open_catalog(settings, create=True) as catalog:
        for rel in PATHS:
            initial[rel] = write(files / rel, f"initial {rel}\n".encode()).read_bytes()
            await catalog.register(rel)

    committed: dict[tuple[str, int], str] = {}
    wrote: set[tuple[str, str]] = {(rel, digest(data)) for rel, data in initial.items()}
    killed_mid_run = 0
    for run in itertools.count():
        if (run >= KILLS and killed_mid_run >= 1) or run >= 3 * KILLS:
            break
        options = [
            "--inplace",
            "--min-size",
            "1",
            "--max-size",
            str(2 * 1024 * 1024),
            "--tag",
            f"run{run}",
        ]
        if run % 4 == 3:
            options.append("--check")  # the start-up fsck repairs what earlier kills left
        command = worker_command(settings.storage_path, settings.catalog_url, PATHS, *options)
        async with trio.open_nursery() as nursery:
            worker = await start_worker(nursery, command)
            with trio.fail_after(60):
                await worker.ready.wait()
            await trio.sleep(rng.uniform(0.01, 0.5))
            assert worker.process.returncode is None, worker.lines
            worker.process.send_signal(signal.SIGKILL)
            await worker.process.wait()
            with trio.fail_after(10):
                await worker.finished.wait()
        assert worker.process.returncode == -signal.SIGKILL
        reported = parse(worker.lines)
        wrote |= reported.wrote
        for rel, version, checksum in reported.committed:
            assert committed.setdefault((rel, version), checksum) == checksum, "a version number reused"
        killed_mid_run += worker.lines[-1].startswith("wrote")
    assert len(committed) >= KILLS, f"the workers committed too little to prove anything: {len(committed)}"
    assert killed_mid_run >= 1, "no kill landed between a write and its commit"

    # Look at what the kills left, then repair it (objects a kill left without their rows
    # too: collected here at once, not a retention later).
    repairing = attrs.evolve(settings, deleted_retention=0.0)
    async with open_catalog(repairing, create=True, check=False) as catalog:
        temps = [p for p in temps_left(catalog) if p.name.startswith(TMP_PREFIX)]
        report = await fsck(catalog, repair=True, deep=True)
        kinds = {f.kind for f in report.findings}
        assert kinds <= CRASH_LEFTOVERS, [f"{f.kind}: {f.detail}" for f in report.findings]
        assert all(f.repaired for f in report.findings), [f.detail for f in report.findings if not f.repaired]
        assert {Path(str(f.subject)) for f in report.findings if f.kind == "temp_leftover"} == set(temps)
        assert temps_left(catalog) == []

        # No committed version lost, each with the right bytes; nothing but written content.
        for rel in PATHS:
            file = (await catalog.get_info(file_path=rel)).file
            versions = await catalog.backend.versions(file.id)
            check_file_versions(catalog, file, versions, dense=True)
            by_number = {v.version: v.checksum for v in versions}
            mine = {version: checksum for (r, version), checksum in committed.items() if r == rel}
            for version, checksum in mine.items():
                assert by_number.get(version) == checksum, f"{rel}: committed version {version} lost"
                assert object_digest(catalog.storage.object_path(checksum))[0] == checksum
            assert {(rel, c) for c in by_number.values()} <= wrote, "a version of content nobody wrote"
            ordered = [by_number[n] for n in sorted(by_number)]
            assert all(a != b for a, b in pairwise(ordered)), "a version of unchanged content"

        again = await fsck(catalog, deep=True)
        assert again.clean, [f"{f.kind}: {f.detail}" for f in again.findings]
        await assert_sound(catalog)
        # The catalog goes on working after all this.
        path = write(files / PATHS[0], b"after the crashes")
        file = (await catalog.get_info(file_path=PATHS[0])).file
        assert (await catalog.update(file.id, FileChanges())).version_created
        await assert_sound(catalog)
        assert path.read_bytes() == b"after the crashes"
    print(
        f"{KILLS} kills, {len(committed)} committed versions, "
        f"{killed_mid_run} kills between write and commit, "
        f"repaired: {sorted(f.kind for f in report.findings)}"
    )


# ext4's "going down" ioctl (as XFS's): the filesystem stops where it is, its journal not
# flushed, as in a power cut; what was not on the disk by then is gone at the next mount.
EXT4_IOC_SHUTDOWN = 0x8004587D
EXT4_GOING_FLAGS_NOLOGFLUSH = 2


@contextlib.contextmanager
def ext4_image(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A small ext4 filesystem in a file, mounted (needs root and a loop device)."""
    image, mount = tmp_path / "disk.img", tmp_path / "mnt"
    mount.mkdir()
    with image.open("wb") as out:
        out.truncate(96 << 20)
    made = subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot make an ext4 filesystem here: {made.stderr.strip()}")
    mounted = subprocess.run(["mount", "-o", "loop", str(image), str(mount)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a loop device here (needs root): {mounted.stderr.strip()}")
    try:
        yield image, mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow
def test_a_power_cut_loses_no_version_a_client_was_told_of(tmp_path: Path) -> None:
    """A server holds the SQLite catalog open (no checkpoint at a close to save the day);
    versions are recorded beside it and reported; then the disk stops as in a power cut
    and the server dies. After a new mount, every reported version is there."""
    from test_cli import horace

    with ext4_image(tmp_path) as (image, mount):
        root = mount / "store"
        env = {"HORACE_STORAGE_PATH": str(root)}
        assert horace("init", env=env).returncode == 0
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("HORACE_", "GODOT"))}
        server = subprocess.Popen(
            [sys.executable, "-m", "horace", "serve", "--port", str(port)],
            env={**clean, **env, "HORACE_CONVERSATIONS": "off"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 60
            while True:  # (serving: it holds the catalog open)
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    assert server.poll() is None and time.monotonic() < deadline, "the server did not start"
                    time.sleep(0.1)
            told = {}
            for n in range(1, 6):
                write(root / "files/user/a.txt", f"version {n}\n")
                done = horace("register", "user/a.txt", "--json", env=env)
                assert done.returncode == 0, done.stderr
                record = json.loads(done.stdout)["file"]
                told[record["current_version"]] = record["checksum"]
            fs = os.open(mount, os.O_RDONLY)  # (a folder's descriptor is the filesystem's handle)
            try:
                fcntl.ioctl(fs, EXT4_IOC_SHUTDOWN, struct.pack("I", EXT4_GOING_FLAGS_NOLOGFLUSH))
            finally:
                os.close(fs)
        finally:
            server.kill()
            server.wait()
        assert subprocess.run(["umount", str(mount)], capture_output=True).returncode == 0
        assert subprocess.run(["mount", "-o", "loop", str(image), str(mount)]).returncode == 0
        shown = horace("info", "user/a.txt", "--versions", "--json", env=env)
        assert shown.returncode == 0, shown.stderr
        kept = {v["version"]: v["checksum"] for v in json.loads(shown.stdout)["versions"]}
        assert kept == told
