"""Optional bundle signatures (Ed25519), for fleets that run only bundles their own exporter made.

    mpee-export keygen KEY                 KEY (private, PEM, mode 0600) and KEY.pub (public, PEM)
    mpee-export CKPT OUT --sign KEY        OUT/manifest.json.sig
    mpee-run OUT ... --trust KEY.pub       refused unless OUT is signed by KEY and unchanged since

The signature file `manifest.json.sig` is a small JSON object (docs/design.md 5, "Signatures"): format,
algorithm, key_id (the first 16 hex digits of the sha256 of the raw 32-byte public key), files (the sha256
of manifest.json and of every other file of the bundle the manifest does not list, i.e. validation.json)
and signature (base64 of the Ed25519 signature over the canonical JSON of the four fields before it). The
manifest lists every graph and the tokenizer with its sha256, so one signature reaches every byte of the
bundle. Verification runs before the manifest is read; the manifest's own checks then verify each file.

Needs the `cryptography` package (`pip install 'mpee-runtime[sign]'`), imported only here and only when a
key is used: the runtime's core keeps its three dependencies, and without --trust nothing changes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

from ..errors import MpeeRuntimeError
from ..files import check_output_file, write_text
from .contract import MANIFEST
from .integrity import sha256_of

SIGNATURE = MANIFEST + ".sig"
FORMAT = "mpee-signature/1"
ALGORITHM = "ed25519"
PUBLIC_SUFFIX = ".pub"
INSTALL_HINT = "pip install 'mpee-runtime[sign]'"
_MAX_FILE = 64 * 1024          # key and signature files are a few hundred bytes
_KEY_ID = re.compile(r"[0-9a-f]{16}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_FIELDS = ("format", "algorithm", "key_id", "files", "signature")


def _crypto():
    """cryptography's Ed25519 and key serialization, or one line saying how to install them."""
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise MpeeRuntimeError(f"bundle signatures need the cryptography package: {INSTALL_HINT}") from None
    return serialization, ed25519, InvalidSignature


def public_key_path(key: str | Path) -> Path:
    """KEY.pub beside KEY."""
    key = Path(key)
    return key.with_name(key.name + PUBLIC_SUFFIX)


def _raw_public(public_key) -> bytes:
    serialization, _, _ = _crypto()
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public_key) -> str:
    """The first 16 hex digits of the sha256 of the raw public key (what the signature file names)."""
    return hashlib.sha256(_raw_public(public_key)).hexdigest()[:16]


def _read_small(path: Path, what: str) -> bytes:
    try:
        if not path.is_file():
            raise MpeeRuntimeError(f"{path}: {what} not found" if not path.exists() else f"{path}: not a file")
        with open(path, "rb") as f:
            data = f.read(_MAX_FILE + 1)
    except (OSError, ValueError) as e:    # ValueError: a NUL byte in the path
        raise MpeeRuntimeError(f"{ascii(str(path))[1:-1]}: cannot read the {what} "
                               f"({getattr(e, 'strerror', None) or e})") from None
    if len(data) > _MAX_FILE:
        raise MpeeRuntimeError(f"{path}: over {_MAX_FILE} bytes, not a {what}")
    return data


def _first_load(data: bytes, *loaders, **kwargs):
    """The key the first loader that understands `data` returns (PEM, then OpenSSH), or None."""
    for load in loaders:
        try:
            return load(data, **kwargs)
        except TypeError:
            raise
        except Exception:  # noqa: BLE001, S112 -- ValueError or UnsupportedAlgorithm: try the next format
            continue
    return None


