"""Create the facility's Tiled layout and the services' API keys (run once, after Tiled starts
and compile_access_tags.py has run).

    python setup_facility.py --tiled http://127.0.0.1:8000/api/v1 --keys-dir /etc/ptystream

1. As ``admin``: creates ``raw`` (a CatalogOfBlueskyRuns, tagged ``raw``), ``processed`` and
   ``processed/ptystream`` (tagged ``processed``) if they are missing, with a temporary admin
   key that is revoked at the end.
2. As each service, creates one API key with only the scopes that service needs and writes it
   to ``<keys-dir>/<name>.key`` (mode 0600, first line): ``raw-writer.key`` (bluesky's
   TiledWriter), ``reconstruction.key`` (ptystream serve) and ``viewer.key`` (read only). A key
   file that exists is kept (pass ``--new-keys`` to replace it; revoke the old key with
   ``tiled api_key revoke`` as that user).

Passwords come from the environment (PTYSTREAM_ADMIN_PASSWORD, PTYSTREAM_RAW_WRITER_PASSWORD,
PTYSTREAM_RECONSTRUCTION_PASSWORD, PTYSTREAM_VIEWER_PASSWORD: load /etc/ptystream/tiled.env
first, e.g. ``set -a; . /etc/ptystream/tiled.env; set +a``). Nothing secret is printed: each key
is named by its first eight characters, which tiled shows in its own listings.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import httpx

#: What each service's API key may do. A key never has more than its principal's role allows,
#: and on each node the access tags decide which of these apply (access_tags.yml).
KEY_SCOPES = {
    # bluesky's TiledWriter: creates raw/<uid>, writes its arrays, tables and metadata.
    # Not "register" (registering detector files that stay on disk): in tiled 0.2.20 only the
    # admin role has it, and a key cannot have more than its principal's role.
    "raw-writer": ["read:metadata", "read:data", "write:metadata", "write:data", "create:node"],
    # ptystream serve / flush / reprocess: creates processed/ptystream/<uid>, overwrites live
    # arrays, replaces metadata without keeping revisions, deletes and rewrites final/loss.
    "reconstruction": [
        "read:metadata",
        "read:data",
        "write:metadata",
        "write:data",
        "create:node",
        "delete:node",
        "delete:revision",
    ],
    # Dashboards, ptystream watch, scientists: reads only.
    "viewer": ["read:metadata", "read:data"],
}

#: The containers the admin creates, with their tags (and the raw catalog's spec, so runs can
#: be looked up by scan id).
LAYOUT = [
    (("raw",), ["raw"], [("CatalogOfBlueskyRuns", "3.0")]),
    (("processed",), ["processed"], []),
    (("processed", "ptystream"), ["processed"], []),
]

PASSWORD_ENV = {
    "admin": "PTYSTREAM_ADMIN_PASSWORD",
    "raw-writer": "PTYSTREAM_RAW_WRITER_PASSWORD",
    "reconstruction": "PTYSTREAM_RECONSTRUCTION_PASSWORD",
    "viewer": "PTYSTREAM_VIEWER_PASSWORD",
}


class SetupError(RuntimeError):
    pass


def login(http: httpx.Client, user: str) -> dict:
    """Authorization headers of a fresh session of ``user`` (provider ``local``)."""
    password = os.environ.get(PASSWORD_ENV[user])
    if not password:
        raise SetupError(f"{PASSWORD_ENV[user]} is not set (load /etc/ptystream/tiled.env)")
    response = http.post("auth/provider/local/token", data={"username": user, "password": password})
    if response.status_code != 200:
        raise SetupError(f"Tiled refused the login of {user} (HTTP {response.status_code})")
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def create_key(http: httpx.Client, headers: dict, scopes, note: str, expires_in=None) -> str:
    response = http.post(
        "auth/apikey",
        json={"scopes": scopes, "note": note, "expires_in": expires_in},
        headers=headers,
    )
    if response.status_code != 200:
        raise SetupError(
            f"creating the key '{note}' failed: HTTP {response.status_code}: "
            f"{response.json().get('detail')}"
        )
    return response.json()["secret"]


def write_key(path: Path, key: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")


def create_layout(uri: str, admin_key: str) -> None:
    from tiled.client import from_uri
    from tiled.structures.core import Spec

    root = from_uri(uri, api_key=admin_key)
    for path, tags, specs in LAYOUT:
        parent = root
        for key in path[:-1]:
            parent = parent[key]
        if path[-1] in parent:
            print(f"{'/'.join(path)}: exists")
        else:
            parent.create_container(path[-1], specs=[Spec(*s) for s in specs], access_tags=tags)
            print(f"{'/'.join(path)}: created, tags {tags}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiled", required=True, help="http://HOST:PORT/api/v1")
    parser.add_argument("--keys-dir", type=Path, required=True)
    parser.add_argument("--new-keys", action="store_true", help="replace existing key files")
    parser.add_argument(
        "--expires-in",
        type=int,
        default=None,
        help="key lifetime in seconds (default: no expiry; rotate by hand)",
    )
    args = parser.parse_args(argv)
    base = args.tiled.rstrip("/") + "/"
    try:
        with httpx.Client(base_url=base, timeout=30) as http:
            admin = login(http, "admin")
            admin_key = create_key(
                http,
                admin,
                ["admin:apikeys", "read:metadata", "read:data", "write:metadata", "create:node"],
                "setup_facility (temporary)",
                expires_in=600,
            )
            try:
                create_layout(base, admin_key)
            finally:
                http.delete("auth/apikey", params={"first_eight": admin_key[:8]}, headers=admin)
            for user, scopes in KEY_SCOPES.items():
                path = args.keys_dir / f"{user}.key"
                if path.exists() and not args.new_keys:
                    print(f"{path}: kept")
                    continue
                key = create_key(
                    http, login(http, user), scopes, f"{user} service key", args.expires_in
                )
                write_key(path, key)
                print(f"{path}: key {key[:8]}..., scopes {' '.join(scopes)}")
    except (SetupError, httpx.HTTPError) as exc:
        print(f"setup_facility: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
