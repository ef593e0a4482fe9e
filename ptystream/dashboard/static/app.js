// ptystream control-room dashboard: plain JavaScript, no framework, nothing from the internet.
//
// Reads Tiled through the dashboard's own read-only proxy (same origin; the proxy adds the API
// key, the page never sees it). Layout (ptystream/publisher.py):
//   processed/ptystream/<key>        one container per reconstruction, metadata: status, scan_id ...
//   processed/ptystream/<key>/live   metadata replaced on each publish (sequence, iteration, ...)
//     object_amplitude, object_phase, probe_amplitude, probe_phase   float32 2-D, overwritten
//     slices_amplitude, slices_phase   multislice runs only: float32 (S, H, W), slice 0 first met
//                                      by the beam; object_* are then the product of the slices
//     loss                                                           table: iteration, loss
//     object_phase_ramp_removed   float32, the phase with its linear ramp taken off
//     scanned        uint8 (H, W), 1 where the probe lit the object (the rest is drawn grey)
//     positions_m    float64 (n, 2), probe positions (y, x) of the frames used so far
//     diffraction    float32 (N, N), a recent frame in counts (drawn on a log scale)
//   live/ metadata names the slices (slices: S, 1 for a thin object) and slice_gaps_m (S - 1),
//   and what of the above it holds (phase_ramp_removed, scanned_fraction, positions,
//   diffraction_shape); object_origin_m and pixel_size_m place the positions on the object.
//   processed/ptystream/<key>/reprocessed/v1, v2, ...: reprocessed versions (latest_reprocess in
//   the run's metadata names the latest), listed under their run.
// Tiled's websocket events: subscribing to a container gives container-child-created and
// container-child-metadata-updated (key, full metadata) for its children. live/ metadata is
// written last in a publish, so its update means the arrays are ready.
"use strict";

const API = "/api/v1";
const ROOT = "processed/ptystream";
const LIVE_ARRAYS = ["object_amplitude", "object_phase", "probe_amplitude", "probe_phase"];
const RECENT_RUNS = 20;
const POLL_MS = 1000;
const STALE_S = 15;

// 256-entry colour maps (matplotlib's viridis, perceptual sequential; twilight, cyclic), RGB hex.
const VIRIDIS = "44015444025645045745055946075a46085c460a5d460b5e470d60470e6147106347116447136548146748166848176948186a481a6c481b6d481c6e481d6f481f70482071482173482374482475482576482677482878482979472a7a472c7a472d7b472e7c472f7d46307e46327e46337f463480453581453781453882443983443a83443b84433d84433e85423f854240864241864142874144874045884046883f47883f48893e49893e4a893e4c8a3d4d8a3d4e8a3c4f8a3c508b3b518b3b528b3a538b3a548c39558c39568c38588c38598c375a8c375b8d365c8d365d8d355e8d355f8d34608d34618d33628d33638d32648e32658e31668e31678e31688e30698e306a8e2f6b8e2f6c8e2e6d8e2e6e8e2e6f8e2d708e2d718e2c718e2c728e2c738e2b748e2b758e2a768e2a778e2a788e29798e297a8e297b8e287c8e287d8e277e8e277f8e27808e26818e26828e26828e25838e25848e25858e24868e24878e23888e23898e238a8d228b8d228c8d228d8d218e8d218f8d21908d21918c20928c20928c20938c1f948c1f958b1f968b1f978b1f988b1f998a1f9a8a1e9b8a1e9c891e9d891f9e891f9f881fa0881fa1881fa1871fa28720a38620a48621a58521a68522a78522a88423a98324aa8325ab8225ac8226ad8127ad8128ae8029af7f2ab07f2cb17e2db27d2eb37c2fb47c31b57b32b67a34b67935b77937b87838b9773aba763bbb753dbc743fbc7340bd7242be7144bf7046c06f48c16e4ac16d4cc26c4ec36b50c46a52c56954c56856c66758c7655ac8645cc8635ec96260ca6063cb5f65cb5e67cc5c69cd5b6ccd5a6ece5870cf5773d05675d05477d1537ad1517cd2507fd34e81d34d84d44b86d54989d5488bd6468ed64590d74393d74195d84098d83e9bd93c9dd93ba0da39a2da37a5db36a8db34aadc32addc30b0dd2fb2dd2db5de2bb8de29bade28bddf26c0df25c2df23c5e021c8e020cae11fcde11dd0e11cd2e21bd5e21ad8e219dae319dde318dfe318e2e418e5e419e7e419eae51aece51befe51cf1e51df4e61ef6e620f8e621fbe723fde725";
const TWILIGHT = "e2d9e2e1d9e2e0d9e2ded9e1ddd9e0dcd9dfdad8dfd8d8ded6d7ddd4d6dcd2d5dbd0d4d9cdd3d8cbd2d7c8d0d6c5cfd5c2ced4bfccd3bccbd1b9c9d0b6c8cfb3c6ceb0c5cdadc3cdaac2cca7c0cba4becaa1bdc99ebbc99cb9c899b8c896b6c793b4c692b3c68eb1c58cafc589adc588acc485a9c482a7c380a5c37fa5c37ca2c27aa0c2789ec2779dc2759ac17398c17196c17195c06e92c06d90c06c8ebf6b8dbf698abf6888be6786be6785be6682bd657fbd647dbc647cbc6379bb6277bb6275ba6172ba6171b9606eb8606cb86069b76067b65f65b55f62b45f60b45f5fb35f5bb25f59b15f57b05e54ae5e52ad5e4fac5e4dab5e4caa5e48a85e46a65e43a55d41a35d3ea15d3ca05d3a9e5c389d5c359a5b32985b30955a2e935a2b9059298e58278b58268a572385562182551f7f531e7c521c79511a754f19724f19704c176b4b166849156447146146145e44135a4212574112563f12513d114e3c114b3a114939114637114436114236114134113e33113c32123a3113393014373014373113373312373412383412383611393811393a113a3b113b3d113c3f123d41123d43123e4612404813414a13424d14434f14445215455415465615465916485c17495f174a61184b64194b67194c691a4d6c1b4e6f1c4e711d4f741e4f761f4f7920507b21507e22507f23508325508526508727508a29508c2a508e2c50902e50922f509431509633509835509a37509c39509e3b50a03d50a03e50a34150a54350a64550a84750a94950ab4b50ac4d51ae5051af5251b15452b25652b35953b55b53b65d54b75f55b86155b96456ba6657bb6958bc6b59bd6e5abe705bbf725dc0755ec1775fc27a61c27c63c37f64c48166c58468c5866ac6876bc68b6ec78e71c89073c89275c99578c9977bca9a7dca9c80cb9f83cca186cca389cda68ccda88fceab92cfad96cfae97d0b29cd1b4a0d1b6a3d2b8a7d3baaad4bdadd5bfb1d6c1b4d7c3b8d8c5bbd8c7bed9c9c2dacbc5dbccc8dccecbdccfcdddd1d1ded3d3dfd4d6dfd5d8e0d6dae0d7dbe1d8dde1d8dfe2d9e0e2d9e1e2d9e2";

