// The job view: live progress (Server-Sent Events), the files with their state, the gallery of results.

import { cancelJob, eventsUrl, getJob, listAllFiles } from "./api.js";
import { $, badge, formatBytes, formatDuration, h, insertByIndex, notify, notifyError } from "./dom.js";

const TERMINAL = new Set(["Succeeded", "PartiallyFailed", "Failed"]);
// A file only moves forward: a page of GET /files read before a live `file` event must not undo it. A finished
// file is redrawn only if its outcome changes (the same file comes again after a reconnect or a reload).
const STATE_RANK = { waiting: 0, active: 1, succeeded: 2, failed: 2 };
const sameOutcome = (a, b) => STATE_RANK[a.state] === 2 && a.state === b.state;
const MAX_RETRY_MS = 30000;
const ACTIVE_POLL_MS = 3000;
// A job may have 100,000 files: the page lists the first ones (and failures after them, which matter most)
// rather than make the browser hold them all.
const MAX_LISTED = 1000;

let view = null; // the job on screen; async results for another (older) view are dropped
let navigate = () => {};

export function setupJob(go) {
  navigate = go;
  $("cancel-job").addEventListener("click", () => view && onCancel(view));
}

export async function mountJob(name) {
  unmountJob();
  const current = {
    name, files: new Map(), rows: new Map(), tiles: new Map(), source: null, retry: null, attempts: 0,
    terminal: false, phase: null, filesLoaded: false, reloadedAtEnd: false, controller: new AbortController(),
  };
  view = current;
  resetScreen(name);
  try {
    applySummary(current, await getJob(name, { signal: current.controller.signal }));
  } catch (error) {
    if (view === current) showLoadError(current, error);
    return;
  }
  if (view !== current) return;
  if (!current.terminal) {
    connect(current);
    pollActive(current);
  }
  loadFiles(current);
}

export function unmountJob() {
  if (!view) return;
  closeStream(view);
  clearTimeout(view.retry);
  clearInterval(view.activeTimer);
  view.controller.abort();
  view = null;
}

function resetScreen(name) {
  $("job-name").textContent = name;
  badge("Pending", $("job-phase")).textContent = "Loading…";
  $("cancel-job").hidden = true;
  $("job-connection").textContent = "";
  $("job-announce").textContent = "";
  $("job-files").replaceChildren();
  $("gallery").replaceChildren();
  $("gallery-empty").hidden = false;
  $("files-note").hidden = true;
  setProgress(0);
  for (const id of ["succeeded", "failed", "reused", "total"]) $(`count-${id}`).textContent = "0";
  $("count-rate").textContent = "–";
  $("count-eta").textContent = "–";
}

function showLoadError(current, error) {
  if (error.name === "AbortError") return;
  badge("Failed", $("job-phase")).textContent = error.status === 404 ? "Not found" : "Unavailable";
  notifyError(error, error.status === 404 ? `Job ${current.name} does not exist (any more)` : "Cannot load the job");
}

// ---- live updates ----

function connect(current) {
  const source = new EventSource(eventsUrl(current.name));
  current.source = source;
  source.addEventListener("open", () => {
    current.attempts = 0;
    setConnection("Live updates on.");
  });
  source.addEventListener("progress", (event) => withData(event, (summary) => applySummary(current, summary)));
  source.addEventListener("file", (event) => withData(event, (file) => applyFile(current, file)));
  source.addEventListener("end", (event) => withData(event, (summary) => onEnd(current, summary)));
  // `error` is both EventSource's own connection event and the server's event when reading the job failed
  // (a MessageEvent with data; an `end` follows it).
  source.addEventListener("error", (event) => {
    if (event.data === undefined) onStreamError(current, source);
    else withData(event, (problem) => setConnection(`Live updates stopped: ${problem.message || "error"}.`));
  });
}

/** The server ends the stream at a terminal phase, when the job was deleted, or when it failed to read it. */
function onEnd(current, summary) {
  if (view !== current) return;
  closeStream(current); // the server closes the stream now; without this EventSource would reconnect
  if (summary.phase === "Deleted") {
    showGone(current);
    return;
  }
  applySummary(current, summary);
  if (!current.terminal) scheduleReconnect(current);
}

function showGone(current) {
  current.terminal = true;
  badge("Deleted", $("job-phase"));
  $("cancel-job").hidden = true;
  setConnection("");
  $("job-announce").textContent = `Job ${current.name} was deleted.`;
  notify("info", `Job ${current.name} was cancelled or deleted.`);
}

function withData(event, apply) {
  let data;
  try {
    data = JSON.parse(event.data);
  } catch {
    return; // a malformed event is skipped; the next `progress` event carries the whole summary again
  }
  apply(data);
}

