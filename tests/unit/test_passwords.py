"""The password file: mosquitto-compatible hashes both ways, strict parsing, verification off the
event loop with a cache, and reloads that keep the old credentials when a new file is bad."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import CredentialsError
from gateway.source.credentials import Changes, CredentialStore
from gateway.source.passwords import (
    PasswordHash,
    PasswordVerifier,
    hash_password,
    parse_password_file,
    provision,
    read_password_file,
    write_password_file,
)
from tests.support import Mosquitto, RecordingClient, eventually, require_tool


@settings(max_examples=25, deadline=None)
@given(st.text(min_size=1, max_size=40), st.text(min_size=1, max_size=40))
def test_a_hash_matches_its_password_only(password: str, other: str) -> None:
    parsed = PasswordHash.parse(hash_password(password, iterations=1000))
    assert parsed.matches(password)
    assert parsed.matches(other) == (other == password)


def test_reads_what_mosquitto_passwd_writes(tmp_path: Path) -> None:
    tool = require_tool("mosquitto_passwd")
    subprocess.run([tool, "-c", "-b", str(tmp_path / "p"), "dev-1", "hunter2"], check=True)
    entries = read_password_file(tmp_path / "p")
    assert PasswordHash.parse(entries["dev-1"]).matches("hunter2")
    assert not PasswordHash.parse(entries["dev-1"]).matches("hunter3")


async def test_mosquitto_accepts_the_file_we_write() -> None:
    mosq = Mosquitto()
    try:
        passwd = mosq._dir / "passwd"
        write_password_file(passwd, {"dev-1": hash_password("s3cret")})
        passwd.chmod(0o644)  # mosquitto drops root and must read it
        conf = mosq._conf.read_text().replace("allow_anonymous true", "allow_anonymous false")
        mosq._conf.write_text(conf + f"password_file {passwd}\n")
        mosq.start()
        good = await RecordingClient(mosq.port, "dev-1", "dev-1", "s3cret").start().connected()
        bad = RecordingClient(mosq.port, "dev-1x", "dev-1", "wrong").start()
        await bad.refused()
        good.stop()
        bad.stop()
    finally:
        mosq.cleanup()


@pytest.mark.parametrize(("text", "where"), [
    ("dev-1:$7$101$AAAA$AAAA\n", ":1:"),
    ("# comment\n\ndev/1:" + hash_password("x", 1000) + "\n", ":3:"),
    ("dev-1:" + hash_password("x", 1000) + "\ndev-1:" + hash_password("y", 1000) + "\n", "twice"),
    ("dev-1:$6$abc$def\n", "$7$"),
    ("just-a-name\n", "expected DEVICE_ID"),
])
def test_a_bad_line_is_named(text: str, where: str) -> None:
    with pytest.raises(CredentialsError, match=r"passwd.*" + where.replace("$", r"\$")):
        parse_password_file(text, "passwd")


async def test_verification_runs_off_the_loop_and_is_cached() -> None:
    verifier = PasswordVerifier({"d1": hash_password("pw", iterations=400_000)})
    ticks = 0
    done = False

    async def ticker() -> None:
        nonlocal ticks
        while not done:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    assert await verifier.verify("d1", "pw")
    ticks_during_hash = ticks
    assert not await verifier.verify("d1", "nope")
    assert await verifier.verify("d1", "pw")
    done = True
    await task
    assert ticks_during_hash > 10  # the loop kept running while PBKDF2 ran
    assert verifier.hashes_computed == 2 and verifier.cache_hits == 1
    assert not await verifier.verify("ghost", "pw")


async def test_a_changed_password_invalidates_the_cache() -> None:
    verifier = PasswordVerifier({"d1": hash_password("old", 1000)})
    assert await verifier.verify("d1", "old")
    verifier.replace({"d1": hash_password("new", 1000)})
    assert not await verifier.verify("d1", "old")
    assert await verifier.verify("d1", "new")


def test_reload_reports_removed_devices_and_keeps_credentials_on_a_bad_file(tmp_path: Path) -> None:
    passwd = tmp_path / "passwd"
    provision(passwd, tmp_path / "creds", ["d1", "d2"], iterations=1000)
    assert (tmp_path / "creds").stat().st_mode & 0o077 == 0 and passwd.stat().st_mode & 0o077 == 0
    store = CredentialStore(passwd, None)
    store.load()
    assert store.verifier.devices == {"d1", "d2"}
    entries = read_password_file(passwd)
    del entries["d1"]
    write_password_file(passwd, entries)
    assert store.changed_on_disk()
    changes = store.reload()
    assert changes is not None and changes.removed == {"d1"}
    entries["d2"] = hash_password("rotated", 1000)  # a new password: the connection may stay
    write_password_file(passwd, entries)
    changes = store.reload()
    assert changes is not None and not changes.removed
    passwd.write_text("garbage\n")
    assert store.reload() is None and store.reload_errors == 1
    assert store.verifier.devices == {"d2"}


async def test_watch_reloads_on_wake_without_a_file_change(tmp_path: Path) -> None:
    passwd = tmp_path / "passwd"
    provision(passwd, tmp_path / "creds", ["d1"], iterations=1000)
    store = CredentialStore(passwd, None)
    store.load()
    stop, wake = asyncio.Event(), asyncio.Event()
    seen: list[Changes] = []
    task = asyncio.create_task(store.watch(stop, 3600, wake, seen.append))
    wake.set()
    await eventually(lambda: store.reloads == 1, message="SIGHUP-style wake did not reload")
    stop.set()
    await task
    assert seen and not seen[0].removed


def test_rewriting_keeps_the_files_mode_owner_and_group(tmp_path: Path) -> None:
    """An operator gives an external mosquitto read access through the group (chgrp + chmod 640);
    adding a device later must not take it away."""
    import os

    path = tmp_path / "passwd"
    write_password_file(path, {"dev-1": hash_password("one", 101)})
    assert path.stat().st_mode & 0o777 == 0o600  # a new file is owner-only
    group = 4321 if os.geteuid() == 0 else os.getgid()  # root (as in CI) may hand it to any group
    os.chown(path, -1, group)
    path.chmod(0o640)
    write_password_file(path, {"dev-1": hash_password("one", 101), "dev-2": hash_password("two", 101)})
    assert path.stat().st_mode & 0o777 == 0o640
    assert path.stat().st_gid == group
    assert set(read_password_file(path)) == {"dev-1", "dev-2"}
