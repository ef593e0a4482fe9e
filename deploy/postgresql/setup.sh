#!/usr/bin/env bash
# Create the Tiled server's PostgreSQL role and databases (deploy/postgresql/setup.sql).
#
#   deploy/postgresql/setup.sh /etc/ptystream/pgpass
#
# The argument is the password file Tiled will use (libpq .pgpass format, mode 0600:
# "host:port:database:user:password", one line, user "tiled"; see deploy/tiled/pgpass.example).
# The password is read from it here and turned into a SCRAM-SHA-256 verifier on this side, so
# neither the command line, the environment of psql, the server's log nor its statistics ever
# see the password itself.
#
# Environment: PSQL, the psql command run as the database superuser (default: as root,
# "runuser -u postgres -- psql"; otherwise "psql"); the usual PGHOST / PGPORT choose the server.
set -euo pipefail

passfile=${1:?usage: setup.sh PGPASSFILE}
here=$(cd "$(dirname "$0")" && pwd)

# The password of the first "tiled" line of the password file (its last field). It must not
# contain ':' or '\': libpq lets them be escaped with a backslash, but asyncpg (Tiled's catalog
# driver) does not undo the escape and would send a different password. Use
# `openssl rand -hex 32`.
verifier=$(python3 - "$passfile" <<'PY'
import base64, hashlib, hmac, os, sys

line = next(l for l in open(sys.argv[1]) if l.count(":") >= 4 and not l.startswith("#")
            and l.split(":")[3] == "tiled")
password = line.rstrip("\n").split(":", 4)[4]
if ":" in password or "\\" in password or not password:
    sys.exit("setup.sh: the tiled password is empty or has ':' or '\\' (use openssl rand -hex 32)")
# RFC 5802 / 7677, as PostgreSQL stores it: SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>
salt, iterations = os.urandom(16), 4096
salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
client_key = hmac.new(salted, b"Client Key", "sha256").digest()
stored_key = hashlib.sha256(client_key).digest()
server_key = hmac.new(salted, b"Server Key", "sha256").digest()
b64 = lambda b: base64.b64encode(b).decode()
print(f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}")
PY
)

if [ -z "${PSQL:-}" ]; then
  if [ "$(id -u)" = 0 ]; then PSQL="runuser -u postgres -- psql"; else PSQL=psql; fi
fi
# The SQL file is fed on stdin, so the postgres user need not be able to read this tree.
# The verifier goes in on stdin too (not in psql's arguments, which other users can list).
{ printf "\\set tiled_verifier '%s'\n" "$verifier"; cat "$here/setup.sql"; } |
  $PSQL -X -q -v ON_ERROR_STOP=1 -d postgres
