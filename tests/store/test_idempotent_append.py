"""The live loss table equals the engine's loss history, whatever the appends' errors said.

Against a real Tiled server (the embedded one: its appendable tables live in SQLite). The one
thing injected is the failure: httpx event hooks on a real tiled client, so every request still
reaches the real server. ``after`` turns the real answer to an append into a 500 once the server
has applied it (the hook sees the response, so the rows are in): that is the issue's failure,
which a retry turned into repeated rows. ``before`` fails the append before the request leaves
(a refused connection): nothing reached Tiled, so nothing may be lost.
"""

from __future__ import annotations

import time

import httpx
import numpy as np
import pytest

from ptystream.store.publisher import TiledPublisher


class Faults:
    """Event hooks on ``client``'s HTTP client that fail appends to tables (PATCH of a
    ``table/partition`` route): ``after`` of them answered 500 although applied, while
    ``before`` is set all of them refused before they are sent. ``requests`` records
    ``(method, route)`` of every request."""

    def __init__(self, client):
        self.after = 0
        self.before = False
        self.requests: list[tuple[str, str]] = []
        http = client.context.http_client
        http.event_hooks = {"request": [self._on_request], "response": [self._on_response]}

    @staticmethod
    def _is_append(request: httpx.Request) -> bool:
        return request.method == "PATCH" and "/table/partition/" in request.url.path

    def _on_request(self, request: httpx.Request) -> None:
        route = request.url.path.split("/api/v1/", 1)[-1].split("/")[0]
        self.requests.append((request.method, route))
        if self.before and self._is_append(request):
            raise httpx.ConnectError("injected: connection refused", request=request)

    def _on_response(self, response: httpx.Response) -> None:
        if self.after and self._is_append(response.request) and response.is_success:
            self.after -= 1
            response.status_code = 500  # the server has committed the rows by now


@pytest.fixture
def faulty(tiled_server):
    """``(client, faults)``: a client of its own (the module's client stays clean)."""
    from tiled.client import from_uri

    client = from_uri(tiled_server.uri)
    return client, Faults(client)


def iterations(client, path: str, node: str = "live") -> list[int]:
    return [int(i) for i in client[path][node]["loss"].read()["iteration"]]


def assert_table_is_history(client, path: str, est, node: str = "live") -> None:
    table = client[path][node]["loss"].read()
    np.testing.assert_array_equal(table["iteration"].to_numpy(), est.loss[:, 0])
    np.testing.assert_array_equal(table["loss"].to_numpy(), est.loss[:, 1])


def test_append_answered_500_after_it_was_applied_is_not_repeated(
    faulty, tiled_client, estimate, run_start
):
    client, faults = faulty
    publisher = TiledPublisher(client)
    path = publisher.begin_run(run_start("applied-then-500"), {})
    publisher.publish_live("applied-then-500", estimate(3))
    faults.after = 1
    with pytest.raises(httpx.HTTPStatusError):
        publisher.publish_live("applied-then-500", estimate(6))
    assert faults.after == 0
    # the injected error came after the commit: Tiled holds the rows the client was told failed
    assert iterations(tiled_client, path) == list(range(1, 7))
    publisher.publish_live("applied-then-500", estimate(9))  # the next publication: no repeat
    assert_table_is_history(tiled_client, path, estimate(9))
    publisher.publish_final("applied-then-500", estimate(12, final=True), "finished", {})
    assert_table_is_history(tiled_client, path, estimate(12))
    assert_table_is_history(tiled_client, path, estimate(12), node="final")


def test_append_refused_before_it_was_sent_loses_nothing(faulty, tiled_client, estimate, run_start):
    client, faults = faulty
    publisher = TiledPublisher(client)
    path = publisher.begin_run(run_start("refused"), {})
    publisher.publish_live("refused", estimate(3))
    faults.before = True
    with pytest.raises(httpx.ConnectError, match="injected"):
        publisher.publish_live("refused", estimate(6))
    faults.before = False
    assert iterations(tiled_client, path) == [1, 2, 3]
    publisher.publish_live("refused", estimate(9))
    assert_table_is_history(tiled_client, path, estimate(9))


def test_retried_final_publication_appends_once(faulty, tiled_client, estimate, run_start):
    """The publisher thread retries a failed end of run (``publish.retries``) at once."""
    from ptystream.config import PublishSettings
    from ptystream.live.delivery import Delivery
    from ptystream.live.result import RunResult

    client, faults = faulty
    settings = PublishSettings(retries=3, retry_backoff_s=0.01)
    delivery = Delivery(TiledPublisher(client), settings, {})
    result = RunResult(run_start("retried-final"))
    delivery.start()
    try:
        delivery.post("begin", result)
        delivery.post("live", result, (estimate(4), {}))
        deadline = time.monotonic() + 30
        while faults.requests.count(("PATCH", "metadata")) < 1:  # the live publication's end
            assert time.monotonic() < deadline, faults.requests
            time.sleep(0.05)
        result.final, result.status = estimate(15, final=True), "finished"
        faults.after = 1  # the retry reads the table back: it holds the rows, nothing to send
        delivery.post("final", result)
        assert result.done.wait(60)
    finally:
        delivery.close()
    assert faults.after == 0 and result.node_path is not None
    node = tiled_client[result.node_path]
    assert node.metadata["status"] == "finished"
    assert_table_is_history(tiled_client, result.node_path, estimate(15))


def test_resumed_run_reads_the_table_back(faulty, tiled_client, estimate, run_start):
    """``live``'s metadata lags the table when the error came after the append: a publisher
    that takes the run up (as an upload from the spool does) reads the table itself."""
    client, faults = faulty
    first = TiledPublisher(client)
    path = first.begin_run(run_start("resumed"), {})
    first.publish_live("resumed", estimate(3))
    faults.after = 1
    with pytest.raises(httpx.HTTPStatusError):
        first.publish_live("resumed", estimate(7))
    assert tiled_client[path]["live"].metadata["iteration"] == 3
    second = TiledPublisher(client)
    second.resume("resumed", path)
    second.publish_final("resumed", estimate(10, final=True), "finished", {})
    assert_table_is_history(tiled_client, path, estimate(10))


def test_repeated_rows_already_in_the_table_are_rewritten(tiled_client, estimate, run_start):
    """A table left with repeated rows (an append applied after the client gave up on it, so
    no read-back could have seen it) is replaced by the history at the end of the run."""
    publisher = TiledPublisher(tiled_client)
    path = publisher.begin_run(run_start("repeated"), {})
    publisher.publish_live("repeated", estimate(4))
    table = tiled_client[path]["live"]["loss"]
    table.append_partition(0, {"iteration": [3, 4], "loss": [0.25, 0.2]})  # late duplicate
    assert iterations(tiled_client, path) == [1, 2, 3, 4, 3, 4]
    publisher.publish_final("repeated", estimate(6, final=True), "finished", {})
    assert_table_is_history(tiled_client, path, estimate(6))
    publisher.publish_live("repeated", estimate(8))  # the new table's handle is the one used
    assert_table_is_history(tiled_client, path, estimate(8))


def test_no_read_back_while_appends_succeed(faulty, estimate, run_start):
    """The table is read only when its end is unknown: live publications cost no extra
    request; the end of a run costs one read."""
    client, faults = faulty
    publisher = TiledPublisher(client)
    publisher.begin_run(run_start("cheap"), {})
    faults.requests.clear()
    for i in (2, 4, 6):
        publisher.publish_live("cheap", estimate(i))
    assert ("GET", "table") not in faults.requests
    assert faults.requests.count(("PATCH", "table")) == 3