function parseLut(hex) {
  const lut = new Uint8Array(256 * 3);
  for (let i = 0; i < 256 * 3; i++) lut[i] = parseInt(hex.substr(2 * i, 2), 16);
  return lut;
}
const LUTS = { amplitude: parseLut(VIRIDIS), phase: parseLut(TWILIGHT), counts: parseLut(VIRIDIS) };

// ---------------------------------------------------------------------------------------------
// State

const state = {
  runs: new Map(),     // key -> run metadata, in newest-first order of discovery
  order: [],           // keys, newest first
  shown: null,         // key of the run on screen
  token: 0,            // bumped when the shown run changes: late answers for another run are dropped
  follow: true,
  run: null,           // metadata of the shown run
  live: null,          // latest live/ metadata of the shown run
  lastDrawn: null,     // identity (sequence / updated_at) and object view of what is on screen
  slice: null,         // multislice: index of the slice in the object panels; null: their product
  lossLocal: [],       // (iteration, loss) seen in live/ metadata, when there is no live/loss table
  lossTableMissingAt: 0,
  lossDrawn: { rows: [], source: "" },
  failures: 0,         // consecutive failed fetch-and-draw rounds
  busy: false,
  again: false,
  listStream: null,
  runStream: null,
  error: null,
  positions: null,     // the positions drawn over the object amplitude, to redraw on resize
  versions: new Map(), // key -> { sign, list } of the run's reprocessed versions
};

window.ptystream = {
  runKey: null, sequence: null, iteration: null, updatedAt: null, renderedAt: null, renders: 0,
  slice: null,  // the slice drawn in the object panels (1 = first met by the beam); null: product
};

const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------------------------------------
// Talking to Tiled (through the proxy)

function encodePath(path) {
  return path.split("/").map(encodeURIComponent).join("/");
}

class HttpError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function get(route, path, params) {
  const query = params ? "?" + new URLSearchParams(params).toString() : "";
  const response = await fetch(`${API}/${route}/${encodePath(path)}${query}`, { cache: "no-store" });
  if (!response.ok) {
    let detail = response.statusText;
    try {
      const body = await response.json();
      detail = body.error || body.detail || detail;
    } catch (e) { /* not JSON */ }
    if (response.status === 502) setError(detail);
    throw new HttpError(response.status, `${response.status}: ${detail}`);
  }
  setError(null);
  return response;
}

async function getJSON(route, path, params) {
  return (await get(route, path, params)).json();
}

// The array at `path` as a typed array of `Type` (its dtype: Float32Array for float32, Uint8Array
// for uint8, Float64Array for float64). `index`: only that plane of the first axis (Tiled slices
// on the server, so one slice of a multislice stack costs no more than a 2-D array).
async function getArray(path, Type = Float32Array, index = null) {
  const params = { format: "application/octet-stream" };
  if (index != null) params.slice = String(index);
  const response = await get("array/full", path, params);
  const bytes = await response.arrayBuffer();
  // Tiled sends the array's own byte order: little-endian (as on every browser host).
  return new Type(bytes);
}

async function metadataOf(path) {
  const body = await getJSON("metadata", path, { fields: "metadata", omit_links: "true" });
  return body.data.attributes.metadata || {};
}

function setError(message) {
  state.error = message;
  const el = $("error");
  el.hidden = !message;
  el.textContent = message ? `Tiled: ${message}` : "";
  updateConnection();
}

// A websocket subscription to one node's events, reconnected when it drops. "live" becomes true
// with the first message (Tiled's schema), i.e. once Tiled itself has accepted the subscription.
class Subscription {
  constructor(path, onEvent, onLive) {
    this.path = path;
    this.onEvent = onEvent;
    this.onLive = onLive;
    this.live = false;
    this.reason = "connecting";
    this.closed = false;
    this.backoff = 1000;
    this.timer = null;
    this.connect();
  }

  connect() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const url = `${scheme}//${location.host}${API}/stream/single/${encodePath(this.path)}?envelope_format=json`;
    const ws = new WebSocket(url);
    this.ws = ws;
    ws.onmessage = (event) => {
      let message;
      try { message = JSON.parse(event.data); } catch (e) { return; }
      if (!this.live) {
        this.live = true;
        this.backoff = 1000;
        this.reason = "live";
        updateConnection();
        this.onLive();  // catch up on whatever happened before the subscription
      }
      if (!String(message.type || "").endsWith("-schema")) this.onEvent(message);
    };
    ws.onclose = (event) => {
      this.live = false;
      if (this.closed) return;
      let delay = this.backoff;
      if (event.code === 4500) {  // Tiled has no streaming cache: poll, try again now and then
        this.reason = "unsupported";
        delay = 30000;
      } else if (event.code === 4404) {  // the node does not exist yet
        this.reason = "missing";
        delay = 2000;
      } else {
        this.reason = "down";
        this.backoff = Math.min(this.backoff * 2, 10000);
      }
      updateConnection();
      this.timer = setTimeout(() => this.connect(), delay);
    };
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
    if (this.ws) this.ws.close();
  }
}

function updateConnection() {
  const el = $("conn");
  const streams = [state.listStream, state.runStream].filter(Boolean);
  let mode, text;
  if (state.error) {
    mode = "offline";
    text = "Tiled unreachable, retrying";
  } else if (streams.length && streams.every((s) => s.live)) {
    mode = "websocket";
    text = "live (websocket)";
  } else if (streams.some((s) => s.reason === "unsupported")) {
    mode = "polling";
    text = "polling every 1 s (Tiled has no streaming cache)";
  } else if (streams.some((s) => s.reason === "down")) {
    mode = "polling";
    text = "polling every 1 s (websocket reconnecting)";
  } else if (streams.some((s) => s.reason === "connecting")) {
    mode = "connecting";
    text = "connecting…";
  } else {
    mode = "polling";
    text = "polling every 1 s";
  }
  el.dataset.mode = mode;
  el.textContent = text;
}

// ---------------------------------------------------------------------------------------------
// Runs

async function refreshRuns() {
  let body;
  try {
    body = await getJSON("search", ROOT, {
      fields: "metadata", sort: "-", "page[limit]": String(RECENT_RUNS), omit_links: "true",
    });
  } catch (e) {
    if (e.status === 404) { renderRuns(); return; }  // no reconstruction yet
    throw e;
  }
  const keys = body.data.map((item) => item.id);
  for (const item of body.data) {
    state.runs.set(item.id, item.attributes.metadata || {});
    refreshVersions(item.id);
  }
  // Keep runs the websocket announced after the newest one the search knows.
  const firstKnown = state.order.findIndex((k) => keys.includes(k));
  const newer = firstKnown < 0 ? [] : state.order.slice(0, firstKnown);
  state.order = [...newer.filter((k) => !keys.includes(k)), ...keys];
  renderRuns();
  if (state.shown && state.runs.has(state.shown)) showRunHeader(state.runs.get(state.shown));
  chooseRun();
}

function onRunsEvent(message) {
  const key = message.key;
  if (!key) return;
  if (message.type === "container-child-created") {
    state.runs.set(key, message.metadata || {});
    state.order = [key, ...state.order.filter((k) => k !== key)];
  } else if (message.type === "container-child-metadata-updated") {
    state.runs.set(key, message.metadata || {});
    if (!state.order.includes(key)) state.order.unshift(key);
  } else {
    return;
  }
  refreshVersions(key);
  renderRuns();
  if (key === state.shown) {
    state.run = state.runs.get(key);
    showRunHeader(state.run);
  }
  chooseRun();
}

