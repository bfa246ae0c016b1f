"""CurveZMQ keys: where they live, how they are made and read, and a small command-line tool.

Key files are the ZeroMQ certificate format written by ``zmq.auth.create_certificates``: ``NAME.key``
(public, safe to share) and ``NAME.key_secret`` (public and secret, readable by its owner only).

    python -m chat.keys create [NAME]     make NAME's key pair (default: "client")
    python -m chat.keys list              every key pair in the folder, with its public key
    python -m chat.keys show [NAME]       print NAME's public key
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

import zmq
import zmq.auth
import zmq.utils.z85

from chat.errors import ChatError
from chat.paths import key_dir as default_key_dir

BROKER_KEY = "broker"
CLIENT_KEY = "client"
Z85_KEY_CHARS = 40


class KeyFileError(ChatError):
    """A key could not be read or made; the message says which and why."""


def _secret_file(key_dir: Path, name: str) -> Path:
    return key_dir / f"{name}.key_secret"


def ensure_keypair(key_dir: Path, name: str) -> tuple[bytes, bytes, bool]:
    """(public, secret, created): NAME's key pair from ``key_dir``, made there on first use."""
    secret_file = _secret_file(key_dir, name)
    created = False
    if not secret_file.exists():
        key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        zmq.auth.create_certificates(key_dir, name)
        os.chmod(secret_file, 0o600)
        created = True
    public, secret = load_keypair(secret_file)
    return public, secret, created


def load_keypair(path: Path) -> tuple[bytes, bytes]:
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"cannot read the key pair in {path}: {exc}") from None
    if secret is None:
        raise KeyFileError(f"{path} holds no secret key")
    return public, secret


def parse_public_key(key_or_file: str) -> bytes:
    """A public key given as 40 Z85 characters, or as a path to a ``.key`` file."""
    text = key_or_file.strip()
    if len(text) == Z85_KEY_CHARS and not os.path.exists(text):
        try:
            if len(zmq.utils.z85.decode(text)) == 32:
                return text.encode()
        except (ValueError, KeyError):
            pass
        raise KeyFileError(f"{text!r} is not a valid public key (40 Z85 characters)")
    try:
        public, _ = zmq.auth.load_certificate(text)
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"cannot read a public key from {text!r}: {exc}") from None
    return public


def fingerprint(public: bytes) -> str:
    """A short, comparable form of a public key (SHA-256, first 16 bytes in hex pairs)."""
    digest = hashlib.sha256(public).hexdigest()[:32]
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chat.keys", description="Create, list and show chat keys.")
    parser.add_argument("--dir", type=Path, default=default_key_dir(), help="key folder (default %(default)s)")
    sub = parser.add_subparsers(dest="command", required=True)
    create = sub.add_parser("create", help="make a key pair (kept if it exists)")
    create.add_argument("name", nargs="?", default=CLIENT_KEY)
    sub.add_parser("list", help="every key pair in the folder")
    show = sub.add_parser("show", help="print a public key")
    show.add_argument("name", nargs="?", default=CLIENT_KEY)
    args = parser.parse_args(argv)
    key_dir: Path = args.dir
    try:
        if args.command == "create":
            public, _, created = ensure_keypair(key_dir, args.name)
            verb = "created" if created else "already exists"
            print(f"{args.name}: {verb} in {key_dir}\npublic key: {public.decode()}")
            print(f"to admit it, copy {key_dir / (args.name + '.key')} into the broker's --allow folder")
        elif args.command == "list":
            found = sorted(key_dir.glob("*.key_secret")) if key_dir.is_dir() else []
            if not found:
                print(f"no key pairs in {key_dir}")
            for path in found:
                public, _ = load_keypair(path)
                print(f"{path.name[: -len('.key_secret')]:<16} {public.decode()}  {fingerprint(public)}")
        else:
            path = _secret_file(key_dir, args.name)
            if not path.exists():
                print(f"no key pair {args.name!r} in {key_dir}; make one with: python -m chat.keys create {args.name}")
                return 1
            print(load_keypair(path)[0].decode())
    except KeyFileError as exc:
        print(f"keys: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
