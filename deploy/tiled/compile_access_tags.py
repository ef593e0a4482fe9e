"""Compile deploy/tiled/access_tags.yml into the Tiled catalog database.

    cd /etc/ptystream/tiled && python compile_access_tags.py config.yml access_tags.yml

tiled 0.2.20's TagBasedAccessPolicy reads tag definitions from tables of the catalog database;
tiled ships the compiler (``tiled.access_control.access_tags.AccessTagsCompiler``) but no
command for it, hence this script. It reads the catalog URI from the server's configuration
(with the same environment: PTYSTREAM_* variables and PGPASSFILE, so no password is passed
here either), writes the compiled tags, and prints one line per tag. Run it as the tiled user
after each change of the tags file; the server need not be restarted. Exit status 1 with the
compiler's message if the file is invalid (nothing is written then).
"""

from __future__ import annotations

import asyncio
import sys

from tiled.access_control.access_tags import AccessTagsCompiler
from tiled.access_control.scopes import ALL_SCOPES
from tiled.config import parse_configs
from tiled.server.settings import DatabaseSettings


def _no_groups(name: str):
    # Tags name users only; a group would need a group parser (e.g. from LDAP).
    raise KeyError(name)


def catalog_uri(config_path: str) -> str:
    """The URI of the catalog serving the root path of the server configuration."""
    config = parse_configs(config_path)
    for tree in config.trees:
        if tree.path in ("/", "") and "uri" in (tree.args or {}):
            return tree.args["uri"]
    raise SystemExit(f"{config_path}: no catalog tree at '/'")


async def compile_tags(config_path: str, tags_path: str) -> dict:
    compiler = AccessTagsCompiler(
        ALL_SCOPES, tags_path, DatabaseSettings(uri=catalog_uri(config_path)), _no_groups
    )
    compiler.load_tag_config()
    await compiler.compile()
    return compiler.compiled_tags


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        compiled = asyncio.run(compile_tags(*argv))
    except (ValueError, RuntimeError, KeyError) as exc:
        print(f"compile_access_tags: {exc}", file=sys.stderr)
        return 1
    for tag, users in sorted(compiled.items()):
        grants = "; ".join(f"{u}: {' '.join(sorted(s))}" for u, s in sorted(users.items()))
        print(f"{tag}: {grants or '(public)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
