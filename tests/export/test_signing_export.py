"""`mpee-export keygen KEY` and `mpee-export CKPT OUT --sign KEY`, checked by `mpee-run --trust KEY.pub`."""

from __future__ import annotations

import stat

import pytest
from cli_checks import click_error
from click.testing import CliRunner

from mpee_export.cli import export as cli_export
from mpee_export.cli.export import export
from mpee_runtime.bundle import signing
from mpee_runtime.cli.run import main as run_cli

pytest.importorskip("cryptography", reason="signing needs cryptography (mpee-runtime[sign])")


def _bad(args, needle):
    click_error(export, args, needle)


def test_keygen(tmp_path):
    key = tmp_path / "fleet"
    res = CliRunner().invoke(export, ["keygen", str(key)])
    assert res.exit_code == 0, res.output
    kid = signing.key_id(signing.load_public_key(tmp_path / "fleet.pub"))
    assert f"key id {kid}" in res.output
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    _bad(["keygen", str(key)], "exists; pass --force")
    assert CliRunner().invoke(export, ["keygen", str(key), "--force"]).exit_code == 0
    assert signing.key_id(signing.load_public_key(tmp_path / "fleet.pub")) != kid
    _bad(["keygen", str(tmp_path / "no" / "such" / "key")], "does not exist")


def test_export_sign_then_run_trust(ckpt, tmp_path, capsys):
    key = tmp_path / "fleet"
    signing.generate_key(key)
    out = tmp_path / "out"
    res = CliRunner().invoke(export, [str(ckpt), str(out), "--sign", str(key)])
    assert res.exit_code == 0, res.output
    kid = signing.key_id(signing.load_public_key(signing.public_key_path(key)))
    assert f"signed with key {kid}" in res.output
    assert (out / signing.SIGNATURE).is_file()
    assert run_cli([str(out), "the movie is great", "--trust", str(signing.public_key_path(key))]) == 0
    capsys.readouterr()
    other = tmp_path / "other"
    signing.generate_key(other)
    assert run_cli([str(out), "the movie is great", "--trust", str(signing.public_key_path(other))]) == 2
    assert "signature does not match: signed with another key" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["missing", "public", "garbage"])
def test_bad_signing_key_is_refused_before_any_work(ckpt, tmp_path, monkeypatch, case):
    def no_work(*a, **kw):
        raise AssertionError("the checkpoint was loaded before the key was checked")
    monkeypatch.setattr(cli_export, "_load_for_export", no_work)
    key = tmp_path / "fleet"
    if case == "public":
        signing.generate_key(key)
        key = signing.public_key_path(key)
    elif case == "garbage":
        key.write_text("not a key\n")
    needle = {"missing": "signing key not found", "public": "that is a public key; give the private one",
              "garbage": "not a PEM or OpenSSH private key"}[case]
    _bad([str(ckpt), str(tmp_path / "out"), "--sign", str(key)], needle)
    assert not (tmp_path / "out").exists()