def load_private_key(path: str | Path):
    """The Ed25519 private key in `path` (PEM PKCS#8 as `mpee-export keygen` writes, or OpenSSH)."""
    serialization, ed25519, _ = _crypto()
    path = Path(path)
    data = _read_small(path, "signing key")
    try:
        key = _first_load(data, serialization.load_pem_private_key, serialization.load_ssh_private_key,
                          password=None)
    except TypeError:    # cryptography: "Password was not given but private key is encrypted"
        raise MpeeRuntimeError(f"{path}: the signing key is encrypted; give an unencrypted Ed25519 key "
                               "(mpee-export keygen writes one, mode 0600)") from None
    if key is None:
        hint = " (that is a public key; give the private one)" if b"PUBLIC KEY" in data or b"ssh-" in data else ""
        raise MpeeRuntimeError(f"{path}: not a PEM or OpenSSH private key{hint}")
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise MpeeRuntimeError(f"{path}: a {type(key).__name__.removeprefix('_')} key, but bundles are signed "
                               "with Ed25519 (mpee-export keygen KEY makes one)")
    return key


def load_public_key(path: str | Path):
    """The trusted Ed25519 public key in `path` (PEM as `mpee-export keygen` writes to KEY.pub, or an
    OpenSSH `ssh-ed25519 ...` line)."""
    serialization, ed25519, _ = _crypto()
    path = Path(path)
    data = _read_small(path, "trusted public key")
    if b"PRIVATE KEY" in data:
        raise MpeeRuntimeError(f"{path}: a private key; give --trust the public key ({path.name}{PUBLIC_SUFFIX}), "
                               "the private key stays with the exporter")
    key = _first_load(data, serialization.load_pem_public_key, serialization.load_ssh_public_key)
    if key is None:
        raise MpeeRuntimeError(f"{path}: not a PEM or OpenSSH public key")
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise MpeeRuntimeError(f"{path}: a {type(key).__name__.removeprefix('_')} key, but bundles are signed "
                               "with Ed25519")
    return key


def generate_key(path: str | Path, *, force: bool = False) -> str:
    """Write a new Ed25519 key pair: `path` (private, PEM PKCS#8, unencrypted, mode 0600) and `path`.pub
    (public, PEM). Refuses to replace either file without `force`. Returns the key id."""
    serialization, ed25519, _ = _crypto()
    path, public = Path(path), public_key_path(path)
    for target in (path, public):
        check_output_file(target)
        if target.exists() and not force:
            raise MpeeRuntimeError(f"{target} exists; pass --force to replace it (bundles signed with the "
                                   "old key then fail --trust with the new one)")
    key = ed25519.Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)   # mkstemp: mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(private_pem)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    write_text(public, public_pem.decode("ascii"))
    return key_id(key.public_key())


def _listed_by_manifest(folder: Path) -> set[str]:
    """Files the manifest covers with its own sha256 (graphs, tokenizer): the signature reaches them through
    the manifest's digest. Read as plain JSON; anything unexpected covers every file directly instead."""
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        graphs = data["graphs"] + data.get("batch_graphs", []) + ([data["single_graph"]] if data.get("single_graph")
                                                                  else [])
        return {g["file"] for g in graphs} | {data["tokenizer"]["file"]}
    except Exception:  # noqa: BLE001 -- only an optimisation: the statement then lists every file
        return set()


def _statement(fields: dict) -> bytes:
    """The signed bytes: canonical JSON of everything in the signature file but the signature."""
    return json.dumps({k: fields[k] for k in _FIELDS[:-1]}, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True).encode("ascii")


def _render(fields: dict) -> str:
    """The signature file's text; a file that differs from it by one byte is refused."""
    return json.dumps({k: fields[k] for k in _FIELDS}, indent=1, ensure_ascii=True) + "\n"


def sign_bundle(folder: str | Path, key: str | Path) -> str:
    """Write `folder`/manifest.json.sig, signed with the private key in `key`; returns the key id.
    Call it after the manifest and every other file are final (the export does, inside its temporary
    folder, right after writing the manifest)."""
    folder = Path(folder)
    private = load_private_key(key)
    if not (folder / MANIFEST).is_file():
        raise MpeeRuntimeError(f"{folder}: no {MANIFEST} to sign")
    skip = _listed_by_manifest(folder) - {MANIFEST}
    names = sorted(p.name for p in folder.iterdir()
                   if p.is_file() and p.name != SIGNATURE and p.name not in skip and not p.name.startswith("."))
    fields = {"format": FORMAT, "algorithm": ALGORITHM, "key_id": key_id(private.public_key()),
              "files": {name: sha256_of(folder / name) for name in names}}
    fields["signature"] = base64.b64encode(private.sign(_statement(fields))).decode("ascii")
    write_text(folder / SIGNATURE, _render(fields))
    return fields["key_id"]


