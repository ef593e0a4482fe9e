"""Run selection (``ptystream reprocess`` selectors and ``--where``) against a real Tiled server
holding runs written by bluesky's TiledWriter from a real RunEngine. Reading a run's frames back
is checked with full scans in tests/offline/test_reprocess.py."""

import pytest
from bluesky import RunEngine
from bluesky import plans as bp
from bluesky_tiled_plugins import TiledWriter
from ophyd.sim import det

from ptystream.store.layout import raw_catalog
from ptystream.store.runs import RunSelectionError, select_runs

#: Start-document metadata of the runs, by scan id (the RunEngine numbers them 1, 2, ...).
#: ``batch`` is a number in runs 1 and 5 and a string in run 2.
METADATA = {
    1: {"sample": "gold", "operator": "ana", "batch": 3},
    2: {"sample": "gold", "operator": "ben", "batch": "3"},
    3: {"sample": "silver", "operator": "ana"},
    4: {"sample": "gold", "operator": "ana"},
    5: {"sample": "silver", "operator": "ben", "batch": 3},
}


@pytest.fixture(scope="module")
def runs(tiled_client):
    """The ``raw`` catalog and the uid of each run by scan id."""
    catalog = raw_catalog(tiled_client)
    RE = RunEngine({})
    RE.subscribe(TiledWriter(catalog))
    uids = {}
    for scan_id, md in METADATA.items():
        (uids[scan_id],) = RE(bp.count([det], md=md))
    return catalog, uids


def selected(runs, selectors, where):
    catalog, uids = runs
    by_uid = {uid: scan_id for scan_id, uid in uids.items()}
    refs = select_runs(catalog, selectors, where)
    return [by_uid[ref.uid] for ref in refs]


def test_the_runs_carry_their_scan_ids_and_metadata(runs):
    catalog, uids = runs
    for scan_id, uid in uids.items():
        start = catalog[uid].metadata["start"]
        assert start["scan_id"] == scan_id
        assert {key: start[key] for key in METADATA[scan_id]} == METADATA[scan_id]


def test_one_condition_selects_every_matching_run(runs):
    assert selected(runs, [], ["sample=gold"]) == [1, 2, 4]
    assert selected(runs, [], ["operator=ben"]) == [2, 5]
    assert selected(runs, [], ["sample=copper"]) == []


def test_two_conditions_are_anded(runs):
    assert selected(runs, [], ["sample=gold", "operator=ana"]) == [1, 4]
    assert selected(runs, [], ["sample=silver", "operator=ben"]) == [5]
    assert selected(runs, [], ["sample=silver", "operator=carla"]) == []


def test_a_condition_with_a_scan_id_range(runs):
    assert selected(runs, ["2:5"], ["sample=gold"]) == [2, 4]
    assert selected(runs, ["1-3"], ["operator=ana"]) == [1, 3]
    with pytest.raises(RunSelectionError, match="no run has a scan id in 3..3"):
        selected(runs, ["3:3"], ["sample=gold"])


def test_a_named_run_that_does_not_match_is_left_out(runs, uid_prefix):
    _, uids = runs
    assert selected(runs, [uids[3], uids[1]], ["sample=gold"]) == [1]
    assert selected(runs, ["3", uid_prefix(uids[4], 8)], ["sample=gold"]) == [4]
    assert selected(runs, [uids[3]], []) == [3]  # without a condition it is taken


def test_values_are_read_as_yaml(runs):
    assert selected(runs, [], ["batch=3"]) == [1, 5]  # a number
    assert selected(runs, [], ["batch='3'"]) == [2]  # a string
    assert selected(runs, [], ["scan_id=4"]) == [4]
    assert selected(runs, [], ["scan_id='4'"]) == []


@pytest.mark.parametrize("condition", ["sample", "=gold", " =gold"])
def test_a_malformed_condition_is_named(runs, condition):
    catalog, _ = runs
    with pytest.raises(RunSelectionError, match=f"--where '{condition}': expected KEY=VALUE"):
        select_runs(catalog, [], [condition])
    with pytest.raises(RunSelectionError, match="expected KEY=VALUE"):
        select_runs(catalog, ["1:5"], ["sample=gold", condition])


def test_no_selector_and_no_condition_is_refused(runs):
    catalog, _ = runs
    with pytest.raises(RunSelectionError, match="name runs by uid, scan id or range"):
        select_runs(catalog, [], [])


def test_a_uid_prefix_of_digits_only_is_a_uid_when_no_scan_id_matches(runs):
    """Documents composed with a chosen uid (a RunEngine draws its own) and written by the real
    TiledWriter: a prefix such as ``98765432`` names no scan id, so it names that run."""
    from event_model import compose_run

    catalog, _ = runs
    uid = "98765432-0000-4000-8000-000000000000"
    bundle = compose_run(uid=uid, metadata={"scan_id": 77})
    writer = TiledWriter(catalog)
    writer("start", bundle.start_doc)
    writer("stop", bundle.compose_stop())
    refs = select_runs(catalog, ["98765432"], [])
    assert [r.uid for r in refs] == [uid]
    assert [r.scan_id for r in select_runs(catalog, ["77"], [])] == [77]  # short: a scan id
    with pytest.raises(RunSelectionError, match="no run with scan id or uid '11111111'"):
        select_runs(catalog, ["11111111"], [])