// In follow mode: show the newest running run when it is newer than the one shown (a run left
// "running" by a crashed service does not pull the page back), or the newest run when none is
// running and the shown one has ended; with nothing shown yet, or when the operator turns
// following on, the newest running run, else the newest run.
function chooseRun(jump = false) {
  if (!state.follow || !state.order.length) return;
  const running = state.order.find((k) => (state.runs.get(k) || {}).status === "running");
  const shownAt = state.order.indexOf(state.shown);
  let target = state.shown;
  const shownEnded = (state.runs.get(state.shown) || {}).status !== "running";
  if (jump || shownAt < 0) target = running || state.order[0];
  else if (running && state.order.indexOf(running) < shownAt) target = running;
  // A newer run that started and ended between two looks (a short scan): show it once the
  // shown one has ended too.
  else if (!running && shownAt > 0 && shownEnded) target = state.order[0];
  if (target !== state.shown) showRun(target);
}

function renderRuns() {
  const list = $("runs");
  const keys = state.order.slice(0, RECENT_RUNS);
  list.replaceChildren(...keys.map((key) => runItem(key, state.runs.get(key) || {})));
  list.dataset.count = String(keys.length);
  $("runs-empty").hidden = keys.length > 0;
  if (!keys.length && !state.shown) showPlaceholder("Waiting for the first reconstruction…");
}

function runItem(key, meta) {
  const li = document.createElement("li");
  li.dataset.key = key;
  li.dataset.status = meta.status || "";
  if (key === state.shown) li.setAttribute("aria-current", "true");
  const button = document.createElement("button");
  button.type = "button";
  const scan = span("scan", meta.scan_id != null ? `scan ${meta.scan_id}` : "scan ?");
  const badge = span("badge", meta.status || "?");
  badge.dataset.status = meta.status || "";
  const started = (meta.timings || {}).started_at;
  const detail = document.createElement("span");
  detail.className = "detail";
  const parts = [started ? clock(started, true) : null, meta.profile || null];
  if (meta.iterations != null) parts.push(`${meta.iterations} it`);
  const used = (meta.frames && meta.frames.used) ?? meta.frames_used;
  if (used != null) parts.push(`${used} frames`);
  const missing = missingFrames(meta.frames);
  if (missing) parts.push(`${missing.count} missing`);
  detail.append(span("uid", shortKey(key)), " · " + parts.filter((p) => p != null).join(" · "));
  button.append(scan, badge, detail);
  button.addEventListener("click", () => {
    setFollow(false);
    showRun(key);
  });
  li.append(button);
  const versions = (state.versions.get(key) || {}).list || [];
  if (versions.length) li.append(versionList(versions));
  return li;
}

// The run's reprocessed versions (processed/ptystream/<key>/reprocessed/v1, v2, ...), read when
// its metadata names one (latest_reprocess, set when a version starts and when it ends) and again
// whenever that changes.
function refreshVersions(key) {
  const latest = (state.runs.get(key) || {}).latest_reprocess;
  if (!latest) return;
  const sign = JSON.stringify(latest);
  const known = state.versions.get(key);
  if (known && known.sign === sign) return;
  state.versions.set(key, { sign, list: known ? known.list : [] });
  getJSON("search", `${ROOT}/${key}/reprocessed`, {
    fields: "metadata", omit_links: "true", "page[limit]": "100",
  }).then((body) => {
    const number = (v) => Number(/^v(\d+)$/.exec(v.key)?.[1] ?? Infinity);
    const list = body.data.map((item) => ({ key: item.id, ...(item.attributes.metadata || {}) }));
    list.sort((a, b) => number(a) - number(b));
    state.versions.set(key, { sign, list });
    renderRuns();
  }).catch((e) => {
    state.versions.delete(key);  // tried again at the next look at the runs
    console.warn("versions", e);
  });
}

function versionList(versions) {
  const list = document.createElement("ol");
  list.className = "versions";
  list.setAttribute("aria-label", "reprocessed versions");
  list.dataset.count = String(versions.length);
  list.replaceChildren(...versions.map((v) => {
    const item = document.createElement("li");
    item.dataset.version = v.key;
    item.dataset.status = v.status || "";
    const badge = span("badge", v.status || "?");
    badge.dataset.status = v.status || "";
    const parts = [];
    const started = (v.timings || {}).started_at;
    if (started) parts.push(clock(started, true));
    const profile = (v.provenance || {}).profile;
    if (profile) parts.push(String(profile));
    if (v.iterations != null) parts.push(`${fmtInt(v.iterations)} it`);
    const used = (v.frames || {}).used;
    if (used != null) parts.push(`${fmtInt(used)} frames`);
    if (Number.isFinite(v.final_loss)) parts.push(`loss ${v.final_loss.toExponential(2)}`);
    item.append(span("version", `reprocessed ${v.key}`), badge, span("detail", parts.join(" · ")));
    item.title = v.reason ? `${v.key}: ${v.reason}` : `processed/ptystream/…/reprocessed/${v.key}`;
    return item;
  }));
  return list;
}

function span(className, text) {
  const el = document.createElement("span");
  el.className = className;
  el.textContent = text;
  return el;
}

// "3f2a9c1b" for a run uid, "3f2a9c1b-2" for its second reconstruction ("<uid>-2").
function shortKey(key) {
  const again = /^(.{36})-(\d+)$/.exec(key);
  return key.slice(0, 8) + (again ? `-${again[2]}` : "");
}

function setFollow(on) {
  state.follow = on;
  const button = $("follow");
  button.dataset.follow = String(on);
  button.setAttribute("aria-pressed", String(on));
  if (on) chooseRun(true);
}

// ---------------------------------------------------------------------------------------------
// The shown run

function showRun(key) {
  state.shown = key;
  state.token += 1;
  state.run = state.runs.get(key) || null;
  state.live = null;
  state.lastDrawn = null;
  state.slice = null;  // another run: back to the product of its slices
  state.lossLocal = [];
  state.lossTableMissingAt = 0;
  state.failures = 0;
  document.body.dataset.runKey = key;
  window.ptystream.runKey = key;
  for (const li of $("runs").children) {
    if (li.dataset.key === key) li.setAttribute("aria-current", "true");
    else li.removeAttribute("aria-current");
  }
  clearEstimate();
  showRunHeader(state.run || {});
  if (state.runStream) state.runStream.close();
  state.runStream = new Subscription(`${ROOT}/${key}`, onRunEvent, () => pollShown());
  updateConnection();
  pollShown();
}

function onRunEvent(message) {
  if (message.type === "container-child-metadata-updated" && message.key === "live") {
    onLive(message.metadata || {});
  }
}

// One poll of the shown run: its status and its live/ metadata (every second without websocket).
async function pollShown() {
  const key = state.shown;
  const token = state.token;
  if (!key) return;
  try {
    const [run, live] = await Promise.all([
      metadataOf(`${ROOT}/${key}`),
      metadataOf(`${ROOT}/${key}/live`).catch((e) => {
        if (e.status === 404) return {};
        throw e;
      }),
    ]);
    if (token !== state.token) return;
    const changed = (state.runs.get(key) || {}).status !== run.status;
    state.run = run;
    state.runs.set(key, run);
    if (changed) renderRuns();
    showRunHeader(run);
    onLive(live);
  } catch (e) {
    console.warn("poll", e);
  }
}

