"""The default embedded Tiled server (a real one, in its child process as `demo` and `serve` run
it) takes appends to appendable tables from several clients at once, under load: every row is
there exactly once, and the server is still up. (tiled's own SimpleTiledServer, with its one
shared DuckDB connection, answered such appends with 500s and then aborted.)"""

import threading

import numpy as np
import pyarrow as pa
from tiled.client import from_uri

from ptystream.store.server import TABLES_DB, start_embedded_server, start_server_process

N_APPENDS = 200


def test_two_writers_append_at_once_under_load(tmp_path):
    server = start_server_process(tmp_path / "tiled")
    errors: list[str] = []
    stop = threading.Event()

    def appender(name, schema, row):
        """One client appending one row at a time, as TiledWriter (batch_size=1) does to a
        stream's table, or the live pipeline to its loss table."""
        try:
            table = (
                from_uri(server.uri)
                .create_container(name)
                .create_appendable_table(schema, key="table")
            )
            for i in range(N_APPENDS):
                table.append_partition(0, pa.table(row(i), schema=schema))
        except Exception as exc:
            errors.append(f"{name}: {exc!r}")

    def load():
        """A third client writing live arrays and reading a table meanwhile (a dashboard)."""
        client = from_uri(server.uri)
        image = client.write_array(np.zeros((128, 128), np.float32), key="live")
        rng = np.random.default_rng(0)
        while not stop.is_set():
            try:
                image.write(rng.random((128, 128), dtype=np.float32))
                if "loss" in client:
                    client["loss"]["table"].read()
            except KeyError:  # the table is not created yet
                pass
            except Exception as exc:
                errors.append(f"load: {exc!r}")

    raw = pa.schema([("seq_num", pa.int64()), ("time", pa.float64()), ("x", pa.float64())])
    loss = pa.schema([("iteration", pa.int64()), ("loss", pa.float64())])
    writers = [
        threading.Thread(
            target=appender,
            args=("raw", raw, lambda i: {"seq_num": [i], "time": [i * 0.1], "x": [i * 1e-6]}),
        ),
        threading.Thread(
            target=appender,
            args=("loss", loss, lambda i: {"iteration": [i], "loss": [1 / (i + 1)]}),
        ),
    ]
    loader = threading.Thread(target=load)
    try:
        loader.start()
        for t in writers:
            t.start()
        for t in writers:
            t.join(timeout=600)
        stop.set()
        loader.join(timeout=60)
        assert not errors, errors[:5]
        assert server.running()
        client = from_uri(server.uri)
        rows = client["raw"]["table"].read()
        assert sorted(rows["seq_num"]) == list(range(N_APPENDS))  # each exactly once
        losses = client["loss"]["table"].read()
        assert sorted(losses["iteration"]) == list(range(N_APPENDS))
        assert (tmp_path / "tiled" / TABLES_DB).is_file()
    finally:
        stop.set()
        server.close()


def test_tables_of_an_older_directory_are_still_read(tmp_path):
    """A directory written by tiled's SimpleTiledServer (tables in DuckDB), reopened."""
    from tiled.server import SimpleTiledServer

    with SimpleTiledServer(tmp_path, api_key="olderkey") as older:
        table = from_uri(older.uri).create_appendable_table(
            pa.schema([("i", pa.int64())]), key="old"
        )
        table.append_partition(0, pa.table({"i": [1, 2, 3]}))
    with start_embedded_server(tmp_path, api_key="olderkey") as server:
        client = from_uri(server.uri)
        assert list(client["old"].read()["i"]) == [1, 2, 3]
        new = client.create_appendable_table(pa.schema([("i", pa.int64())]), key="new")
        new.append_partition(0, pa.table({"i": [4]}))
        assert list(client["new"].read()["i"]) == [4]
