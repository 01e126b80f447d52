"""Conventions every command keeps: paths, environment variables, names, TLS names, modes.

Each test here is one rule from README's "Command line" section, checked over the real
commands rather than over one example of each.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
from pathlib import Path
from typing import Any

import click
import pytest
import typer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from veracity.cli import app, main
from veracity.crypto.tls import certificate_hosts
from veracity.output import emit_table
from veracity.server.coordinator.home import CoordinatorHome
from veracity.server.superlink import SuperLinkOptions, superlink_argv

#: Options that deliberately have no environment variable.
_NO_ENVVAR = {"--help", "--version"}


def _options() -> list[tuple[str, click.Option]]:
    found: list[tuple[str, click.Option]] = []

    def walk(command: click.Command, path: str) -> None:
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                walk(sub, f"{path} {name}".strip())
            return
        found.extend((path, p) for p in command.params if isinstance(p, click.Option))

    walk(typer.main.get_command(app), "")
    return found


def test_every_environment_variable_is_named_after_its_option() -> None:
    wrong = []
    for path, option in _options():
        longs = [o for o in option.opts if o.startswith("--")]
        if not longs or longs[0] in _NO_ENVVAR:
            continue
        wanted = {"VERACITY_" + o[2:].replace("-", "_").upper() for o in longs}
        if option.envvar not in wanted:
            wrong.append(f"veracity {path} {longs[0]}: {option.envvar} (want one of {wanted})")
    assert wrong == []


#: Commands without ``--format``, and why. A daemon prints logs, not a result.
FORMAT_EXEMPT = {
    "site start": "a long-running agent: its output is logs on stderr, no document",
}


def _commands() -> dict[str, click.Command]:
    found: dict[str, click.Command] = {}

    def walk(command: click.Command, path: str) -> None:
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                walk(sub, f"{path} {name}".strip())
            return
        found[path] = command

    walk(typer.main.get_command(app), "")
    return found


def test_every_command_takes_format_json_unless_exempt() -> None:
    commands = _commands()
    assert set(FORMAT_EXEMPT) <= set(commands)  # no stale exemption
    lacking = []
    for path, command in sorted(commands.items()):
        formats = [
            p for p in command.params if isinstance(p, click.Option) and "--format" in p.opts
        ]
        if path in FORMAT_EXEMPT:
            assert formats == [], f"veracity {path} has --format now: drop its exemption"
            continue
        if not formats or "json" not in getattr(formats[0].type, "choices", ()):
            lacking.append(f"veracity {path}")
    assert lacking == []


def test_coordinator_and_site_never_share_a_default_directory() -> None:
    defaults: dict[str, set[str]] = {"server": set(), "site": set()}
    for path, option in _options():
        group = path.split(" ")[0]
        if group in defaults and option.name == "data_dir" and option.default is not None:
            defaults[group].add(str(option.default))
    from veracity.client.cli import DEFAULT_SITE_DIR
    from veracity.config import load_settings

    defaults["site"].add(str(DEFAULT_SITE_DIR))
    assert defaults["server"] == {str(load_settings().data_dir)} == {"veracity-coordinator"}
    assert defaults["site"] == {"veracity-site"}


def test_a_relative_data_dir_reaches_every_process_as_an_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SuperLink runs in the data directory: a relative --ssl-ca-certfile missed the file."""
    monkeypatch.chdir(tmp_path)
    home = CoordinatorHome.at(Path("coord"))
    argv = superlink_argv(home, SuperLinkOptions(host="127.0.0.1", port=9093))
    named = ("--node-registry", "--import-from")
    files = [argv[i + 1] for i, a in enumerate(argv) if a.startswith("--ssl") or a in named]
    assert len(files) == 5
    assert all(Path(f).is_absolute() and f.startswith(str(tmp_path)) for f in files)
    home.save()
    assert CoordinatorHome.load(Path("coord")).data_dir == tmp_path / "coord"