function identity(live) {
  return `${live.sequence}|${live.updated_at}|${live.iteration}`;
}

function onLive(live) {
  if (live.iteration == null && live.sequence == null) {
    showPlaceholder(state.run && state.run.status !== "running"
      ? "No estimate was published for this run."
      : "Waiting for the first estimate…");
    return;
  }
  if (state.live && identity(state.live) === identity(live)) return;
  state.live = live;
  if (Number.isFinite(live.loss) && live.iteration != null) {
    const last = state.lossLocal[state.lossLocal.length - 1];
    if (!last || last[0] !== live.iteration) state.lossLocal.push([live.iteration, live.loss]);
  }
  showStats(live);
  requestRender();
}

// Fetch-and-draw, at most one at a time; an update arriving meanwhile triggers one more round.
async function requestRender() {
  if (!state.live) return;
  if (state.busy) { state.again = true; return; }
  state.busy = true;
  try {
    await renderEstimate();
    state.failures = 0;
  } catch (e) {
    console.warn("render", e);
    // E.g. an array replaced (resized) mid-read: try again shortly, a few times.
    state.failures += 1;
    if (e.status !== 502 && state.failures < 5) setTimeout(requestRender, 500);
  } finally {
    state.busy = false;
    if (state.again) { state.again = false; requestRender(); }
  }
}

async function renderEstimate() {
  const token = state.token;
  const key = state.shown;
  const live = state.live;
  const view = state.slice;
  const drawn = `${identity(live)}|${view}`;
  if (state.lastDrawn === drawn) return;
  const base = `${ROOT}/${key}/live`;
  // The phase with its linear ramp removed where the publisher wrote it (runs since it does).
  const rampFree = view == null && live.phase_ramp_removed === true;
  const objectNames = view != null ? ["slices_amplitude", "slices_phase"]
    : ["object_amplitude", rampFree ? "object_phase_ramp_removed" : "object_phase"];
  const names = [...objectNames, ...LIVE_ARRAYS.slice(2)];
  const [buffers, loss, extras] = await Promise.all([
    Promise.all(names.map((name, i) => getArray(`${base}/${name}`, Float32Array, i < 2 ? view : null))),
    lossRows(key),
    liveExtras(base, live),
  ]);
  if (token !== state.token) return;
  let shapes = shapesFromMetadata(live);
  if (!shapes || !fits(buffers, shapes)) {
    shapes = await shapesFromTiled(base);  // no shapes in metadata, or an array was resized
    if (token !== state.token) return;
    if (!fits(buffers, shapes)) throw new Error("array sizes changed during the read");
  }
  const pixel = live.pixel_size_m;
  const n = sliceCount(live);
  const note = view != null ? `slice ${view + 1} of ${n}` : n > 1 ? `product of ${n} slices` : "";
  const mask = extras.scanned;
  drawImage("obj-amp", buffers[0], shapes.object, "amplitude", pixel, note, { mask });
  drawImage("obj-phase", buffers[1], shapes.object, "phase", pixel, note, { mask });
  drawImage("probe-amp", buffers[2], shapes.probe, "amplitude", pixel);
  drawImage("probe-phase", buffers[3], shapes.probe, "phase", pixel);
  $("obj-phase-ramp").hidden = !rampFree;
  // positions_m is replaced when it grows: one read in between misses it, keep the last ones
  const previous = state.positions && state.positions.key === key ? state.positions.positions : null;
  drawPositions(extras.positions || previous, live.object_origin_m, pixel, shapes.object, key);
  drawDiffraction(extras.diffraction, live.diffraction_shape);
  drawLoss(loss);
  hidePlaceholder();
  state.lastDrawn = drawn;
  const p = window.ptystream;
  p.runKey = key;
  p.sequence = live.sequence ?? null;
  p.iteration = live.iteration ?? null;
  p.updatedAt = live.updated_at ?? null;
  p.slice = view == null ? null : view + 1;
  p.renders += 1;
  p.renderedAt = Date.now();
  const body = document.body.dataset;
  body.sequence = String(p.sequence ?? "");
  body.iteration = String(p.iteration ?? "");
  body.renders = String(p.renders);
  body.slice = String(p.slice ?? "");
  document.title = `ptystream · scan ${(state.run || {}).scan_id ?? "?"} · ${(state.run || {}).status || ""} · it ${live.iteration}`;
}

// What live/ holds besides the four views, where the metadata says it does (older runs lack
// them): the scanned area, the positions used so far, a recent diffraction pattern. One that
// cannot be read now (replaced mid-read) is left out of this drawing.
async function liveExtras(base, live) {
  const optional = (wanted, name, Type) => (wanted
    ? getArray(`${base}/${name}`, Type).catch((e) => { console.warn(name, e); return null; })
    : Promise.resolve(null));
  const [scanned, positions, diffraction] = await Promise.all([
    optional(live.scanned_fraction != null, "scanned", Uint8Array),
    optional(Number(live.positions) > 0, "positions_m", Float64Array),
    optional(Array.isArray(live.diffraction_shape), "diffraction", Float32Array),
  ]);
  return { scanned, positions, diffraction };
}

function shapesFromMetadata(live) {
  if (!Array.isArray(live.object_shape) || !Array.isArray(live.probe_shape)) return null;
  return { object: live.object_shape, probe: live.probe_shape };
}

async function shapesFromTiled(base) {
  const body = await getJSON("search", base, { fields: "structure", omit_links: "true" });
  const shape = {};
  for (const item of body.data) shape[item.id] = ((item.attributes || {}).structure || {}).shape;
  return { object: shape.object_amplitude, probe: shape.probe_amplitude };
}

function fits(buffers, shapes) {
  const size = (s) => (Array.isArray(s) ? s.reduce((a, b) => a * b, 1) : -1);
  return buffers[0].length === size(shapes.object) && buffers[1].length === size(shapes.object)
    && buffers[2].length === size(shapes.probe) && buffers[3].length === size(shapes.probe);
}

// Loss rows: live/loss (appended at each publish); else final/loss of an ended run; else the
// values seen in live/ metadata since the page opened.
async function lossRows(key) {
  const missingRecently = Date.now() - state.lossTableMissingAt < 10000;
  if (!missingRecently) {
    try {
      const t = await getJSON("table/full", `${ROOT}/${key}/live/loss`, { format: "application/json" });
      return { rows: zipRows(t), source: "" };
    } catch (e) {
      if (e.status !== 404) throw e;
      state.lossTableMissingAt = Date.now();
    }
  }
  if (state.run && state.run.status && state.run.status !== "running") {
    try {
      const t = await getJSON("table/full", `${ROOT}/${key}/final/loss`, { format: "application/json" });
      return { rows: zipRows(t), source: "(final)" };
    } catch (e) {
      if (e.status !== 404) throw e;
    }
  }
  return { rows: state.lossLocal.slice(), source: "(since this page opened)" };
}

function zipRows(table) {
  const it = table.iteration || [];
  const loss = table.loss || [];
  return it.map((i, n) => [i, loss[n]]);
}

