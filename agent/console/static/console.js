// The commissioning console: camera health, the live view with motion, objects and masks drawn
// over it, and a polygon editor for the camera's privacy, motion and detection masks.
// Plain ES2020, no framework, no build step; the HTTP API it uses is described in docs/console.md.
"use strict";

const KINDS = ["privacy", "motion", "detection"];
const MAX_POINTS = 64; // the config accepts 3 to 64 corners per polygon
const POLL_MS = { overlay: 500, cameras: 2000, events: 5000 };
const LIVE_RENEW_MS = 25 * 60 * 1000; // the gateway ends a live view after 30 min; the page renews it
const NEAR_PX = { mouse: 10, pen: 12, touch: 22 }; // how close a pointer must come to a corner
const STYLE = {
  privacy: { fill: "rgba(120, 0, 0, 0.72)", stroke: "#780000" },
  motion: { fill: "rgba(47, 125, 255, 0.10)", stroke: "#2f7dff" },
  detection: { fill: "rgba(34, 177, 76, 0.10)", stroke: "#22b14c" },
};

const $ = (sel) => document.querySelector(sel);

const state = {
  csrf: "",
  cameras: [], // the last /api/cameras answer
  camera: null, // the selected camera's id
  masks: copyMasks(null), // the editor's working copy of the selected camera's masks
  dirty: false, // the working copy has changes the gateway does not have
  kind: "privacy", // the kind of mask being edited
  selected: -1, // index of the selected polygon in masks[kind], or -1
  draft: null, // the polygon being drawn: [[x, y], ...], or null
  drag: null, // {pointerId, index} while a corner of the selected polygon is dragged
  overlay: null, // the last /overlay answer
  eventsKey: "", // what the event list shows, so an unchanged list is not redrawn
};

function copyMasks(masks) {
  const out = {};
  for (const kind of KINDS) out[kind] = ((masks && masks[kind]) || []).map((p) => p.map(([x, y]) => [x, y]));
  return out;
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = text;
  return e;
}

function fmtTime(value) {
  if (value === null || value === undefined) return "";
  const d = new Date(typeof value === "number" ? value * 1000 : value);
  if (Number.isNaN(d.getTime())) return String(value);
  return new Date().toDateString() === d.toDateString() ? d.toLocaleTimeString() : d.toLocaleString();
}

// ---- the server ------------------------------------------------------------------------------

class LoginNeeded extends Error {}

// A JSON request, with the CSRF token on a POST; a 401 anywhere sends the browser to the login page.
async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  const init = { method, headers, credentials: "same-origin" };
  if (method !== "GET") headers["X-CSRF-Token"] = state.csrf;
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  if (res.status === 401) {
    window.location.assign("/login");
    throw new LoginNeeded("the session has ended");
  }
  const data = await res.json().catch(() => null); // not JSON: the status says enough
  return { status: res.status, data };
}

const cameraPath = (id, tail) => `/api/cameras/${encodeURIComponent(id)}/${tail}`;

// ---- polling: a poller waits for its request before the next one; all stop in a hidden tab ----

const pollers = [];

function poll(ms, fn) {
  const p = { ms, fn, timer: null, running: false };
  pollers.push(p);
  return p;
}

async function tick(p) {
  clearTimeout(p.timer);
  p.timer = null;
  if (document.hidden || p.running) return;
  p.running = true;
  try {
    await p.fn();
  } catch (err) {
    if (!(err instanceof LoginNeeded)) console.warn("poll failed", err);
  } finally {
    p.running = false;
  }
  if (!document.hidden && p.timer === null) p.timer = setTimeout(() => tick(p), p.ms);
}

function startPolling() {
  for (const p of pollers) if (p.timer === null) tick(p);
}

function stopPolling() {
  for (const p of pollers) {
    clearTimeout(p.timer);
    p.timer = null;
  }
}

// ---- camera cards ----------------------------------------------------------------------------

