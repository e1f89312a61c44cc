from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.errors import ConfigError

REFERENCE = Path(__file__).resolve().parents[2] / "conf" / "gateway.toml"


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "gw.toml"
    p.write_text(text)
    return p


def problems(tmp_path: Path, text: str) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert str(tmp_path / "gw.toml") in str(info.value)
    return info.value.problems


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    cfg, secrets = load_config(write(tmp_path, ""))
    assert cfg.gateway.id == "gw-01" and cfg.batch.compression == "zlib"
    assert secrets.uplink_password is None


def test_reference_config_is_valid_without_any_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGE_UPLINK_PASSWORD", raising=False)
    cfg, secrets = load_config(REFERENCE)
    assert cfg.rules, "the reference config shows rules"
    assert secrets.uplink_password is None


def test_protocol_may_be_the_integer_5(tmp_path: Path) -> None:
    cfg, _ = load_config(write(tmp_path, "[uplink]\nprotocol = 5\n"))
    assert cfg.uplink.protocol == "5"
    assert "uplink.protocol" in [k for k, _ in problems(tmp_path, "[uplink]\nprotocol = 3\n")]


def test_unset_password_variable_names_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGE_TEST_NOPE", raising=False)
    keys = [k for k, _ in problems(tmp_path, "[uplink]\npassword = { env = 'EDGE_TEST_NOPE' }\n")]
    assert "uplink.password" in keys, keys


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[batch]\nmax_count = 0\n", "batch.max_count"),
        ("[batch]\nmax_cuont = 5\n", "batch.max_cuont"),
        ("[batch]\nmax_age_s = 5.0\noutage_max_age_s = 2.0\n", "batch.outage_max_age_s"),
        ("[batch]\noutage_max_count = -1\n", "batch.outage_max_count"),
        ("[gateway]\nid = 'a/b'\n", "gateway.id"),
        ("[uplink]\nurls = ['http://x']\n", "uplink.urls"),
        ("[uplink]\nurls = ['mqtt://u:pw@x']\n", "uplink.urls"),
        ("[uplink]\nurls = []\n", "uplink.urls"),
        ("[uplink]\nprotocol = '4'\n", "uplink.protocol"),
        ("[local_broker]\nlisten = 'nohostport'\n", "local_broker.listen"),
        ("[[rules]]\nvalid = { min = 5, max = 1 }\n", "rules[0].valid"),
        ("[[rules]]\ndeadband = { abs = -1 }\n", "rules[0].deadband.abs"),
        ("[[rules]]\nalert = { max = 'hot' }\n", "rules[0].alert.max"),
        ("[uplink.password]\nenv = 'A'\nfile = '/x'\n", "uplink.password"),
        ("surprise = 1\n", "surprise"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    keys = [k for k, _ in problems(tmp_path, text)]
    assert key in keys, keys


def test_syntax_error_and_missing_file(tmp_path: Path) -> None:
    assert problems(tmp_path, "[batch\n")[0][0] == "(syntax)"
    with pytest.raises(ConfigError, match=r"nope\.toml"):
        load_config(tmp_path / "nope.toml")


def test_missing_secret_env_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_VAR_X", raising=False)
    found = problems(tmp_path, "[uplink.password]\nenv = 'NO_SUCH_VAR_X'\n")
    assert found == [("uplink.password", "environment variable NO_SUCH_VAR_X is not set")]


def test_secret_from_file(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("hunter2\n")
    _cfg, secrets = load_config(write(tmp_path, f"[uplink.password]\nfile = '{secret}'\n"))
    assert secrets.uplink_password is not None and secrets.uplink_password.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(secrets)


@pytest.mark.parametrize("bad", [".", "..", "-x", "a/b"])
def test_ids_in_the_config_follow_the_id_grammar(tmp_path: Path, bad: str) -> None:
    assert [key for key, _ in problems(tmp_path, f'[gateway]\nid = "{bad}"\n')] == ["gateway.id"]
    assert [key for key, _ in problems(tmp_path, f'[downlink]\nallowed_commands = ["{bad}"]\n')] == [
        "downlink.allowed_commands"]


@pytest.mark.parametrize(
    "inbox",
    ["{data}", "{data}/files", "{data}/..", "{data}/buffer", "{data}/buffer/x", "{data}/files/incoming",
     "{data}/files/sending/sub", "{data}/files/outbox", "{data}/pki", "{data}/files/../files"],
)
def test_an_inbox_that_would_let_a_download_replace_gateway_state_is_refused(tmp_path: Path, inbox: str) -> None:
    data = tmp_path / "data"
    found = problems(tmp_path, f"[gateway]\ndata_dir = '{data}'\n[files]\ninbox_dir = '{inbox.format(data=data)}'\n")
    assert [msg for _, msg in found if "files.inbox_dir" in msg], found


@pytest.mark.parametrize("inbox", ["{data}/files/inbox", "{data}/inbox", "{tmp}/elsewhere", "{data}/files/inbox2"])
def test_an_inbox_apart_from_the_gateway_state_is_accepted(tmp_path: Path, inbox: str) -> None:
    data = tmp_path / "data"
    cfg, _ = load_config(write(tmp_path, f"[gateway]\ndata_dir = '{data}'\n[files]\n"
                                         f"inbox_dir = '{inbox.format(data=data, tmp=tmp_path)}'\n"))
    assert cfg.inbox_dir.name in ("inbox", "elsewhere", "inbox2")
    assert load_config(write(tmp_path, f"[gateway]\ndata_dir = '{data}'\n[files]\nenabled = false\n"
                                       f"inbox_dir = '{data}'\n"))  # files off: the inbox is not used