// ---------------------------------------------------------------------------------------------
// Text

function showRunHeader(run) {
  const key = state.shown;
  $("scan-id").textContent = run.scan_id != null ? `scan ${run.scan_id}` : "scan ?";
  $("run-uid").textContent = key ? shortKey(key) : "";
  $("run-uid").title = key || "";
  const status = run.status || "";
  $("status").textContent = status || "—";
  $("status").dataset.status = status;
  document.body.dataset.status = status;
  $("profile").textContent = [run.profile ? `profile ${run.profile}` : null,
    run.reason ? `(${run.reason})` : null].filter(Boolean).join(" ");
  const t = run.timings || {};
  const started = t.started_at ? Date.parse(t.started_at) : NaN;
  const finished = t.finished_at ? Date.parse(t.finished_at) : NaN;
  let timing = Number.isFinite(started) ? `started ${clock(t.started_at)}` : "";
  if (Number.isFinite(started) && Number.isFinite(finished)) {
    timing += `, took ${fmtAge((finished - started) / 1000)}`;
  }
  $("timing").textContent = timing;
  if (state.live) showStats(state.live);
}

function showStats(live) {
  const run = state.run || {};
  const frames = live.frames || {};
  const used = frames.used ?? live.frames_used;
  const waiting = frames.waiting ?? live.frames_waiting;
  const received = frames.received;
  const rejected = frames.rejected;
  const planned = live.planned ?? (run.plan || {}).n_points;
  $("iteration").textContent = fmtInt(live.iteration);
  $("loss").textContent = Number.isFinite(live.loss) ? live.loss.toExponential(3) : "—";
  $("estimate-note").textContent = live.sequence != null
    ? `estimate #${live.sequence}${live.final ? " (final)" : ""}` : "";
  $("frames-used").textContent = fmtInt(used);
  $("frames-received").textContent = fmtInt(received);
  $("frames-planned").textContent = fmtInt(planned);
  $("frames-waiting").textContent = fmtInt(waiting);
  $("frames-rejected").textContent = typeof rejected === "object" && rejected
    ? fmtInt(Object.values(rejected).reduce((a, b) => a + b, 0)) : fmtInt(rejected);
  const total = planned || received || used || 0;
  $("frames-bar-received").style.width = total ? `${(100 * (received ?? used ?? 0)) / total}%` : "0";
  $("frames-bar-used").style.width = total ? `${(100 * (used ?? 0)) / total}%` : "0";
  showMissing(missingFrames(frames) || (run.status !== "running" && missingFrames(run.frames)));
  $("updated-at").textContent = live.updated_at ? clock(live.updated_at) : "—";
  showSlices(live);
  $("noise-note").textContent = noiseText(live);
  showWarnings(live);
  tickAge();
}

// frames.missing of the metadata ({count, seq_nums, expected, source}) when frames never arrived.
function missingFrames(frames) {
  const missing = frames && frames.missing;
  return missing && typeof missing === "object" && Number(missing.count) > 0 ? missing : null;
}

// "14 never arrived: seq_nums 21-30,45,58-60", shown only when frames are missing.
function showMissing(missing) {
  const note = $("frames-missing-note");
  note.hidden = !missing;
  if (!missing) return;
  $("frames-missing").textContent = fmtInt(Number(missing.count));
  $("frames-missing-seq").textContent = String(missing.seq_nums ?? "?");
  note.title = missing.expected != null
    ? `${missing.count} of ${missing.expected} expected (${missing.source})` : String(missing.source || "");
}

// "amplitude loss · read noise 10.1 counts (estimated)": the noise model the engine fitted.
function noiseText(live) {
  const noise = live.noise;
  if (!noise || typeof noise !== "object") return "";
  const sigma = Number(noise.read_noise_counts);
  const read = Number.isFinite(sigma)
    ? ` · read noise ${Number(sigma.toPrecision(3))} counts (${noise.read_noise_source})` : "";
  const defocus = Number(live.probe_defocus_m);
  const probe = Number.isFinite(defocus) ? ` · probe defocus ${fmtLength(defocus)}` : "";
  return `${noise.loss} loss${read}${probe}`;
}

// What may make this run's result wrong, as the engine and the pipeline said it.
function showWarnings(live) {
  const list = (Array.isArray(live.warnings) ? live.warnings : []).filter((w) => typeof w === "string");
  const box = $("warnings");
  box.replaceChildren(...list.map((text) => {
    const item = document.createElement("li");
    item.textContent = text;
    return item;
  }));
  box.hidden = !list.length;
}

// Slices of a multislice object (1 for a thin one, and for runs published before slices were).
function sliceCount(live) {
  const n = Number((live || {}).slices);
  return Number.isInteger(n) && n > 1 ? n : 1;
}

// "2 slices, 600 µm apart"; "3 slices, gaps 500 µm, 700 µm" when they differ as shown.
function slicesText(live) {
  const n = sliceCount(live);
  if (n < 2) return "";
  const gaps = (Array.isArray(live.slice_gaps_m) ? live.slice_gaps_m : []).filter(Number.isFinite);
  const shown = gaps.map(fmtLength);
  if (!shown.length) return `${n} slices`;
  if (new Set(shown).size === 1) return `${n} slices, ${shown[0]} apart`;
  return `${n} slices, gaps ${shown.join(", ")}`;
}

// The object view picker (product, slice 1 … slice S) and the slices line; hidden for a thin
// object. The choice is kept across estimates of the run (showRun resets it).
function showSlices(live) {
  const n = live ? sliceCount(live) : 1;
  if (state.slice != null && state.slice >= n) state.slice = null;
  const text = live ? slicesText(live) : "";
  $("slices-note").textContent = text;
  $("slices-note").hidden = !text;
  const picker = $("slice-picker");
  picker.hidden = n < 2;
  picker.dataset.slices = String(n);
  const buttons = $("slice-buttons");
  const wanted = n < 2 ? 0 : n + 1;
  if (buttons.children.length !== wanted) {
    const views = wanted ? [null, ...Array.from({ length: n }, (_, i) => i)] : [];
    buttons.replaceChildren(...views.map(sliceButton));
  }
  for (const button of buttons.children) {
    const index = button.dataset.slice === "" ? null : Number(button.dataset.slice) - 1;
    button.setAttribute("aria-pressed", String(index === state.slice));
  }
}

function sliceButton(index) {
  const button = document.createElement("button");
  button.type = "button";
  button.dataset.slice = index == null ? "" : String(index + 1);
  button.textContent = index == null ? "product" : `slice ${index + 1}`;
  button.title = index == null ? "the product of the slices (what a thin model would see)"
    : index === 0 ? "the slice first met by the beam" : "";
  button.addEventListener("click", () => chooseSlice(index));
  return button;
}

function chooseSlice(index) {
  if (state.slice === index) return;
  state.slice = index;
  showSlices(state.live);
  requestRender();
}

function tickAge() {
  const el = $("age");
  const at = state.live && state.live.updated_at ? Date.parse(state.live.updated_at) : NaN;
  if (!Number.isFinite(at)) {
    el.textContent = "—";
    el.dataset.ageS = "";
    el.dataset.stale = "false";
    return;
  }
  const age = Math.max(0, (Date.now() - at) / 1000);
  el.dataset.ageS = age.toFixed(0);
  const running = (state.run || {}).status === "running";
  el.dataset.stale = String(running && age > STALE_S);
  el.textContent = `${fmtAge(age)} ago${running && age > STALE_S ? " (no update)" : ""}`;
}