def _read_signature(path: Path) -> dict:
    """The signature file's fields, refused unless it is exactly what sign_bundle writes."""
    bad = f"{path}: not a signature file written by mpee-export --sign"
    data = _read_small(path, "signature file")
    try:
        fields = json.loads(data.decode("ascii"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise MpeeRuntimeError(f"{bad} (not ASCII JSON)") from None
    if not isinstance(fields, dict) or sorted(fields) != sorted(_FIELDS):
        raise MpeeRuntimeError(f"{bad} (expected the fields {', '.join(_FIELDS)})")
    if fields["format"] != FORMAT or fields["algorithm"] != ALGORITHM:
        raise MpeeRuntimeError(f"{bad} (format {fields['format']!r:.40}, algorithm {fields['algorithm']!r:.40}; "
                               f"this runtime reads {FORMAT} {ALGORITHM})")
    files = fields["files"]
    if not (isinstance(fields["key_id"], str) and _KEY_ID.fullmatch(fields["key_id"])
            and isinstance(files, dict) and MANIFEST in files
            and all(re.fullmatch(r"[A-Za-z0-9_.-]{1,128}", n) and n not in (".", "..")
                    and isinstance(d, str) and _SHA256.fullmatch(d) for n, d in files.items())
            and isinstance(fields["signature"], str)):
        raise MpeeRuntimeError(f"{bad} (a key id, file digests including {MANIFEST}, or the signature is malformed)")
    try:
        raw = base64.b64decode(fields["signature"], validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 64 or base64.b64encode(raw).decode("ascii") != fields["signature"]:
        raise MpeeRuntimeError(f"{bad} (the signature is not 64 bytes of canonical base64)")
    if data != _render(fields).encode("ascii"):
        raise MpeeRuntimeError(f"{bad} (its bytes differ from what the signer writes: edited by hand?)")
    fields["signature"] = raw
    return fields


def verify_bundle(folder: str | Path, trust: str | Path) -> str:
    """Refuse, in one line, a bundle that is not signed by the key in `trust` or changed since it was
    signed; returns the key id. Runs before the manifest is read; Manifest.load then checks every graph and
    the tokenizer against the (now trusted) manifest's sha256."""
    _, _, invalid_signature = _crypto()
    folder = Path(folder)
    public = load_public_key(trust)
    trusted_id = key_id(public)
    path = folder / SIGNATURE
    if not path.exists():
        if not (folder / MANIFEST).is_file():
            raise MpeeRuntimeError(f"{folder}: no {MANIFEST} (not an MPEE bundle, or an unfinished export)")
        raise MpeeRuntimeError(f"{folder}: unsigned bundle (no {SIGNATURE}), but --trust was given "
                               f"(sign it with mpee-export --sign KEY)")
    fields = _read_signature(path)
    if fields["key_id"] != trusted_id:
        raise MpeeRuntimeError(f"{path}: signature does not match: signed with another key (key id "
                               f"{fields['key_id']}; the --trust key {Path(trust).name} is {trusted_id})")
    try:
        public.verify(fields["signature"], _statement(fields))
    except invalid_signature:
        raise MpeeRuntimeError(f"{path}: signature does not match (signed with another key, or the signature "
                               "file changed after signing)") from None
    for name, digest in sorted(fields["files"].items(), key=lambda item: item[0] != MANIFEST):
        file = folder / name
        if not file.is_file():
            raise MpeeRuntimeError(f"{file}: missing, but the signature covers it (the bundle changed after "
                                   "signing)")
        try:
            actual = sha256_of(file)
        except OSError as e:
            raise MpeeRuntimeError(f"{file}: cannot read it ({e.strerror})") from None
        if actual != digest:
            raise MpeeRuntimeError(f"{file}: signature does not match: the file changed after signing "
                                   "(its sha256 is not the signed one)")
    return trusted_id