function closeStream(current) {
  if (current.source) current.source.close();
  current.source = null;
}

/**
 * EventSource reconnects by itself after a dropped connection (resuming with Last-Event-ID). It gives up
 * for good on an HTTP error (readyState CLOSED): then we check the job still exists and open a new stream
 * later, reloading the file list since events may have been missed meanwhile.
 */
function onStreamError(current, source) {
  if (view !== current || current.source !== source) return;
  if (source.readyState === EventSource.CONNECTING) {
    setConnection("Connection lost, reconnecting…");
    return;
  }
  closeStream(current);
  scheduleReconnect(current);
}

function scheduleReconnect(current) {
  const delay = Math.min(MAX_RETRY_MS, 1000 * 2 ** current.attempts);
  current.attempts += 1;
  setConnection(`Live updates interrupted; retrying in ${Math.round(delay / 1000)} s.`);
  clearTimeout(current.retry);
  current.retry = setTimeout(() => reconnect(current), delay);
}

async function reconnect(current) {
  try {
    applySummary(current, await getJob(current.name, { signal: current.controller.signal }));
  } catch (error) {
    if (view !== current || error.name === "AbortError") return;
    if (error.status === 404) {
      showGone(current);
      return;
    }
  }
  if (view !== current || current.terminal) return;
  connect(current);
  loadFiles(current);
}

function setConnection(text) {
  $("job-connection").textContent = text;
}

// ---- summary ----

function applySummary(current, summary) {
  if (view !== current) return;
  const progress = summary.progress || {};
  const total = progress.total || 0;
  const done = progress.done ?? (progress.succeeded || 0) + (progress.failed || 0);
  setProgress(total ? Math.floor((100 * done) / total) : 0);
  $("count-succeeded").textContent = String(progress.succeeded || 0);
  $("count-failed").textContent = String(progress.failed || 0);
  $("count-reused").textContent = String(progress.reused || 0);
  $("count-total").textContent = String(total);
  $("count-rate").textContent = summary.imagesPerSecond == null ? "–" : summary.imagesPerSecond.toFixed(1);
  $("count-eta").textContent = eta(summary);
  setPhase(current, summary, done);
  reloadIfGrown(current, total);
  $("files-note").hidden = total <= MAX_LISTED;
  $("files-note").textContent = `This job has ${total} files: the list shows the first ${MAX_LISTED}, `
    + "and those after them that fail.";
}

function setPhase(current, summary, done) {
  const phase = summary.phase || "Pending";
  const label = phase === "Queued" && summary.queuePosition ? `Queued (#${summary.queuePosition})` : null;
  badge(phase, $("job-phase"));
  if (label) $("job-phase").textContent = label;
  current.terminal = TERMINAL.has(phase);
  $("cancel-job").hidden = current.terminal;
  if (phase !== current.phase) {
    // Announced once per change; the progress bar itself is not announced on every tick.
    $("job-announce").textContent = `Job ${current.name}: ${$("job-phase").textContent}`;
    current.phase = phase;
  }
  document.title = `${current.name} · ${$("job-percent").textContent} · kresize`;
  if (current.terminal) finish(current, done);
}

function setProgress(percent) {
  const bar = $("job-progress");
  bar.value = percent;
  bar.setAttribute("aria-valuenow", String(percent));
  $("job-percent").textContent = `${percent}%`;
}

function eta(summary) {
  if (TERMINAL.has(summary.phase)) return "done";
  if (!summary.estimatedCompletionTime) return "–";
  const seconds = (Date.parse(summary.estimatedCompletionTime) - Date.now()) / 1000;
  return formatDuration(Math.max(0, seconds));
}

/** At the end, make sure every finished file is on screen (events may have been missed while offline). */
function finish(current, done) {
  closeStream(current);
  setConnection("");
  const finished = [...current.files.values()].filter((f) => STATE_RANK[f.state] === 2).length;
  if (current.filesLoaded && finished < done && !current.reloadedAtEnd) {
    current.reloadedAtEnd = true;
    loadFiles(current);
  }
}

// ---- files and gallery ----

async function loadFiles(current) {
  if (current.loadingFiles) {
    current.loadAgain = true; // pages already read may be older than what asked for this
    return;
  }
  current.loadingFiles = true;
  try {
    await listAllFiles(current.name, (items, total) => {
      current.filesTotal = total;
      items.forEach((file) => applyFile(current, file));
      return current.files.size < MAX_LISTED;
    }, { signal: current.controller.signal });
    current.filesLoaded = true;
  } catch (error) {
    if (view === current && error.name !== "AbortError" && error.status !== 404) {
      notifyError(error, "Cannot load the file list");
    }
  } finally {
    current.loadingFiles = false;
    if (current.loadAgain && view === current) {
      current.loadAgain = false;
      loadFiles(current);
    }
  }
}

