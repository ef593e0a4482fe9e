"""Simulated detectors that write files: run real scans, read the frames back through the real
readers (event_model.Filler with the ophyd/area-detector handlers, h5py for StreamResources)
and compare them with the diffraction frames at the published positions."""

import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import event_model
import h5py
import numpy as np
import pytest
from area_detector_handlers.handlers import AreaDetectorHDF5Handler
from bluesky import RunEngine
from ophyd.sim import NumpySeqHandler
from ophyd_async.core import StaticPathProvider, UUIDFilenameProvider, init_devices

from ptystream.config import load_profile
from ptystream.live.frames import LiveAreaDetectorHDF5Handler
from ptystream.sim.async_detector import FRAME_DATASET, AsyncSampleStage, SimPtychoDetector
from ptystream.sim.detector import DetectorModel, diffraction_pattern
from ptystream.sim.devices import make_beamline
from ptystream.sim.file_detectors import ad_hdf5_detector, npy_seq_detector
from ptystream.sim.fly import fly_scan
from ptystream.sim.plans import ptycho_scan, scan_metadata
from ptystream.sim.scan import build_simulation

UM = 1e-6  # the demo profile's motors are in micrometres
N_POINTS = 6


@pytest.fixture(scope="module")
def sim():
    sim = build_simulation(load_profile("demo"))
    assert sim.truth.probe.shape == (64, 64)
    return sim


@pytest.fixture(scope="module")
def positions_m(sim):
    return sim.positions_m[:N_POINTS]


@pytest.fixture
def model():
    return DetectorModel(
        photons_per_frame=None,
        read_noise_counts=0,
        saturation_counts=None,
        rng=np.random.default_rng(0),
    )


@pytest.fixture
def RE():
    RE = RunEngine({})
    yield RE
    if RE.state not in ("idle", "panicked"):
        RE.halt()


def run(RE, plan, reader=None):
    """The run's documents; ``reader(name, doc)`` also sees each one as it is emitted, so it
    reads the files while they are still being written."""
    docs = []

    def record(name, doc):
        docs.append((name, doc))
        if reader is not None:
            reader(name, doc)

    RE(plan, record)
    return docs


def names(docs):
    return [name for name, _ in docs]


def only(docs, name):
    return [doc for n, doc in docs if n == name]


def expected_frame(sim, model, position_m):
    return model.record(diffraction_pattern(sim.truth, tuple(position_m)))


def check_step_events(docs, sim, model, positions_m, frames):
    """Events carry sx/sy (motor units) at the planned positions, and each frame is the one
    at the event's position."""
    (start,) = only(docs, "start")
    assert start["ptystream"] == scan_metadata(positions_m, "demo")
    events = only(docs, "event")
    assert [ev["seq_num"] for ev in events] == list(range(1, N_POINTS + 1))
    for ev, frame, planned in zip(events, frames, positions_m, strict=True):
        at = (ev["data"]["sy"] * UM, ev["data"]["sx"] * UM)
        np.testing.assert_allclose(at, planned, rtol=0, atol=1e-15)
        assert frame.shape == (64, 64) and frame.dtype == np.float32
        np.testing.assert_array_equal(frame, expected_frame(sim, model, at))
    assert only(docs, "stop")[0]["num_events"] == {"primary": N_POINTS}


class LiveFiller:
    """Resolves each event's datum id through event_model.Filler (as soon as it is emitted,
    when used as the ``reader`` of :func:`run`)."""

    def __init__(self, handlers):
        self.filler = event_model.Filler(handlers, inplace=False)
        self.frames = []

    def __call__(self, name, doc):
        name, doc = self.filler(name, doc)
        if name == "event":
            self.frames.append(np.asarray(doc["data"]["det_image"]))  # computes a dask array
        if name == "stop":
            self.filler.close()


def test_npy_seq_step_scan(RE, sim, model, positions_m, tmp_path):
    stage, _ = make_beamline(sim.truth, model, motor_units_m=UM)
    det = npy_seq_detector(stage, sim.truth, model, motor_units_m=UM, save_path=tmp_path)
    filler = LiveFiller({"NPY_SEQ": NumpySeqHandler})
    plan = ptycho_scan(det, stage, positions_m, profile="demo", motor_units_m=UM)
    docs = run(RE, plan, filler)

    assert names(docs) == ["start", "descriptor", "resource"] + ["datum", "event"] * N_POINTS + [
        "stop"
    ]
    key = only(docs, "descriptor")[0]["data_keys"]["det_image"]
    assert key["shape"] == [64, 64] and key["dtype_numpy"] == "<f4" and key["external"]
    (resource,) = only(docs, "resource")
    assert resource["spec"] == "NPY_SEQ" and resource["root"] == str(tmp_path)
    datums = only(docs, "datum")
    assert [d["datum_kwargs"] for d in datums] == [{"index": i} for i in range(N_POINTS)]
    events = only(docs, "event")
    assert [ev["data"]["det_image"] for ev in events] == [d["datum_id"] for d in datums]
    assert all(ev["filled"] == {"det_image": False} for ev in events)
    assert len(list(tmp_path.glob("*.npy"))) == N_POINTS

    check_step_events(docs, sim, model, positions_m, filler.frames)