def test_a_site_witness_started_from_a_relative_site_dir_gets_an_absolute_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The witness runs in the site directory: a relative --data-dir named site-a/site-a."""
    from veracity.client.witness import start_site_witness

    monkeypatch.chdir(tmp_path)
    assert main(["site", "init", "--name", "north", "--data-dir", "site-a"]) == 0
    capsys.readouterr()
    started: list[Any] = []

    class _Group:
        def start(self, process: Any) -> Any:
            started.append(process)
            return process

    start_site_witness(
        Path("site-a"),
        _Group(),  # type: ignore[arg-type]
        api_url="https://127.0.0.1:1",
        token="not-a-token",  # noqa: S106 - never sent anywhere
    )
    (process,) = started
    given = Path(process.argv[process.argv.index("--data-dir") + 1])
    assert given == tmp_path / "site-a"
    assert (Path(process.cwd) / given / "site.json").is_file()


def test_site_and_coordinator_accept_the_same_site_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A site name the coordinator can never enrol is refused when the site is made."""
    code = main(["site", "init", "--name", "Hospital_Y", "--data-dir", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert code == 2
    assert "site name 'Hospital_Y' must be lowercase letters, digits and '-'" in err
    assert not (tmp_path / "s" / "site.json").exists()


def test_tables_never_cut_a_value_when_stdout_is_not_a_terminal(
    capsys: pytest.CaptureFixture[str],
) -> None:
    long_path = "/" + "/".join(["a-rather-long-directory-name"] * 12) + "/ledger.jsonl"
    model = "ab" * 32
    emit_table("t", ["item", "value"], [["bundle", long_path], ["model", model]])
    out = capsys.readouterr().out
    assert long_path in out
    assert model in out
    assert "…" not in out


def _init(data_dir: Path, *extra: str) -> tuple[int, dict[str, str], str]:
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["server", "init", "--data-dir", str(data_dir), "--format", "json", *extra])
    return code, (json.loads(out.getvalue()) if code == 0 else {}), err.getvalue()


def test_server_init_certifies_the_hostnames_it_is_given_with_the_same_ca(tmp_path: Path) -> None:
    code, shown, _ = _init(tmp_path / "c")
    assert code == 0
    ca_before = (tmp_path / "c" / "tls" / "ca.crt").read_bytes()
    assert set(certificate_hosts(Path(shown["ca_cert"]).with_name("server.crt"))) == {
        "localhost",
        "127.0.0.1",
        "::1",
    }
    code, shown, _ = _init(
        tmp_path / "c", "--hostname", "coordinator.example.org", "--hostname", "10.20.0.1"
    )
    assert code == 0
    hosts = set(certificate_hosts(tmp_path / "c" / "tls" / "server.crt"))
    assert {"coordinator.example.org", "10.20.0.1", "localhost", "127.0.0.1"} <= hosts
    assert (tmp_path / "c" / "tls" / "ca.crt").read_bytes() == ca_before
    code, _, err = _init(tmp_path / "c", "--hostname", "not a name!")
    assert code == 2
    assert "neither a DNS name nor an IP address" in err


def _own_certificate(tmp_path: Path) -> tuple[Path, Path, Path]:
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Hospital network CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "coord.example")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("coord.example")]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = (tmp_path / "own.crt", tmp_path / "own.key", tmp_path / "own-ca.crt")
    paths[0].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    paths[2].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return paths


def test_server_init_installs_the_operators_own_certificate(tmp_path: Path) -> None:
    cert, key, ca = _own_certificate(tmp_path)
    code, _, err = _init(tmp_path / "c", "--tls-cert", str(cert), "--tls-key", str(key))
    assert code == 2, "a certificate without the CA that issued it is a usage error"
    assert "go together" in err
    code, _, err = _init(
        tmp_path / "c2", "--tls-cert", str(cert), "--tls-key", str(key), "--tls-ca", str(ca)
    )
    assert code == 0, err
    tls = tmp_path / "c2" / "tls"
    assert (tls / "server.crt").read_bytes() == cert.read_bytes()
    assert (tls / "ca.crt").read_bytes() == ca.read_bytes()
    assert not (tls / "ca.key").exists()
    assert stat.S_IMODE(os.stat(tls / "server.key").st_mode) == 0o600


