"""device-sim authenticates like a real device: per-device passwords (templates, a password file, the
environment) and client certificates over TLS, against the real mosquitto running the shipped
conf/mosquitto/ configuration (its ACL lets each device publish only under its own id, so a
delivered message proves the device connected as itself)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from hypothesis import given
from hypothesis import strategies as st

from device_sim.builtin_profiles import BUILTIN_PROFILES
from device_sim.cli import main
from device_sim.credentials import Credentials, load_password_file
from device_sim.errors import SimConfigError
from device_sim.runner import Runner
from device_sim.topics import ID_PATTERN
from tests.device_sim.helpers import broker_at, device_responses, device_telemetry, run_settings
from tests.secure_mosquitto import Deployment, secure_mosquitto
from tests.support import RecordingClient, eventually

DEVICES = ["dev-0001", "dev-0002", "dev-0003"]
GATEWAY = ("edge-gateway", "pw-gw")

pytestmark = pytest.mark.timeout(120)


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env)


async def invoke_async(*args: str, env: dict[str, str] | None = None) -> Result:
    return await asyncio.to_thread(invoke, *args, env=env)


@pytest.fixture
def deployment() -> Iterator[Deployment]:
    with secure_mosquitto({**{d: f"pw-{d}" for d in DEVICES}, GATEWAY[0]: GATEWAY[1]}) as running:
        yield running


@pytest.fixture
def gateway_view(deployment: Deployment) -> Iterator[RecordingClient]:
    """What the gateway's own user receives: every device topic the ACL lets devices publish."""
    col = RecordingClient(deployment.port, username=GATEWAY[0], password=GATEWAY[1]).start().wait_connected()
    assert col.wait_subscribe("devices/#") == [1]
    try:
        yield col
    finally:
        col.stop()


def password_file(folder: Path, entries: dict[str, str]) -> Path:
    path = folder / "passwords.txt"
    path.write_text("# device passwords\n\n" + "".join(f"{d}:{p}\n" for d, p in entries.items()))
    return path


def devices_seen(view: RecordingClient) -> set[str]:
    return set(device_telemetry(view))


# ---- options and files, no broker -----------------------------------------------------------------

@pytest.mark.parametrize(("args", "option"), [
    (["--password-file", "/no/such/file"], "--password-file"),
    (["--password", "x", "--password-file", "{pwfile}"], "--password-file"),
    (["--devices", "5", "--password-file", "{pwfile}"], "--password-file"),  # no line for dev-0005
    (["--password-file", "{badfile}"], "--password-file"),
    (["--cert", "{dir}/missing-{device_id}.crt"], "--cert"),
    (["--key", "{dir}/k.key"], "--key"),
    (["--shared-connection", "--password", "pw-{device_id}"], "--shared-connection"),
    (["--shared-connection", "--password-file", "{pwfile}"], "--shared-connection"),
    (["--host", "ftp://example.org"], "--host"),
    (["--host", "mqtt://example.org:99999"], "--host"),
    (["--host", "mqtt://h:1883", "--port", "1884"], "--port"),
    (["--host", "mqtt://h", "--tls"], "mqtts://"),
])
def test_bad_auth_options_exit_2_naming_the_option(tmp_path: Path, args: list[str], option: str) -> None:
    pwfile = password_file(tmp_path, {d: "pw" for d in DEVICES})
    badfile = tmp_path / "bad.txt"
    badfile.write_text("dev-0001 no colon\n")
    values = {"{pwfile}": str(pwfile), "{badfile}": str(badfile), "{dir}": str(tmp_path)}
    for placeholder, value in values.items():
        args = [a.replace(placeholder, value) for a in args]
    result = invoke("run", "--devices", "3", "--count", "1", "--connect-timeout", "1", *args)
    assert result.exit_code == 2, result.output
    assert option in result.output and "Traceback" not in result.output