def test_ad_hdf5_step_scan(RE, sim, model, positions_m, tmp_path):
    stage, _ = make_beamline(sim.truth, model, motor_units_m=UM)
    det = ad_hdf5_detector(stage, sim.truth, model, motor_units_m=UM, save_path=tmp_path)
    # ptystream's own AD_HDF5 handler, live: area-detector-handlers' AreaDetectorHDF5Handler
    # cannot read during the scan (it fixes the dataset length on its first call; its SWMR
    # variant fails on its second call in 0.0.10), so the pipeline uses this one.
    live = LiveFiller({"AD_HDF5": LiveAreaDetectorHDF5Handler})
    plan = ptycho_scan(det, stage, positions_m, profile="demo", motor_units_m=UM)
    docs = run(RE, plan, live)

    assert names(docs) == ["start", "descriptor", "resource"] + ["datum", "event"] * N_POINTS + [
        "stop"
    ]
    key = only(docs, "descriptor")[0]["data_keys"]["det_image"]
    assert key["shape"] == [64, 64] and key["dtype_numpy"] == "<f4" and key["external"]
    (resource,) = only(docs, "resource")
    assert resource["spec"] == "AD_HDF5"
    assert resource["resource_kwargs"] == {"frame_per_point": 1}
    datums = only(docs, "datum")
    assert [d["datum_kwargs"] for d in datums] == [{"point_number": i} for i in range(N_POINTS)]
    assert [ev["data"]["det_image"] for ev in only(docs, "event")] == [
        d["datum_id"] for d in datums
    ]
    assert det.filename is None  # closed at unstage
    with h5py.File(Path(resource["root"]) / resource["resource_path"], "r") as f:
        data = f["/entry/data/data"]
        assert data.shape == (N_POINTS, 64, 64) and data.dtype == np.float32
    assert all(fr.shape == (1, 64, 64) for fr in live.frames)
    check_step_events(docs, sim, model, positions_m, [fr[0] for fr in live.frames])

    # After the scan, the standard handler through event_model.Filler; it slices [i:i+1], so
    # each point is a (1, 64, 64) dask array.
    filler = LiveFiller({"AD_HDF5": AreaDetectorHDF5Handler})
    for name, doc in docs:
        filler(name, doc)
    assert all(fr.shape == (1, 64, 64) for fr in filler.frames)
    check_step_events(docs, sim, model, positions_m, [fr[0] for fr in filler.frames])


def test_ad_hdf5_file_is_readable_from_another_process_while_written(
    sim, model, positions_m, tmp_path
):
    stage, _ = make_beamline(sim.truth, model, motor_units_m=UM)
    det = ad_hdf5_detector(stage, sim.truth, model, motor_units_m=UM, save_path=tmp_path)
    det.stage()
    try:
        for y, x in positions_m[:2] / UM:
            stage.y.set(y).wait()
            stage.x.set(x).wait()
            det.trigger()
        out = tmp_path / "read.npy"
        reader = (
            "import sys, h5py, numpy as np\n"
            "with h5py.File(sys.argv[1], 'r', swmr=True) as f:\n"
            "    np.save(sys.argv[2], f['/entry/data/data'][:])\n"
        )
        subprocess.run([sys.executable, "-c", reader, str(det.filename), str(out)], check=True)
    finally:
        det.unstage()
    read = np.load(out)
    assert read.shape == (2, 64, 64)
    for frame, position in zip(read, positions_m[:2], strict=True):
        np.testing.assert_allclose(frame, expected_frame(sim, model, position), rtol=1e-6)


@pytest.fixture
def async_devices(RE, sim, model, tmp_path):
    path_provider = StaticPathProvider(UUIDFilenameProvider(), tmp_path)
    with init_devices():  # after the RunEngine: it connects on the RunEngine's loop
        stage = AsyncSampleStage()
        det = SimPtychoDetector(path_provider, sim.truth, model, stage=stage, motor_units_m=UM)
    return stage, det


class StreamReader:
    """{seq_num: frame}, read from each stream_datum's range of its stream_resource's dataset
    as soon as the stream_datum is emitted (the writer still has the file open, in SWMR mode)."""

    def __init__(self):
        self.resources = {}
        self.frames = {}

    def __call__(self, name, doc):
        if name == "stream_resource":
            self.resources[doc["uid"]] = doc
        elif name == "stream_datum":
            res = self.resources[doc["stream_resource"]]
            i0, i1 = doc["indices"]["start"], doc["indices"]["stop"]
            s0, s1 = doc["seq_nums"]["start"], doc["seq_nums"]["stop"]
            assert s1 - s0 == i1 - i0
            with h5py.File(urlparse(res["uri"]).path, "r", swmr=True) as f:
                block = f[res["parameters"]["dataset"]][i0:i1]
            self.frames.update(zip(range(s0, s1), block, strict=True))