function fmtInt(v) {
  return v == null || !Number.isFinite(Number(v)) ? "—" : Number(v).toLocaleString("en-US");
}

function fmtAge(s) {
  if (s < 90) return `${s.toFixed(0)} s`;
  if (s < 5400) return `${(s / 60).toFixed(0)} min`;
  if (s < 172800) return `${(s / 3600).toFixed(1)} h`;
  return `${(s / 86400).toFixed(0)} d`;
}

function clock(iso, withDate = false) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  const time = d.toLocaleTimeString("en-GB", { hour12: false });
  if (!withDate) return time;
  return `${d.toLocaleDateString("en-CA")} ${time.slice(0, 5)}`;
}

function fmtLength(m) {
  const a = Math.abs(m);
  if (a >= 1e-3) return `${(m * 1e3).toPrecision(3)} mm`;
  if (a >= 1e-6) return `${(m * 1e6).toPrecision(3)} µm`;
  return `${(m * 1e9).toPrecision(3)} nm`;
}

function fmtValue(v) {
  const a = Math.abs(v);
  return a !== 0 && (a < 1e-2 || a >= 1e4) ? v.toExponential(2) : v.toPrecision(3);
}

function showPlaceholder(text) {
  const el = $("placeholder");
  el.textContent = text;
  el.hidden = false;
}

function hidePlaceholder() {
  $("placeholder").hidden = true;
}

// ---------------------------------------------------------------------------------------------
// Drawing

// 1st and 99th percentiles of the finite values (of at most 65536 evenly spaced samples), only
// where `mask` (when given) is non-zero: the unscanned area does not set the colours.
function percentiles(data, mask = null) {
  const step = Math.max(1, Math.floor(data.length / 65536));
  const sample = [];
  for (let i = 0; i < data.length; i += step) {
    if (Number.isFinite(data[i]) && (!mask || mask[i])) sample.push(data[i]);
  }
  if (!sample.length) return [0, 1];
  const sorted = Float32Array.from(sample).sort();
  const at = (q) => sorted[Math.min(sorted.length - 1, Math.floor(q * (sorted.length - 1)))];
  return [at(0.01), at(0.99)];
}

// Amplitude: viridis over [p1, p99]. Phase: twilight (cyclic) over -pi..pi when the values span
// more than pi (wrapping matters, e.g. a probe); else [p1, p99] over the half of twilight that
// runs dark to light, so a weak phase object keeps its contrast and low never looks like high.
// Counts (a diffraction pattern): viridis over log10(1 + counts), from the lowest to the highest
// value (nothing clipped). `ticks`: [{t (0..1 along the bar), text}].
function colourScale(data, kind, mask = null) {
  if (kind === "counts") return countsScale(data);
  let [lo, hi] = percentiles(data, mask);
  if (kind === "phase" && hi - lo > Math.PI) {
    const ticks = [{ t: 0, text: "−π" }, { t: 0.5, text: "0" }, { t: 1, text: "π" }];
    return { lo: -Math.PI, hi: Math.PI, t0: 0, t1: 1, wrap: true, label: "−π … π rad (cyclic)", ticks };
  }
  if (!(hi > lo)) hi = lo + (Math.abs(lo) * 1e-6 || 1e-6);
  const unit = kind === "phase" ? " rad" : "";
  return {
    lo, hi, t0: kind === "phase" ? 0.5 : 0, t1: 1, wrap: false,
    label: `${fmtValue(lo)} … ${fmtValue(hi)}${unit} (1–99 %)`,
    ticks: linearTicks(lo, hi),
  };
}

// The values of `data` (counts) as log10(1 + counts) (negative counts as 0), with their scale.
function logCounts(data) {
  const out = new Float32Array(data.length);
  for (let i = 0; i < data.length; i++) {
    out[i] = Number.isFinite(data[i]) ? Math.log10(1 + Math.max(0, data[i])) : NaN;
  }
  return out;
}

