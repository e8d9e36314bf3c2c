// The jobs list: the caller's jobs (the API only returns the tenant's own), refreshed every 5 s while visible.

import { listJobs } from "./api.js";
import { $, badge, formatDate, h, notifyError, reconcile } from "./dom.js";

const REFRESH_MS = 5000;

let timer = null;
let inFlight = false;
let lastError = null;
let navigate = () => {};

export function setupJobs(go) {
  navigate = go;
  $("jobs-refresh").addEventListener("click", () => refresh({ manual: true }));
  // A whole row is clickable for mouse and touch; the keyboard uses the link in its first cell.
  $("jobs-body").addEventListener("click", (event) => {
    const row = event.target.closest("tr[data-key]");
    if (row && !event.target.closest("a")) navigate(`#/jobs/${encodeURIComponent(row.dataset.key)}`);
  });
}

export function mountJobs() {
  unmountJobs();
  refresh();
  // Polling stops while the tab is hidden (no point, and it saves a phone's battery) and catches up on return.
  timer = setInterval(() => {
    if (document.visibilityState === "visible") refresh();
  }, REFRESH_MS);
  document.addEventListener("visibilitychange", onVisibility);
}

export function unmountJobs() {
  clearInterval(timer);
  timer = null;
  document.removeEventListener("visibilitychange", onVisibility);
}

function onVisibility() {
  if (document.visibilityState === "visible") refresh();
}

async function refresh({ manual = false } = {}) {
  if (inFlight) return;
  inFlight = true;
  // aria-busy rather than `disabled`: disabling the focused button would drop the keyboard focus.
  $("jobs-table").setAttribute("aria-busy", "true");
  try {
    const { items = [] } = await listJobs();
    if (timer === null && !manual) return; // left the view meanwhile
    render(items);
    lastError = null;
    $("jobs-updated").textContent = `Updated ${new Date().toLocaleTimeString()}.`;
  } catch (error) {
    // Report a failure once, not every 5 s while the API is down.
    if (manual || lastError?.message !== error.message) notifyError(error, "Cannot load your jobs");
    lastError = error;
  } finally {
    inFlight = false;
    $("jobs-table").removeAttribute("aria-busy");
  }
}

function render(items) {
  reconcile($("jobs-body"), items, (job) => job.name, createRow, updateRow);
  $("jobs-empty").hidden = items.length > 0;
  $("jobs-table").hidden = items.length === 0;
}

function createRow(job) {
  return h("tr", {},
    h("td", {}, h("a", { href: `#/jobs/${encodeURIComponent(job.name)}` }, job.name)),
    h("td", {}, h("span", { class: "badge" })),
    h("td", { class: "num" }),
    h("td", {}, h("time")));
}

function updateRow(row, job) {
  const [, phase, done, created] = row.children;
  badge(job.phase, phase.firstElementChild);
  const progress = job.progress || {};
  done.textContent = `${progress.done ?? 0} / ${progress.total ?? 0}`;
  const time = created.firstElementChild;
  time.dateTime = job.createdAt || "";
  time.textContent = formatDate(job.createdAt);
}