def test_replay_with_per_device_credentials_takes_no_client_id(tmp_path: Path) -> None:
    csv = tmp_path / "r.csv"
    csv.write_text("device,metric,ts,value\ndev-0001,t,1700000000,1\n")
    result = invoke("replay", str(csv), "--password", "pw-{device_id}", "--client-id", "x")
    assert result.exit_code == 2 and "--client-id" in result.output


@pytest.mark.parametrize(("text", "reason", "line"), [
    ("dev-1\n", "expected device_id:password", 2),
    ("dev-1:\n", "expected device_id:password", 2),
    ("bad/id:pw\n", "not a valid device id", 2),
    ("dev-1:a\ndev-1:b\n", "listed twice", 3),
    ("dev-1:$7$101$c2FsdA==$aGFzaA==\n", "hashed password", 2),
])
def test_password_file_errors_name_the_line(tmp_path: Path, text: str, reason: str, line: int) -> None:
    path = tmp_path / "p.txt"
    path.write_text("# header\n" + text)
    with pytest.raises(SimConfigError, match=reason) as caught:
        load_password_file(path)
    assert caught.value.option == "--password-file"
    assert f"{path}, line {line}:" in str(caught.value)


DEVICE_ID = st.from_regex(ID_PATTERN, fullmatch=True)
PASSWORD = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), min_size=1, max_size=40).filter(
    lambda p: p == p.strip() and not p.startswith("$") and p.strip() != "")


@given(st.dictionaries(DEVICE_ID, PASSWORD, max_size=20))
def test_every_password_file_entry_reads_back(entries: dict[str, str]) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        loaded = load_password_file(password_file(Path(folder), entries))
    assert loaded == entries
    creds = Credentials(passwords=loaded)
    for device_id, password in entries.items():
        auth = creds.for_device(device_id)
        assert (auth.username, auth.password) == (device_id, password)


LITERAL = st.text(max_size=30).filter(lambda t: "{device_id}" not in t)


@given(DEVICE_ID, LITERAL, LITERAL)
def test_templates_put_the_device_id_in_place(device_id: str, before: str, after: str) -> None:
    template = f"{before}{{device_id}}{after}"
    auth = Credentials(username=template, password=template, cert=template, key=template).for_device(device_id)
    filled = before + device_id + after
    assert auth == type(auth)(filled, filled, filled, filled)


# ---- against the shipped mosquitto ---------------------------------------------------------------