def check_stream_resource(docs):
    (res,) = only(docs, "stream_resource")
    assert res["data_key"] == "det_image" and res["mimetype"] == "application/x-hdf5"
    assert res["parameters"] == {"dataset": FRAME_DATASET, "chunk_shape": (1, 64, 64)}
    desc = next(d for d in only(docs, "descriptor") if d["name"] == "primary")
    key = desc["data_keys"]["det_image"]
    assert key["shape"] == [1, 64, 64] and key["dtype_numpy"] == "<f4"
    assert key["external"] == "STREAM:"


def test_async_hdf5_step_scan(RE, sim, model, positions_m, async_devices):
    stage, det = async_devices
    reader = StreamReader()
    docs = run(RE, ptycho_scan(det, stage, positions_m, profile="demo", motor_units_m=UM), reader)

    assert names(docs) == ["start", "descriptor", "stream_resource"] + [
        "stream_datum",
        "event",
    ] * N_POINTS + ["stop"]
    check_stream_resource(docs)
    datums = only(docs, "stream_datum")
    assert [d["indices"] for d in datums] == [{"start": i, "stop": i + 1} for i in range(N_POINTS)]
    assert [d["seq_nums"] for d in datums] == [
        {"start": i + 1, "stop": i + 2} for i in range(N_POINTS)
    ]
    assert set(only(docs, "event")[0]["data"]) == {"sx", "sy"}
    frames = reader.frames
    check_step_events(docs, sim, model, positions_m, [frames[s] for s in sorted(frames)])


@pytest.mark.parametrize(
    ("exposure_s", "collect_every_s"), [(0.0, None), (0.04, 0.05)], ids=["one", "ranges"]
)
def test_async_fly_scan(RE, sim, model, positions_m, async_devices, exposure_s, collect_every_s):
    stage, det = async_devices
    plan = fly_scan(
        det,
        positions_m,
        profile="demo",
        motor_units_m=UM,
        exposure_s=exposure_s,
        collect_every_s=collect_every_s,
    )
    reader = StreamReader()
    docs = run(RE, plan, reader)

    n = names(docs)
    assert n[:5] == ["start", "descriptor", "descriptor", "event_page", "stream_resource"]
    assert set(n[5:-1]) == {"stream_datum"} and n[-1] == "stop"
    check_stream_resource(docs)
    (start,) = only(docs, "start")
    assert start["ptystream"] == scan_metadata(positions_m, "demo")
    streams = {d["name"]: d for d in only(docs, "descriptor")}
    assert set(streams) == {"primary", "positions"}
    assert set(streams["positions"]["data_keys"]) == {"sx", "sy"}
    assert only(docs, "stop")[0]["num_events"] == {"primary": N_POINTS, "positions": N_POINTS}

    (page,) = only(docs, "event_page")
    assert page["descriptor"] == streams["positions"]["uid"]
    assert page["seq_num"] == list(range(1, N_POINTS + 1))
    np.testing.assert_allclose(page["data"]["sy"], positions_m[:, 0] / UM)
    np.testing.assert_allclose(page["data"]["sx"], positions_m[:, 1] / UM)

    datums = only(docs, "stream_datum")
    assert datums[0]["indices"]["start"] == 0 and datums[-1]["indices"]["stop"] == N_POINTS
    for a, b in zip(datums, datums[1:], strict=False):
        assert a["indices"]["stop"] == b["indices"]["start"]
    if collect_every_s is None:
        assert len(datums) == 1
    else:
        assert len(datums) > 1
    frames = reader.frames
    assert sorted(frames) == list(range(1, N_POINTS + 1))
    positions_by_seq = dict(
        zip(page["seq_num"], zip(page["data"]["sy"], page["data"]["sx"], strict=True), strict=True)
    )
    for seq, frame in frames.items():
        at = positions_by_seq[seq]
        np.testing.assert_allclose(
            frame, expected_frame(sim, model, (at[0] * UM, at[1] * UM)), rtol=1e-6
        )
        np.testing.assert_array_equal(frame, expected_frame(sim, model, positions_m[seq - 1]))

    # The trajectory is cleared at the end: a step scan afterwards reads the stage again.
    reader = StreamReader()
    docs = run(RE, ptycho_scan(det, stage, positions_m, profile="demo", motor_units_m=UM), reader)
    frames = reader.frames
    check_step_events(docs, sim, model, positions_m, [frames[s] for s in sorted(frames)])