def test_a_certificate_with_a_key_not_its_own_is_refused(tmp_path: Path) -> None:
    cert, _, ca = _own_certificate(tmp_path)
    (tmp_path / "y").mkdir()
    _, wrong_key, _ = _own_certificate(tmp_path / "y")
    code, _, err = _init(
        tmp_path / "c", "--tls-cert", str(cert), "--tls-key", str(wrong_key), "--tls-ca", str(ca)
    )
    assert code == 2
    assert "is not the key of the certificate" in err


def test_the_database_and_key_files_are_private(tmp_path: Path) -> None:
    code, _, _ = _init(tmp_path / "c")
    assert code == 0
    root = tmp_path / "c"
    private = [root / "veracity.db", root / "keys" / "log.pem", root / "tls" / "server.key"]
    private += [root / "tls" / "ca.key", root / "identity" / "root.pem"]
    for path in private:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
    for directory in (root, root / "keys", root / "identity"):
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700, directory


@pytest.mark.parametrize(
    ("env_file", "command"),
    [("coordinator.env", ("server", "start")), ("site.env", ("site", "start"))],
)
def test_the_deploy_environment_files_set_only_options_of_their_command(
    env_file: str, command: tuple[str, str]
) -> None:
    root = Path(__file__).resolve().parent.parent / "deploy"
    names = {
        line.split("=", 1)[0]
        for line in (root / env_file).read_text(encoding="utf-8").splitlines()
        if line.startswith("VERACITY_")
    }
    group = typer.main.get_command(app)
    assert isinstance(group, click.Group)
    sub = group.commands[command[0]]
    assert isinstance(sub, click.Group)
    options = {p.envvar for p in sub.commands[command[1]].params if isinstance(p, click.Option)}
    assert names <= options, names - options
    unit = env_file.replace(".env", "").replace("coordinator", "veracity-coordinator")
    unit = unit.replace("site", "veracity-site") if unit == "site" else unit
    assert f"/etc/veracity/{env_file}" in (root / f"{unit}.service").read_text(encoding="utf-8")


def test_site_start_speaks_to_the_coordinators_api_with_one_pair_of_options() -> None:
    start = typer.main.get_command(app).commands["site"].commands["start"]  # type: ignore[attr-defined]
    shown = {
        o
        for p in start.params
        if isinstance(p, click.Option) and not p.hidden
        for o in (*p.opts, *p.secondary_opts)
    }
    hidden = {o for p in start.params if isinstance(p, click.Option) and p.hidden for o in p.opts}
    assert {"--server", "--token", "--witness", "--no-witness"} <= shown
    assert {"--api", "--api-token"} == hidden  # the older spellings, still accepted


@pytest.mark.parametrize(
    ("given", "witnesses"),
    [
        ({}, False),  # no API: nothing to witness
        ({"server": "https://a:8443", "token": "t"}, True),  # every site agent witnesses
        ({"server": "https://a:8443", "token": "t", "witness": True}, True),
        ({"server": "https://a:8443", "token": "t", "witness": False}, False),  # --no-witness
        ({"api": "https://a:8443", "api_token": "t"}, True),  # the older spellings
        ({"api": "https://a:8443", "api_token": "t", "witness": False}, False),
    ],
)
def test_site_start_witnesses_whenever_it_has_the_coordinators_api(
    given: dict[str, Any], witnesses: bool
) -> None:
    from veracity.client.node_cli import site_api_options

    options: dict[str, Any] = {"server": None, "token": None, "witness": None, **given}
    server, token, witnessing = site_api_options(**options)
    assert witnessing is witnesses
    assert (server is None) == (token is None) == ("server" not in given and "api" not in given)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--api", "https://a:8443", "--server", "https://b:8443"], "older spelling of --server"),
        (["--token", "t1", "--api-token", "t2"], "older spelling of --token"),
        (["--witness"], "--witness needs"),
        (["--server", "https://a:8443"], "--server and --token go together"),
        (["--api", "https://a:8443"], "--server and --token go together"),
    ],
)
def test_site_start_refuses_contradicting_api_options_before_starting_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], says: str
) -> None:
    code = main(
        ["site", "start", "--superlink", "127.0.0.1:1", "--ca-cert", str(tmp_path / "ca.crt"),
         "--data-dir", str(tmp_path / "site"), *args]
    )  # fmt: skip
    assert code == 2
    assert says in capsys.readouterr().err