function countsScale(logged) {
  let lo = Infinity;
  let hi = -Infinity;
  for (const v of logged) {
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  if (!Number.isFinite(lo)) { lo = 0; hi = 1; }
  if (!(hi > lo)) hi = lo + 1;
  const counts = (v) => 10 ** v - 1;
  // Ticks at 0, 1, 10, 100, ... counts inside the range; every other decade when there are many.
  let values = [0];
  for (let k = 0; 10 ** k <= counts(hi) * (1 + 1e-6); k++) values.push(10 ** k);
  values = values.filter((c) => Math.log10(1 + c) >= lo - 1e-9);
  while (values.length > 5) values = values.filter((_, i) => i % 2 === (values.length - 1) % 2);
  const ticks = values.map((c) => ({ t: (Math.log10(1 + c) - lo) / (hi - lo), text: fmtCount(c) }));
  return {
    lo, hi, t0: 0, t1: 1, wrap: false, ticks,
    label: `${fmtValue(Math.max(0, counts(lo)))} … ${fmtValue(counts(hi))} counts (log)`,
  };
}

function fmtCount(c) {
  return c < 1e4 ? String(Math.round(c)) : `1e${Math.round(Math.log10(c))}`;
}

// 2 to 4 round values between lo and hi (steps of 1, 2, 2.5 or 5 times a power of ten).
function linearTicks(lo, hi) {
  const span = hi - lo;
  const magnitude = 10 ** Math.floor(Math.log10(span / 3));
  let step = [1, 2, 2.5, 5, 10].map((m) => m * magnitude).find((s) => s >= span / 3);
  const between = () => {
    const out = [];
    for (let i = Math.ceil(lo / step - 1e-9); i * step <= hi + step * 1e-9; i++) out.push(i * step);
    return out;
  };
  let values = between();
  for (let tries = 0; tries < 3 && values.length < 2; tries++) {
    step /= 2;
    values = between();
  }
  let digits = Math.max(0, -Math.floor(Math.log10(step) + 1e-9));
  while (digits < 12 && Math.abs(step * 10 ** digits - Math.round(step * 10 ** digits)) > 1e-6) digits++;
  const text = (v) => {
    const a = Math.abs(step);
    if (a >= 1e-3 && a < 1e5) return (Math.abs(v) < step * 1e-6 ? 0 : v).toFixed(digits).replace("-", "−");
    const top = Math.max(Math.abs(lo), Math.abs(hi));
    const precision = Math.min(4, Math.max(1, Math.ceil(Math.log10(top / step))));
    return v.toExponential(precision).replace("-", "−");
  };
  return values.map((v) => ({ t: (v - lo) / span, text: text(v) }));
}

// Per panel (canvas id): what is drawn over or under the image and follows the page's layout
// (scale bar, colour bar ticks; the positions over the object amplitude).
const panels = {};

// `options.mask`: Uint8Array, 0 for an unscanned pixel (drawn grey, left out of the colour
// scale); `options.log`: data are counts, shown on a log scale.
function drawImage(id, data, shape, kind, pixelSizeM, note = "", options = {}) {
  const modes = shape.length === 3 ? shape[0] : 1;
  const [h, w] = shape.slice(-2);
  let plane = modes > 1 ? data.subarray(0, h * w) : data;  // mixed-state probe: strongest mode
  if (kind === "counts") plane = logCounts(plane);
  const mask = options.mask && options.mask.length === h * w ? options.mask : null;
  const canvas = $(id);
  if (canvas.width !== w || canvas.height !== h) {
    canvas.width = w;
    canvas.height = h;
  }
  const scale = colourScale(plane, kind, mask);
  const lut = LUTS[kind];
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(w, h);
  const px = image.data;
  const span = scale.hi - scale.lo;
  const tSpan = scale.t1 - scale.t0;
  let masked = 0;
  for (let i = 0; i < plane.length; i++) {
    const v = plane[i];
    const o = 4 * i;
    px[o + 3] = 255;
    if (mask && !mask[i]) {  // not scanned: flat grey
      px[o] = px[o + 1] = px[o + 2] = 58;
      masked += 1;
      continue;
    }
    if (!Number.isFinite(v)) continue;  // black
    let t = (v - scale.lo) / span;
    t = scale.wrap ? t - Math.floor(t) : Math.min(1, Math.max(0, t));
    const j = 3 * Math.min(255, Math.floor((scale.t0 + t * tSpan) * 255.999));
    px[o] = lut[j];
    px[o + 1] = lut[j + 1];
    px[o + 2] = lut[j + 2];
  }
  ctx.putImageData(image, 0, 0);
  canvas.dataset.width = String(w);
  canvas.dataset.height = String(h);
  canvas.dataset.masked = String(masked);
  drawColourBar($(`${id}-cbar`), lut, scale);
  $(`${id}-range`).textContent = scale.label;
  const extent = Number.isFinite(pixelSizeM)
    ? ` · ${fmtLength(w * pixelSizeM)} × ${fmtLength(h * pixelSizeM)} · pixel ${fmtLength(pixelSizeM)}`
    : "";
  const modeNote = modes > 1 ? ` · mode 1 of ${modes}` : "";
  const maskNote = masked ? ` · ${Math.round((100 * masked) / plane.length)} % not scanned (grey)` : "";
  $(`${id}-extent`).textContent = `${w} × ${h} px${extent}${modeNote}${maskNote}${note ? ` · ${note}` : ""}`;
  const panel = panels[id] || (panels[id] = {});
  Object.assign(panel, { w, h, ticks: scale.ticks, bar: scaleBar(w, pixelSizeM) });
  showTicks(id, scale.ticks);
  layoutPanel(id);
}

function drawColourBar(canvas, lut, scale) {
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(256, 1);
  for (let i = 0; i < 256; i++) {
    const j = 3 * Math.min(255, Math.floor((scale.t0 + (i / 255) * (scale.t1 - scale.t0)) * 255.999));
    image.data.set([lut[j], lut[j + 1], lut[j + 2], 255], 4 * i);
  }
  ctx.putImageData(image, 0, 0);
}

function showTicks(id, ticks) {
  const box = $(`${id}-ticks`);
  box.replaceChildren(...(ticks || []).flatMap(({ t, text }) => {
    const mark = document.createElement("i");
    mark.className = "mark";
    mark.style.left = `${(100 * t).toFixed(2)}%`;
    const label = document.createElement("span");
    label.textContent = text;
    label.dataset.t = String(t);
    return [mark, label];
  }));
  box.dataset.count = String((ticks || []).length);
}

// Each tick label centred under its tick, moved in to stay inside the bar, and hidden where it
// would overlap the one before (the last one is kept: the end of the scale).
function placeTicks(id) {
  const box = $(`${id}-ticks`);
  const width = box.clientWidth;
  const labels = [...box.querySelectorAll("span")];
  let right = -Infinity;
  labels.forEach((label, n) => {
    const w = label.offsetWidth;
    const left = Math.min(Math.max(0, Number(label.dataset.t) * width - w / 2), Math.max(0, width - w));
    label.style.left = `${left}px`;
    const last = n === labels.length - 1;
    const hide = left < right + 4 && !last;
    label.style.visibility = hide ? "hidden" : "";
    if (last && left < right + 4 && n > 0) labels[n - 1].style.visibility = "hidden";
    if (!hide) right = left + w;
  });
}

// A scale bar of 1, 2 or 5 times a power of ten metres, an eighth to a quarter of the width.
function scaleBar(w, pixelSizeM) {
  if (!Number.isFinite(pixelSizeM) || !(pixelSizeM > 0) || !(w > 0)) return null;
  const target = 0.25 * w * pixelSizeM;
  const magnitude = 10 ** Math.floor(Math.log10(target));
  const lengthM = [5, 2, 1].map((m) => m * magnitude).find((l) => l <= target * (1 + 1e-9));
  return { lengthM, px: lengthM / pixelSizeM, label: fmtBar(lengthM) };
}

function fmtBar(m) {
  const [unit, name] = m >= 1e-3 ? [1e-3, "mm"] : m >= 1e-6 ? [1e-6, "µm"] : [1e-9, "nm"];
  return `${Number((m / unit).toPrecision(3))} ${name}`;
}

// Where the image lies in its canvas element (object-fit: contain): scale (CSS px per image
// pixel) and offsets.
function fitted(canvas, w, h) {
  const cw = canvas.clientWidth;
  const ch = canvas.clientHeight;
  const scale = Math.min(cw / w, ch / h);
  return { scale, x: (cw - w * scale) / 2, y: (ch - h * scale) / 2, cw, ch };
}

function layoutPanel(id) {
  const panel = panels[id];
  if (!panel) return;
  placeTicks(id);
  const bar = $(`${id}-scalebar`);
  if (!bar) return;
  const fit = fitted($(id), panel.w, panel.h);
  const px = panel.bar ? panel.bar.px * fit.scale : 0;
  bar.hidden = !(px >= 8);
  if (bar.hidden) return;
  bar.style.left = `${fit.x + 8}px`;
  bar.style.bottom = `${fit.y + 6}px`;
  bar.style.width = `${px}px`;
  bar.dataset.barPx = String(panel.bar.px);
  bar.dataset.lengthM = String(panel.bar.lengthM);
  bar.dataset.cssPx = px.toFixed(2);
  bar.querySelector(".scalebar-label").textContent = panel.bar.label;
}

// The probe positions of the frames used so far, over the object amplitude (the latest ringed).
// `positions`: Float64Array of (y, x) pairs in metres; `origin`: (y, x) of pixel [0, 0]'s centre.
function drawPositions(positions, origin, pixelSizeM, shape, key = null) {
  const canvas = $("obj-amp-positions");
  const usable = positions && Array.isArray(origin) && Number.isFinite(pixelSizeM) && pixelSizeM > 0;
  state.positions = usable ? { positions, origin, pixelSizeM, shape, key } : null;
  const dpr = window.devicePixelRatio || 1;
  const base = $("obj-amp");
  const cw = base.clientWidth;
  const ch = base.clientHeight;
  canvas.width = Math.max(1, Math.round(cw * dpr));
  canvas.height = Math.max(1, Math.round(ch * dpr));
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, cw, ch);
  if (!usable) {
    canvas.dataset.points = "0";
    return;
  }
  const [h, w] = shape.slice(-2);
  const fit = fitted(base, w, h);
  const n = Math.floor(positions.length / 2);
  const at = (k) => [
    fit.x + ((positions[2 * k + 1] - origin[1]) / pixelSizeM + 0.5) * fit.scale,
    fit.y + ((positions[2 * k] - origin[0]) / pixelSizeM + 0.5) * fit.scale,
  ];
  let drawn = 0;
  ctx.fillStyle = "#ff9f1c";
  ctx.strokeStyle = "rgba(0, 0, 0, 0.7)";
  ctx.lineWidth = 1;
  const r = Math.max(1.5, Math.min(3, fit.scale * 0.6));
  for (let k = 0; k < n; k++) {
    const [x, y] = at(k);
    if (!Number.isFinite(x) || !Number.isFinite(y)) continue;
    ctx.beginPath();
    ctx.arc(x, y, r, 0, 2 * Math.PI);
    ctx.fill();
    ctx.stroke();
    drawn += 1;
  }
  if (n) {
    const [x, y] = at(n - 1);
    ctx.strokeStyle = "#ffffff";
    ctx.lineWidth = 2;
    ctx.beginPath();
    ctx.arc(x, y, r + 4, 0, 2 * Math.PI);
    ctx.stroke();
  }
  canvas.dataset.points = String(drawn);
}