async def test_run_with_a_password_template_and_from_the_environment(deployment: Deployment,
                                                                     gateway_view: RecordingClient) -> None:
    port = str(deployment.port)
    result = await invoke_async("run", "-p", port, "--devices", "2", "--count", "3", "--rate-hz", "50",
                                "--password", "pw-{device_id}", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["sent"] == 6
    from_env = await invoke_async("run", "-p", port, "--devices", "3", "--count", "2", "--rate-hz", "50", "--json",
                                  env={"DEVICE_SIM_PASSWORD": "pw-{device_id}"})
    assert from_env.exit_code == 0, from_env.output
    await eventually(lambda: devices_seen(gateway_view) == set(DEVICES))


async def test_run_with_a_password_file(deployment: Deployment, gateway_view: RecordingClient, tmp_path: Path) -> None:
    pwfile = password_file(tmp_path, {d: f"pw-{d}" for d in DEVICES})
    result = await invoke_async("run", "-p", str(deployment.port), "--devices", "3", "--count", "2",
                                "--rate-hz", "50", "--password-file", str(pwfile), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["sent"] == 6
    await eventually(lambda: devices_seen(gateway_view) == set(DEVICES))


async def test_a_wrong_password_is_reported_clearly(deployment: Deployment, tmp_path: Path) -> None:
    pwfile = password_file(tmp_path, {"dev-0001": "pw-dev-0001", "dev-0002": "wrong"})
    result = await invoke_async("run", "-p", str(deployment.port), "--devices", "2", "--count", "1",
                                "--password-file", str(pwfile))
    assert result.exit_code == 1, result.output
    assert "broker refused: Not authorized (client id 'dev-0002' as 'dev-0002')" in result.output
    assert "Traceback" not in result.output
    anonymous = await invoke_async("publish", "-p", str(deployment.port), "--device", "dev-0001",
                                   "--metric", "t", "--value", "1")
    assert anonymous.exit_code == 1 and "Not authorized" in anonymous.output
    wrong = await invoke_async("publish", "-p", str(deployment.port), "--device", "dev-0003", "--metric", "t",
                               "--value", "1", env={"DEVICE_SIM_PASSWORD": "nope"})
    assert wrong.exit_code == 1  # publish connects as the device: client id and username are its id
    assert "broker refused: Not authorized (client id 'dev-0003' as 'dev-0003')" in wrong.output


async def test_devices_answer_commands_through_the_acl(deployment: Deployment, gateway_view: RecordingClient) -> None:
    broker = broker_at("127.0.0.1", deployment.port, credentials=Credentials(password="pw-{device_id}"))
    runner = Runner(run_settings(BUILTIN_PROFILES["room"], devices=2, rate_hz=5.0), broker)
    task = asyncio.create_task(runner.run())
    try:
        await eventually(lambda: devices_seen(gateway_view) == {"dev-0001", "dev-0002"})
        gateway_view.send("devices/dev-0002/commands/ping", json.dumps({"id": "c-1"}))
        await eventually(lambda: "c-1" in device_responses(gateway_view, "dev-0002"))
        assert device_responses(gateway_view, "dev-0002")["c-1"]["status"] == "ok"
    finally:
        runner.request_stop()
        summary = await asyncio.wait_for(task, 30)
    assert summary["commands_answered"] == 1 and summary["failed"] == 0


async def test_publish_and_replay_authenticate_as_the_device(deployment: Deployment, gateway_view: RecordingClient,
                                                             tmp_path: Path) -> None:
    port = str(deployment.port)
    one = await invoke_async("publish", "-p", port, "--device", "dev-0003", "--metric", "t", "--value", "7",
                             "--password", "pw-{device_id}")
    assert one.exit_code == 0, one.output
    csv = tmp_path / "readings.csv"
    csv.write_text("device,metric,ts,value\ndev-0001,t,1700000000,1\ndev-0002,t,1700000000.5,2\n")
    pwfile = password_file(tmp_path, {d: f"pw-{d}" for d in DEVICES})
    replayed = await invoke_async("replay", str(csv), "-p", port, "--fast", "--password-file", str(pwfile), "--json")
    assert replayed.exit_code == 0, replayed.output
    assert json.loads(replayed.stdout)["per_device"] == {"dev-0001": 1, "dev-0002": 1}
    await eventually(lambda: devices_seen(gateway_view) == set(DEVICES))


async def test_run_with_client_certificates(deployment: Deployment, gateway_view: RecordingClient) -> None:
    certs = deployment.ca.folder
    for device in DEVICES[:2]:
        deployment.ca.client(device)
    url = f"mqtts://127.0.0.1:{deployment.tls_port}"
    result = await invoke_async("run", "--host", url, "--cafile", str(deployment.ca.cert), "--devices", "2",
                                "--count", "3", "--rate-hz", "50", "--cert", f"{certs}/{{device_id}}.crt",
                                "--key", f"{certs}/{{device_id}}.key", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["sent"] == 6
    await eventually(lambda: devices_seen(gateway_view) == {"dev-0001", "dev-0002"})
    foreign = deployment.foreign_ca.client("dev-0001")
    expired = deployment.ca.client("dev-0001", expired=True, stem="expired")
    for issued, why in ((foreign, "alert unknown ca"), (expired, "alert certificate expired")):
        refused = await invoke_async("run", "--host", url, "--cafile", str(deployment.ca.cert), "--count", "1",
                                     "--cert", str(issued.cert), "--key", str(issued.key), "--connect-timeout", "5")
        assert refused.exit_code == 1, refused.output
        assert "cannot connect to" in refused.output and why in refused.output, refused.output
        assert "Traceback" not in refused.output