function cardFor(cam) {
  const card = el("button", "camera");
  card.type = "button";
  card.dataset.camera = cam.id;
  card.append(...["cam-id", "badge", "cam-name", "fps", "last-event", "cam-error"].map((cls) => el("span", cls)));
  card.addEventListener("click", () => selectCamera(cam.id));
  return card;
}

function fillCard(card, cam) {
  const set = (cls, text) => (card.querySelector(`.${cls}`).textContent = text);
  const last = cam.last_event;
  set("cam-id", cam.id);
  set("badge", cam.state);
  card.querySelector(".badge").className = `badge state-${String(cam.state).replace(/[^a-z_-]/gi, "")}`;
  set("cam-name", cam.name || "");
  set("fps", typeof cam.fps === "number" ? `${cam.fps.toFixed(1)} fps` : "");
  set("last-event", last ? `last event: ${last.kind} ${fmtTime(last.started_at)}` : "no events yet");
  set("cam-error", cam.error || "");
  card.classList.toggle("selected", cam.id === state.camera);
  card.setAttribute("aria-pressed", String(cam.id === state.camera));
}

function renderCameras() {
  const list = $("#camera-list");
  if (state.cameras.length === 0) {
    list.replaceChildren(el("p", "empty", "This gateway has no cameras."));
    return;
  }
  const cards = new Map([...list.querySelectorAll(".camera")].map((c) => [c.dataset.camera, c]));
  const wanted = state.cameras.map((cam) => {
    const card = cards.get(cam.id) || cardFor(cam);
    fillCard(card, cam);
    return card;
  });
  // Keep the cards in place when only their contents changed (no flicker, focus kept).
  if (wanted.length !== list.children.length || wanted.some((c, i) => list.children[i] !== c)) {
    list.replaceChildren(...wanted);
  }
}