/**
 * The file list is read once, but a job lists its files only once it is planned (before that only the files
 * refused at upload): read it again when the summary counts more files than the list had, once per count.
 */
function reloadIfGrown(current, total) {
  if (!current.filesLoaded || total <= (current.filesTotal ?? 0) || current.reloadedFor === total) return;
  current.reloadedFor = total;
  loadFiles(current);
}

/**
 * Live events only report files as they finish; which ones are being resized now (`active`) comes from
 * GET /files?state=active, polled while the job runs and the page is visible (a few files, a small answer).
 */
function pollActive(current) {
  clearInterval(current.activeTimer);
  current.activeTimer = setInterval(() => {
    if (view !== current || current.terminal) {
      clearInterval(current.activeTimer);
      return;
    }
    if (current.phase !== "Running" || document.visibilityState !== "visible" || current.pollingActive) return;
    current.pollingActive = true;
    listAllFiles(current.name, (items) => items.forEach((file) => applyFile(current, file)),
      { signal: current.controller.signal, state: "active" })
      .catch(() => {}) // the next poll tries again; the live stream reports real problems
      .finally(() => { current.pollingActive = false; });
  }, ACTIVE_POLL_MS);
}

function applyFile(current, file) {
  if (view !== current || typeof file.index !== "number") return;
  const known = current.files.get(file.index);
  if (!known && current.files.size >= (file.state === "failed" ? 2 * MAX_LISTED : MAX_LISTED)) return;
  if (known && (STATE_RANK[known.state] > (STATE_RANK[file.state] ?? 0) || sameOutcome(known, file))) return;
  current.files.set(file.index, file);
  renderFileRow(current, file);
  if (file.state === "succeeded" && file.outputs?.length) renderTile(current, file);
  else removeTile(current, file.index);
}

function removeTile(current, index) {
  current.tiles.get(index)?.remove();
  current.tiles.delete(index);
  $("gallery-empty").hidden = current.tiles.size > 0;
}

const displayName = (file) => file.filename || file.source || `file ${file.index}`;

function renderFileRow(current, file) {
  let row = current.rows.get(file.index);
  if (!row) {
    row = h("li", {}, h("span", { class: "name" }), h("span", { class: "badge" }), h("p", { class: "reason" }));
    insertByIndex($("job-files"), row, file.index);
    current.rows.set(file.index, row);
  }
  const [name, state, reason] = row.children;
  name.textContent = displayName(file);
  badge(file.state, state);
  reason.textContent = file.error ? `Reason: ${file.error}` : "";
}

function renderTile(current, file) {
  const old = current.tiles.get(file.index);
  const tile = buildTile(file);
  if (old) old.replaceWith(tile);
  else insertByIndex($("gallery"), tile, file.index);
  current.tiles.set(file.index, tile);
  $("gallery-empty").hidden = true;
}

/** The smallest output (by pixels) is the preview; every output gets a download link. */
function buildTile(file) {
  const name = displayName(file);
  const preview = [...file.outputs].sort((a, b) => a.width * a.height - b.width * b.height)[0];
  const img = h("img", { src: preview.url, alt: `${name} (${preview.target})`, loading: "lazy", decoding: "async",
    width: preview.width, height: preview.height, dataset: { target: preview.target } });
  return h("li", { class: "tile" },
    h("figure", {}, img, h("figcaption", {}, name)),
    h("ul", { class: "downloads", "aria-label": `Downloads for ${name}` },
      file.outputs.map((output) => h("li", {}, downloadLink(name, output)))));
}

function downloadLink(name, output) {
  const stem = name.replace(/\.[^.]*$/, "");
  const format = String(output.format || "").toUpperCase();
  return h("a", { href: output.url, download: `${stem}-${output.target}.${extension(output.format)}`,
    dataset: { target: output.target } },
  h("span", { class: "visually-hidden" }, `Download ${name}: `),
  `${output.target} · ${format} · ${output.width}×${output.height} · ${formatBytes(output.bytes)}`);
}

const extension = (format) => ({ jpeg: "jpg" })[format] || format || "bin";

// ---- cancel ----

async function onCancel(current) {
  // A native confirm: modal, keyboard- and screen-reader-friendly with no extra code.
  if (!window.confirm(`Cancel job ${current.name}? Images not yet resized will not be, and the job is removed.`)) {
    return;
  }
  const button = $("cancel-job");
  button.disabled = true;
  try {
    await cancelJob(current.name);
    unmountJob();
    notify("info", `Job ${current.name} is being cancelled.`);
    navigate("#/jobs");
  } catch (error) {
    notifyError(error, "Cannot cancel the job");
  } finally {
    button.disabled = false;
  }
}