// Everything placed over or under the images, again (the page was resized or laid out anew).
function layoutOverlays() {
  for (const id of Object.keys(panels)) layoutPanel(id);
  const p = state.positions;
  if (p) drawPositions(p.positions, p.origin, p.pixelSizeM, p.shape, p.key);
}

function drawDiffraction(data, shape) {
  const canvas = $("diffraction");
  const fits = data && Array.isArray(shape) && shape.length === 2 && data.length === shape[0] * shape[1];
  if (!fits) {
    clearPanel("diffraction");
    $("diffraction-extent").textContent = "no frame published";
    return;
  }
  drawImage("diffraction", data, shape, "counts", NaN, "a recent frame");
  canvas.dataset.drawn = "true";
}

function clearPanel(id) {
  const canvas = $(id);
  canvas.width = 1;
  canvas.height = 1;
  delete canvas.dataset.drawn;
  $(`${id}-range`).textContent = "";
  $(`${id}-extent`).textContent = "";
  $(`${id}-ticks`).replaceChildren();
  const bar = $(`${id}-scalebar`);
  if (bar) bar.hidden = true;
  delete panels[id];
}

function clearEstimate() {
  for (const id of ["obj-amp", "obj-phase", "probe-amp", "probe-phase", "diffraction"]) clearPanel(id);
  drawPositions(null);
  $("obj-phase-ramp").hidden = true;
  for (const id of ["iteration", "loss", "frames-used", "frames-received", "frames-planned",
    "frames-waiting", "frames-rejected", "updated-at"]) $(id).textContent = "—";
  $("estimate-note").textContent = "";
  $("timing").textContent = "";
  $("frames-bar-used").style.width = "0";
  $("frames-bar-received").style.width = "0";
  showMissing(null);
  showSlices(null);
  drawLoss({ rows: [], source: "" });
  tickAge();
}

function drawLoss({ rows, source }) {
  const canvas = $("loss-plot");
  const dpr = window.devicePixelRatio || 1;
  const cssW = canvas.clientWidth || 600;
  const cssH = canvas.clientHeight || 200;
  canvas.width = Math.round(cssW * dpr);
  canvas.height = Math.round(cssH * dpr);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, cssW, cssH);
  state.lossDrawn = { rows, source };
  const best = rows.reduce((m, [, l]) => (Number.isFinite(l) && l < m ? l : m), Infinity);
  $("loss-best").textContent = Number.isFinite(best) ? `lowest ${best.toExponential(3)}` : "";
  $("loss-note").textContent = source;
  const points = rows.filter(([i, l]) => Number.isFinite(i) && Number.isFinite(l) && l > 0);
  canvas.dataset.points = String(points.length);
  ctx.font = "14px system-ui, sans-serif";
  ctx.fillStyle = "#8b9bb0";
  if (!points.length) {
    ctx.fillText("no loss values yet", 12, cssH / 2);
    return;
  }
  const pad = { l: 72, r: 16, t: 10, b: 26 };
  const x0 = points[0][0];
  const x1 = Math.max(points[points.length - 1][0], x0 + 1);
  let y0 = Math.log10(Math.min(...points.map((p) => p[1])));
  let y1 = Math.log10(Math.max(...points.map((p) => p[1])));
  if (y1 - y0 < 0.1) { y0 -= 0.05; y1 += 0.05; }
  const X = (i) => pad.l + ((i - x0) / (x1 - x0)) * (cssW - pad.l - pad.r);
  const Y = (l) => pad.t + ((y1 - Math.log10(l)) / (y1 - y0)) * (cssH - pad.t - pad.b);
  // Grid at the decades inside the range, else at the two ends.
  ctx.strokeStyle = "#263241";
  ctx.lineWidth = 1;
  let ticks = [];
  for (let e = Math.ceil(y0); e <= Math.floor(y1); e++) ticks.push(10 ** e);
  if (ticks.length < 2) ticks = [10 ** y0, 10 ** y1];
  for (const t of ticks) {
    ctx.beginPath();
    ctx.moveTo(pad.l, Y(t));
    ctx.lineTo(cssW - pad.r, Y(t));
    ctx.stroke();
    ctx.fillText(t.toExponential(1), 6, Y(t) + 5);
  }
  ctx.fillText(`iteration ${fmtInt(x0)}`, pad.l, cssH - 6);
  const right = `${fmtInt(points[points.length - 1][0])}`;
  ctx.fillText(right, cssW - pad.r - ctx.measureText(right).width, cssH - 6);
  ctx.strokeStyle = "#f0c75e";
  ctx.lineWidth = 2;
  ctx.beginPath();
  points.forEach(([i, l], n) => (n ? ctx.lineTo(X(i), Y(l)) : ctx.moveTo(X(i), Y(l))));
  ctx.stroke();
  const [li, ll] = points[points.length - 1];
  ctx.fillStyle = "#f0c75e";
  ctx.beginPath();
  ctx.arc(X(li), Y(ll), 4, 0, 2 * Math.PI);
  ctx.fill();
}

// ---------------------------------------------------------------------------------------------
// Start

function start() {
  $("follow").addEventListener("click", () => setFollow(!state.follow));
  state.listStream = new Subscription(ROOT, onRunsEvent, () => refreshRuns().catch(console.warn));
  refreshRuns().catch(console.warn);
  let ticks = 0;
  setInterval(() => {
    ticks += 1;
    tickAge();
    if (state.shown && !(state.runStream && state.runStream.live)) pollShown();
    const listLive = state.listStream && state.listStream.live;
    if ((!listLive && ticks % 3 === 0) || ticks % 30 === 0) refreshRuns().catch(console.warn);
  }, POLL_MS);
  window.addEventListener("resize", () => drawLoss(state.lossDrawn));
  // Scale bars, ticks and positions follow the size the images are shown at.
  const observer = new ResizeObserver(() => layoutOverlays());
  for (const frame of document.querySelectorAll(".frame, .cbar-box")) observer.observe(frame);
  clearEstimate();
}

start();