async function loadCameras() {
  const { status, data } = await api("GET", "/api/cameras");
  if (status !== 200 || !data) return;
  const before = currentCamera();
  state.cameras = data.cameras || [];
  renderCameras();
  const now = currentCamera();
  if (before && now && before.state !== "ok" && now.state === "ok") startLive(); // back from an outage
  if (state.camera === null && state.cameras.length > 0) {
    const wanted = decodeURIComponent(window.location.hash.replace(/^#camera=/, ""));
    selectCamera((state.cameras.find((c) => c.id === wanted) || state.cameras[0]).id);
  }
}

const currentCamera = () => state.cameras.find((c) => c.id === state.camera) || null;

// ---- the selected camera: live view, overlay, events ------------------------------------------

function selectCamera(id) {
  if (id === state.camera) return;
  if (state.dirty && !window.confirm("Your mask changes are not saved. Switch camera and lose them?")) return;
  state.camera = id;
  history.replaceState(null, "", `#camera=${encodeURIComponent(id)}`);
  $("#viewer-camera").textContent = id;
  state.overlay = null;
  state.eventsKey = "";
  $("#events").replaceChildren();
  resetMasks();
  showResult("", "", [], "");
  startLive();
  renderCameras();
  tick(overlayPoller);
  tick(eventsPoller);
}

function resetMasks() {
  const cam = currentCamera();
  state.masks = copyMasks(cam ? cam.masks : null);
  state.dirty = false;
  state.selected = -1;
  state.draft = null;
  state.drag = null;
  refresh();
}

let liveRetry = null;

function startLive() {
  clearTimeout(liveRetry);
  const cam = currentCamera();
  if (!cam) return;
  const img = $("#live");
  // Width and height attributes give the picture (and so the canvas) its shape before a frame.
  if (cam.width && cam.height) {
    img.width = cam.width;
    img.height = cam.height;
  }
  img.src = `${cameraPath(cam.id, "live.mjpg")}?t=${Date.now()}`;
  liveRetry = setTimeout(() => document.hidden || startLive(), LIVE_RENEW_MS);
}

function onLiveError() {
  // The stream breaks when the agent restarts or the session ends: try again shortly.
  clearTimeout(liveRetry);
  liveRetry = setTimeout(() => document.hidden || startLive(), 2000);
}

async function loadOverlay() {
  if (state.camera === null) return;
  const id = state.camera;
  const { status, data } = await api("GET", cameraPath(id, "overlay"));
  if (id !== state.camera) return;
  state.overlay = status === 200 ? data : null;
  draw();
}

function eventItem(e) {
  const li = el("li", "event");
  li.dataset.event = e.event_id;
  const snapshot = { src: e.snapshot, alt: `snapshot of ${e.event_id}`, loading: "lazy" };
  li.append(e.snapshot ? Object.assign(el("img"), snapshot) : el("span", "empty", "no snapshot"));
  const labels = (e.labels || []).join(", ");
  const when = e.ended_at ? `${fmtTime(e.started_at)} to ${fmtTime(e.ended_at)}` : fmtTime(e.started_at);
  const text = el("div");
  text.append(el("div", "what", `${e.kind}${labels ? ` (${labels})` : ""}: ${e.phase}`), el("div", "when", when));
  li.append(text);
  return li;
}

async function loadEvents() {
  if (state.camera === null) return;
  const id = state.camera;
  const { status, data } = await api("GET", cameraPath(id, "events"));
  if (status !== 200 || !data || id !== state.camera) return;
  const events = data.events || [];
  const key = JSON.stringify(events.map((e) => [e.event_id, e.phase, e.ended_at, e.snapshot]));
  if (key === state.eventsKey) return; // unchanged: keep the thumbnails as they are
  state.eventsKey = key;
  const items = events.length ? events.map(eventItem) : [el("li", "empty", "No events yet.")];
  $("#events").replaceChildren(...items);
}

// ---- drawing on the overlay canvas -------------------------------------------------------------

const canvas = () => $("#overlay");
let drawQueued = false;

function draw() {
  if (drawQueued) return;
  drawQueued = true;
  requestAnimationFrame(() => {
    drawQueued = false;
    paint();
  });
}

function path(ctx, pts, w, h, close) {
  ctx.beginPath();
  pts.forEach(([x, y], i) => (i === 0 ? ctx.moveTo(x * w, y * h) : ctx.lineTo(x * w, y * h)));
  if (close) ctx.closePath();
}

function handle(ctx, x, y, color) {
  ctx.beginPath();
  ctx.arc(x, y, 6, 0, Math.PI * 2);
  Object.assign(ctx, { fillStyle: color, lineWidth: 2, strokeStyle: "#000" });
  ctx.fill();
  ctx.stroke();
}

function paint() {
  // The canvas's pixel buffer follows its size on screen, which follows the picture's.
  const c = canvas();
  const rect = c.getBoundingClientRect();
  const dpr = window.devicePixelRatio || 1;
  const [w, h] = [rect.width, rect.height];
  const [bw, bh] = [Math.max(1, Math.round(w * dpr)), Math.max(1, Math.round(h * dpr))];
  if (c.width !== bw || c.height !== bh) [c.width, c.height] = [bw, bh];
  const ctx = c.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  // The other kinds' masks dashed and thin, the kind being edited on top.
  for (const kind of [...KINDS.filter((k) => k !== state.kind), state.kind]) {
    const editing = kind === state.kind;
    state.masks[kind].forEach((poly, i) => {
      path(ctx, poly, w, h, true);
      const { fill, stroke } = STYLE[kind];
      Object.assign(ctx, { fillStyle: fill, strokeStyle: stroke, lineWidth: editing ? 2.5 : 1.5 });
      ctx.fill();
      ctx.setLineDash(editing ? [] : [6, 4]);
      ctx.stroke();
      if (editing && i === state.selected) {
        Object.assign(ctx, { lineWidth: 3, strokeStyle: "#fff" });
        ctx.setLineDash([4, 4]);
        ctx.stroke();
        ctx.setLineDash([]);
        for (const [x, y] of poly) handle(ctx, x * w, y * h, "#fff");
      }
    });
  }
  ctx.setLineDash([]);
  paintOverlay(ctx, w, h);
  if (state.draft) {
    Object.assign(ctx, { lineWidth: 2.5, strokeStyle: "#ffd400" });
    ctx.setLineDash([8, 4]);
    path(ctx, state.draft, w, h, false);
    ctx.stroke();
    ctx.setLineDash([]);
    state.draft.forEach(([x, y], i) => handle(ctx, x * w, y * h, i === 0 ? "#ff9d00" : "#ffd400"));
  }
}

function paintOverlay(ctx, w, h) {
  const o = state.overlay;
  if (!o) return;
  Object.assign(ctx, { lineWidth: 2, strokeStyle: "#ff9d00" });
  ctx.setLineDash([5, 3]);
  for (const [x, y, bw, bh] of o.motion || []) ctx.strokeRect(x * w, y * h, bw * w, bh * h);
  ctx.setLineDash([]);
  Object.assign(ctx, { font: "12px system-ui, sans-serif", textBaseline: "bottom" });
  for (const obj of o.objects || []) {
    const [x, y, bw, bh] = obj.box;
    ctx.strokeStyle = obj.stationary ? "#bfbfbf" : "#ffd400";
    ctx.strokeRect(x * w, y * h, bw * w, bh * h);
    const score = typeof obj.score === "number" ? ` ${Math.round(obj.score * 100)}%` : "";
    const label = `${obj.label}${obj.track ? ` #${obj.track}` : ""}${score}`;
    const [tw, top] = [ctx.measureText(label).width + 6, Math.max(14, y * h)];
    const left = Math.max(0, Math.min(x * w, w - tw)); // keep the label inside the picture
    ctx.fillStyle = "rgba(0, 0, 0, 0.65)";
    ctx.fillRect(left, top - 14, tw, 14);
    ctx.fillStyle = "#fff";
    ctx.fillText(label, left + 3, top);
  }
}

// ---- the mask editor ---------------------------------------------------------------------------

const round4 = (v) => Math.round(Math.min(1, Math.max(0, v)) * 10000) / 10000;

// Where the pointer is: [x, y] in 0..1 of the picture, and in CSS pixels for hit tests.
function pointAt(ev) {
  const rect = canvas().getBoundingClientRect();
  const [px, py] = [ev.clientX - rect.left, ev.clientY - rect.top];
  return { norm: [round4(px / rect.width), round4(py / rect.height)], px, py, rect };
}

function near(pt, [x, y], ev) {
  const limit = NEAR_PX[ev.pointerType] || NEAR_PX.mouse;
  return Math.hypot(x * pt.rect.width - pt.px, y * pt.rect.height - pt.py) <= limit;
}

function inside([x, y], poly) {
  let hit = false;
  for (let i = 0, j = poly.length - 1; i < poly.length; j = i++) {
    const [[xi, yi], [xj, yj]] = [poly[i], poly[j]];
    if (yi > y !== yj > y && x < ((xj - xi) * (y - yi)) / (yj - yi) + xi) hit = !hit;
  }
  return hit;
}

function onPointerDown(ev) {
  if (state.camera === null || ev.button > 0) return;
  ev.preventDefault();
  const pt = pointAt(ev);
  if (state.draft) {
    if (state.draft.length >= 3 && near(pt, state.draft[0], ev)) return finishPolygon();
    if (state.draft.length >= MAX_POINTS) return hint(`A polygon has at most ${MAX_POINTS} corners: finish it.`);
    state.draft.push(pt.norm);
    return refresh();
  }
  const polys = state.masks[state.kind];
  const corner = state.selected >= 0 ? polys[state.selected].findIndex((p) => near(pt, p, ev)) : -1;
  if (corner >= 0) {
    state.drag = { pointerId: ev.pointerId, index: corner };
    canvas().setPointerCapture(ev.pointerId);
    return;
  }
  // Select the topmost polygon of the kind being edited under the pointer, or none.
  state.selected = -1;
  for (let i = polys.length - 1; i >= 0 && state.selected < 0; i--) {
    if (inside(pt.norm, polys[i])) state.selected = i;
  }
  refresh();
}

function onPointerMove(ev) {
  if (!state.drag || ev.pointerId !== state.drag.pointerId) return;
  const poly = state.masks[state.kind][state.selected];
  if (!poly) return;
  poly[state.drag.index] = pointAt(ev).norm;
  state.dirty = true;
  draw();
}

function onPointerUp(ev) {
  if (!state.drag || ev.pointerId !== state.drag.pointerId) return;
  if (canvas().hasPointerCapture(ev.pointerId)) canvas().releasePointerCapture(ev.pointerId);
  state.drag = null;
  updateTools();
}

function refresh() {
  updateTools();
  draw();
}

function newPolygon() {
  state.draft = [];
  state.selected = -1;
  refresh();
}

function finishPolygon() {
  if (!state.draft) return;
  if (state.draft.length < 3) {
    hint("A polygon needs at least 3 corners.");
    return;
  }
  state.masks[state.kind].push(state.draft);
  state.selected = state.masks[state.kind].length - 1;
  state.draft = null;
  state.dirty = true;
  refresh();
}

function undoPoint() {
  if (state.draft) state.draft.pop();
  refresh();
}

function deletePolygon() {
  if (state.selected < 0) return;
  state.masks[state.kind].splice(state.selected, 1);
  state.selected = -1;
  state.dirty = true;
  refresh();
}

function setKind(kind) {
  state.kind = kind;
  state.selected = -1;
  refresh();
}

const hint = (text) => ($("#hint").textContent = text);

function updateTools() {
  const drawing = state.draft !== null;
  $("#stage").classList.toggle("drawing", drawing);
  $("#new-polygon").classList.toggle("active", drawing);
  $("#undo-point").disabled = !drawing || state.draft.length === 0;
  $("#finish-polygon").disabled = !drawing;
  $("#delete-polygon").disabled = state.selected < 0;
  for (const id of ["#new-polygon", "#reset", "#check", "#save", "#mask-kind"]) {
    $(id).disabled = state.camera === null;
  }
  const n = state.masks[state.kind].length;
  if (drawing && state.draft.length < 3) {
    hint(`Click or tap each corner of the new ${state.kind} mask (at least ${3 - state.draft.length} more).`);
  } else if (drawing) {
    hint(`${state.draft.length} corners: Finish, or click the first corner again to close the polygon.`);
  } else if (state.selected >= 0) {
    hint(`${state.kind} polygon ${state.selected + 1} of ${n} selected: drag a corner to move it.`);
  } else {
    hint(`${n} ${state.kind} polygon${n === 1 ? "" : "s"}${state.dirty ? " (not saved)" : ""}.`);
  }
}

// ---- check and save ----------------------------------------------------------------------------

function showResult(text, tone, problems, toml) {
  $("#status").textContent = text;
  $("#status").className = `status ${tone}`;
  $("#problems").replaceChildren(...(problems || []).map((p) => el("li", "", p)));
  if (toml !== null) $("#toml").textContent = toml ?? "";
}

const draftNote = () => (state.draft ? " (the polygon being drawn is not included: finish it first)" : "");

async function check() {
  if (state.camera === null) return;
  const { status, data } = await api("POST", cameraPath(state.camera, "masks/check"), copyMasks(state.masks));
  if (status !== 200 || !data) return showFailure(status, data);
  const verdict = data.ok ? "The masks pass check-config." : "check-config would refuse these masks.";
  const loosens = data.loosens_privacy
    ? " These privacy masks expose part of the picture that is hidden now; saving asks to confirm."
    : "";
  showResult(verdict + loosens + draftNote(), data.ok ? "ok" : "bad", data.problems, data.toml);
}

async function save() {
  if (state.camera === null) return;
  const id = state.camera;
  const body = { ...copyMasks(state.masks), confirm_loosen: false };
  showResult("Saving…", "", [], null);
  let { status, data } = await api("POST", cameraPath(id, "masks"), body);
  if (status === 409 && data && data.error === "loosens_privacy") {
    const sure = window.confirm(
      "These privacy masks would expose part of the picture that is hidden now (a privacy mask " +
        "removed or made smaller). Save anyway? The change is audited as loosening privacy.",
    );
    if (!sure) return showResult("Not saved: the privacy masks stay as they are.", "bad", [], null);
    body.confirm_loosen = true;
    ({ status, data } = await api("POST", cameraPath(id, "masks"), body));
  }
  if (status !== 200 || !data || !data.saved) return showFailure(status, data);
  const backup = data.backup ? ` Backup: ${data.backup}.` : "";
  const loosened = data.loosens_privacy ? " Privacy masks loosened (audited)." : "";
  showResult(`Saved: the camera uses the new masks.${backup}${loosened}${draftNote()}`, "ok", [], data.toml);
  if (id !== state.camera) return;
  state.dirty = false;
  await loadCameras(); // the gateway's view of the masks is now the saved one
  if (!state.dirty && !state.draft) resetMasks();
  startLive();
}

function showFailure(status, data) {
  if (data && data.error === "invalid") {
    showResult("Not saved: check-config refuses these masks.", "bad", data.problems, null);
  } else if (data && data.message) {
    showResult(`Not saved: ${data.message}`, "bad", [], null);
  } else {
    const code = data && data.error ? ` (${data.error})` : "";
    showResult(`Refused: the gateway answered ${status}${code}.`, "bad", [], null);
  }
}

// ---- start -------------------------------------------------------------------------------------

const overlayPoller = poll(POLL_MS.overlay, loadOverlay);
poll(POLL_MS.cameras, loadCameras);
const eventsPoller = poll(POLL_MS.events, loadEvents);

// A button's handler that reports a failed request instead of leaving an unhandled rejection.
const failed = (what) => (err) =>
  err instanceof LoginNeeded || showResult(`${what}: ${err.message}`, "bad", [], null);
const guarded = (fn) => () => fn().catch(failed("Request failed"));

async function reset() {
  await loadCameras();
  resetMasks();
  showResult("Masks reloaded from the gateway.", "", [], "");
}

async function start() {
  const { status, data } = await api("GET", "/api/session");
  if (status !== 200 || !data) {
    return showResult(`The gateway answered ${status} for the session.`, "bad", [], null);
  }
  state.csrf = data.csrf;
  $("#gateway").textContent = data.gateway || "";
  $("#user").textContent = data.user || "";
  $("#logout-csrf").value = data.csrf;

  // Pointer events: one code path for a mouse, a pen and a finger.
  const c = canvas();
  const pointer = { down: onPointerDown, move: onPointerMove, up: onPointerUp, cancel: onPointerUp };
  for (const [type, fn] of Object.entries(pointer)) c.addEventListener(`pointer${type}`, fn);
  new ResizeObserver(draw).observe(c);
  $("#live").addEventListener("error", onLiveError);
  $("#mask-kind").addEventListener("change", (ev) => setKind(ev.target.value));
  const buttons = { "new-polygon": newPolygon, "finish-polygon": finishPolygon, "undo-point": undoPoint,
    "delete-polygon": deletePolygon, reset: guarded(reset), check: guarded(check), save: guarded(save) };
  for (const [id, fn] of Object.entries(buttons)) $(`#${id}`).addEventListener("click", fn);
  state.kind = $("#mask-kind").value;
  updateTools();
  document.addEventListener("visibilitychange", () => {
    if (document.hidden) {
      stopPolling();
      $("#live").removeAttribute("src"); // no stream to a tab nobody looks at
    } else {
      startLive();
      startPolling();
    }
  });
  startPolling();
}

document.addEventListener("DOMContentLoaded", () => start().catch(failed("The console failed to start")));
