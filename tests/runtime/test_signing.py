"""Bundle signatures (mpee_runtime.signing): sign, verify, and every way a signed bundle is refused under
--trust (one flipped byte in any file, another key, no signature, no cryptography), each one `Error:` line
and exit 2; without --trust nothing changes. Runs without torch (the bundle from MPEE_TEST_BUNDLE)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cli_checks import run_error

from mpee_runtime.bench.cli import main as bench_main
from mpee_runtime.bundle import contract as S
from mpee_runtime.bundle import signing
from mpee_runtime.cli.run import main as run_cli
from mpee_runtime.core.engine import MpeeEngine
from mpee_runtime.errors import MpeeRuntimeError

SIG = signing.SIGNATURE


@pytest.fixture
def keys(tmp_path) -> tuple[Path, Path]:
    """A fresh key pair: (private KEY, public KEY.pub). Needs cryptography (mpee-runtime[sign])."""
    pytest.importorskip("cryptography", reason="signature tests need cryptography (mpee-runtime[sign])")
    key = tmp_path / "keys" / "fleet"
    key.parent.mkdir()
    signing.generate_key(key)
    return key, signing.public_key_path(key)


@pytest.fixture
def signed(bundle, keys) -> Path:
    """The tiny bundle (a private copy), signed with `keys`."""
    signing.sign_bundle(bundle, keys[0])
    return bundle


_error = run_error


def _refused(bundle: Path, trust: Path, needle: str) -> str:
    with pytest.raises(MpeeRuntimeError) as e:
        MpeeEngine(bundle, trust=trust, warmup=0)
    message = str(e.value)
    assert "\n" not in message and needle in message, message
    return message


def test_keygen_writes_a_private_key_0600_and_a_public_key(keys, capsys):
    key, pub = keys
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert pub.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert signing.key_id(signing.load_public_key(pub)) == signing.key_id(signing.load_private_key(key).public_key())
    before = key.read_bytes()
    with pytest.raises(MpeeRuntimeError, match="exists; pass --force"):
        signing.generate_key(key)
    assert key.read_bytes() == before
    signing.generate_key(key, force=True)
    assert key.read_bytes() != before and stat.S_IMODE(key.stat().st_mode) == 0o600


def test_signature_file_covers_the_manifest_and_the_files_it_does_not_list(signed, keys):
    fields = json.loads((signed / SIG).read_text())
    assert list(fields) == ["format", "algorithm", "key_id", "files", "signature"]
    assert fields["format"] == signing.FORMAT and fields["algorithm"] == "ed25519"
    raw_pub = signing.load_public_key(keys[1]).public_bytes_raw()
    assert fields["key_id"] == hashlib.sha256(raw_pub).hexdigest()[:16]
    # graphs and the tokenizer are reached through the manifest's own sha256
    assert sorted(fields["files"]) == sorted({S.MANIFEST, "validation.json"} & {p.name for p in signed.iterdir()})
    for name, digest in fields["files"].items():
        assert digest == hashlib.sha256((signed / name).read_bytes()).hexdigest()
    assert len(base64.b64decode(fields["signature"])) == 64
    # the signature is over the canonical JSON of everything but itself, checkable with cryptography alone
    statement = json.dumps({k: fields[k] for k in ("format", "algorithm", "key_id", "files")}, sort_keys=True,
                           separators=(",", ":")).encode()
    signing.load_public_key(keys[1]).verify(base64.b64decode(fields["signature"]), statement)


def test_signed_bundle_runs_with_trust_and_answers_as_unsigned(signed, keys, capsys):
    text = "the movie is great"
    assert signing.verify_bundle(signed, keys[1]) == json.loads((signed / SIG).read_text())["key_id"]
    trusted = MpeeEngine(signed, trust=keys[1], warmup=0).predict(text)
    plain = MpeeEngine(signed, warmup=0).predict(text)
    assert (trusted.label, trusted.probs, trusted.exit_layer) == (plain.label, plain.probs, plain.exit_layer)
    assert run_cli([str(signed), text, "--trust", str(keys[1])]) == 0
    assert json.loads(capsys.readouterr().out)["probs"] == plain.probs


def test_without_trust_nothing_changes(signed, bundle, tmp_path):
    MpeeEngine(signed, warmup=0)                         # signed, no --trust
    (signed / SIG).write_text("not a signature")         # a broken signature is not read without --trust
    MpeeEngine(signed, warmup=0)
    (signed / SIG).unlink()
    MpeeEngine(signed, warmup=0)                         # unsigned, no --trust: as before


def test_one_flipped_byte_in_any_file_is_refused(signed, keys):
    """Every file of the bundle, the signature file included, one flipped byte each (first, last and a
    random position; all bits, or only the lowest so that text stays ASCII): refused before any session
    opens."""
    rng = random.Random(21)
    files = sorted(p for p in signed.iterdir() if p.is_file())
    assert {S.MANIFEST, S.TOKENIZER, S.EMBEDDINGS, SIG} <= {p.name for p in files}
    tried = 0
    for path in files:
        data = path.read_bytes()
        for pos, mask in [(p, m) for p in sorted({0, len(data) - 1, rng.randrange(len(data))}) for m in (0xFF, 1)]:
            flipped = bytearray(data)
            flipped[pos] ^= mask
            path.write_bytes(bytes(flipped))
            try:
                message = _refused(signed, keys[1], "")
            finally:
                path.write_bytes(data)
            assert path.name in message or str(signed) in message, (path.name, pos, message)
            tried += 1
    MpeeEngine(signed, trust=keys[1], warmup=0)           # restored: accepted again
    assert tried >= 2 * (3 * len(files) - 2)


def test_edited_manifest_with_recomputed_digests_is_refused(signed, keys):
    """What the manifest's own checks cannot catch (every digest re-computed, the signature file's too)."""
    manifest = json.loads((signed / S.MANIFEST).read_text())
    manifest["exit"]["default_threshold"] = 0.01
    (signed / S.MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    _refused(signed, keys[1], "manifest.json: signature does not match: the file changed after signing")
    fields = json.loads((signed / SIG).read_text())
    fields["files"][S.MANIFEST] = hashlib.sha256((signed / S.MANIFEST).read_bytes()).hexdigest()
    (signed / SIG).write_text(json.dumps(fields, indent=1) + "\n")
    _refused(signed, keys[1], "signature does not match (signed with another key, or the signature file "
                              "changed after signing)")


def test_wrong_key_is_refused(signed, tmp_path, capsys):
    other = tmp_path / "other"
    signing.generate_key(other)
    _error(capsys, [str(signed), "hello", "--trust", str(signing.public_key_path(other))],
           "signature does not match: signed with another key")
    # the key id rewritten to the trusted key's: the Ed25519 check itself refuses
    fields = json.loads((signed / SIG).read_text())
    fields["key_id"] = signing.key_id(signing.load_public_key(signing.public_key_path(other)))
    (signed / SIG).write_text(json.dumps(fields, indent=1) + "\n")
    _error(capsys, [str(signed), "hello", "--trust", str(signing.public_key_path(other))],
           "signature does not match (signed with another key, or the signature file changed after signing)")


def test_unsigned_bundle_with_trust_is_refused(bundle, keys, capsys):
    _error(capsys, [str(bundle), "hello", "--trust", str(keys[1])], "unsigned bundle (no manifest.json.sig), "
           "but --trust was given")
    _refused(bundle, keys[1], "unsigned bundle")


@pytest.mark.parametrize("case", ["missing", "private", "garbage", "rsa", "folder"])
def test_bad_trusted_key_is_refused(signed, keys, tmp_path, capsys, case):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    path = tmp_path / "trusted.pub"
    needle = {"missing": "trusted public key not found", "private": "a private key; give --trust the public key",
              "garbage": "not a PEM or OpenSSH public key", "rsa": "but bundles are signed with Ed25519",
              "folder": "not a file"}[case]
    if case == "private":
        path = keys[0]
    elif case == "garbage":
        path.write_bytes(os.urandom(300))
    elif case == "rsa":
        path.write_bytes(rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    elif case == "folder":
        path = tmp_path
    _error(capsys, [str(signed), "hello", "--trust", str(path)], needle)


def test_openssh_public_key_is_trusted(signed, keys, tmp_path):
    from cryptography.hazmat.primitives import serialization
    line = signing.load_public_key(keys[1]).public_bytes(serialization.Encoding.OpenSSH,
                                                         serialization.PublicFormat.OpenSSH)
    (tmp_path / "fleet_ssh.pub").write_bytes(line + b" fleet@exporter\n")
    assert signing.verify_bundle(signed, tmp_path / "fleet_ssh.pub") == signing.key_id(
        signing.load_public_key(keys[1]))


@pytest.mark.parametrize("edit", ["huge", "not_json", "extra_field", "traversal", "short_signature",
                                  "reformatted", "no_manifest_digest"])
def test_malformed_signature_file_is_refused(signed, keys, edit):
    path = signed / SIG
    fields = json.loads(path.read_text())
    if edit == "huge":
        path.write_bytes(b" " * (1 << 20))
    elif edit == "not_json":
        path.write_bytes(b"\xff\xfe{}")
    else:
        if edit == "extra_field":
            fields["comment"] = "x"
        elif edit == "traversal":
            fields["files"]["../../etc/passwd"] = "0" * 64
        elif edit == "short_signature":
            fields["signature"] = base64.b64encode(b"x" * 63).decode()
        elif edit == "no_manifest_digest":
            del fields["files"][S.MANIFEST]
        path.write_text(json.dumps(fields, indent=None if edit == "reformatted" else 1) + "\n")
    _refused(signed, keys[1], "not a signature file")


def test_sign_refuses_a_public_or_missing_key(bundle, keys, tmp_path):
    with pytest.raises(MpeeRuntimeError, match="not a PEM or OpenSSH private key .that is a public key"):
        signing.sign_bundle(bundle, keys[1])
    with pytest.raises(MpeeRuntimeError, match="signing key not found"):
        signing.sign_bundle(bundle, tmp_path / "nope")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519
    encrypted = tmp_path / "encrypted"
    encrypted.write_bytes(ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    with pytest.raises(MpeeRuntimeError, match="the signing key is encrypted"):
        signing.sign_bundle(bundle, encrypted)
    assert not (bundle / SIG).exists()


def _jsonl(path: Path) -> Path:
    rows = [("the movie is great", "entailment"), ("a boring film", "not_entailment")] * 2
    path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows))
    return path


def test_bench_verifies_every_bundle_it_opens(signed, bundle, keys, tmp_path, capsys):
    """mpee-bench --trust: the bundle, and the --int8 bundle too (here an unsigned copy), before measuring."""
    import shutil
    unsigned = Path(shutil.copytree(signed, tmp_path / "unsigned"))
    (unsigned / SIG).unlink()
    args = ["--input", str(_jsonl(tmp_path / "dev.jsonl")), "--out", str(tmp_path / "out"), "--threads", "1",
            "--warmup", "0", "--no-sweep", "--no-static", "--trust", str(keys[1])]
    assert bench_main([str(unsigned), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{unsigned}: unsigned bundle" in err, err
    assert bench_main([str(signed), *args, "--int8", str(unsigned)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{unsigned}: unsigned bundle" in err, err
    assert not (tmp_path / "out" / "rows.jsonl").exists()


NO_CRYPTO = """
import sys
sys.modules["cryptography"] = None          # as if it were not installed
from mpee_runtime.cli.run import main
sys.exit(main(sys.argv[1:]))
"""


def test_without_cryptography_trust_is_one_error_line(bundle, tmp_path):
    """Runs where cryptography is missing too: the key is not read before the import fails."""
    (tmp_path / "fleet.pub").write_text("-----BEGIN PUBLIC KEY-----\n")
    run = [sys.executable, "-c", NO_CRYPTO, str(bundle), "hello"]
    res = subprocess.run([*run, "--trust", str(tmp_path / "fleet.pub")], capture_output=True, text=True,
                         timeout=120, check=False)
    assert res.returncode == 2, res.stderr
    assert res.stderr == ("Error: bundle signatures need the cryptography package: "
                          "pip install 'mpee-runtime[sign]'\n")
    res = subprocess.run(run, capture_output=True, text=True, timeout=120, check=False)   # without --trust: runs as before
    assert res.returncode == 0 and json.loads(res.stdout)["label"], res.stderr
