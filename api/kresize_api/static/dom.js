// Small DOM and formatting helpers shared by the views.
//
// Everything that comes from the API or the user (filenames, error messages) is added as text nodes,
// never parsed as HTML: filenames are user input, and `append("<img onerror=...>")` only ever shows text.

export const $ = (id) => document.getElementById(id);

/** Create an element: h("a", {href: "#/jobs", class: "x"}, "text", child). Strings become text nodes. */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  el.append(...children.flat().filter((child) => child !== null && child !== undefined && child !== false));
  return el;
}

/**
 * Bring `container`'s children in line with `items`, keyed by `keyOf`, touching only what changed.
 * A periodic refresh that rebuilt the list would take the keyboard focus away from a row every time.
 */
export function reconcile(container, items, keyOf, create, update) {
  const wanted = new Set(items.map(keyOf));
  for (const el of [...container.children]) {
    if (!wanted.has(el.dataset.key)) el.remove();
  }
  const existing = new Map([...container.children].map((el) => [el.dataset.key, el]));
  let cursor = container.firstElementChild;
  for (const item of items) {
    const key = keyOf(item);
    let el = existing.get(key);
    if (!el) {
      el = create(item);
      el.dataset.key = key;
    }
    update(el, item);
    if (el === cursor) cursor = cursor.nextElementSibling;
    else container.insertBefore(el, cursor); // new, or the order changed
  }
}

/** Insert `el` among children that carry `data-index`, keeping them in index order. */
export function insertByIndex(container, el, index) {
  el.dataset.index = String(index);
  const last = container.lastElementChild;
  if (!last || Number(last.dataset.index) < index) {
    container.append(el); // the usual case: pages of files arrive in index order
    return;
  }
  for (const child of container.children) {
    if (Number(child.dataset.index) > index) {
      container.insertBefore(el, child);
      return;
    }
  }
  container.append(el);
}

const BYTE_UNITS = ["B", "KB", "MB", "GB", "TB"];

export function formatBytes(bytes) {
  let value = Number(bytes) || 0;
  let unit = 0;
  while (value >= 1024 && unit < BYTE_UNITS.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${unit === 0 ? value : value.toFixed(value < 10 ? 1 : 0)} ${BYTE_UNITS[unit]}`;
}

export function formatDuration(seconds) {
  if (!Number.isFinite(seconds)) return "–";
  if (seconds < 1) return "< 1 s";
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${s % 60} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

export function formatDate(iso) {
  const date = iso ? new Date(iso) : null;
  if (!date || Number.isNaN(date.getTime())) return "–";
  return date.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

const PHASE_LABELS = { PartiallyFailed: "Partially failed" };

/** A status badge: the word is the signal, the colour and symbol (CSS) only repeat it. */
export function badge(state, el = h("span")) {
  el.className = `badge ${String(state || "pending").toLowerCase()}`;
  el.textContent = PHASE_LABELS[state] || state || "Pending";
  return el;
}

/**
 * Show a notice in the page's aria-live region. `details` (strings) and `files` ({filename, error})
 * come from the API's error shape and are shown as text.
 */
export function notify(kind, title, { details = [], files = [] } = {}) {
  const box = h("div", { class: `message ${kind}` }, h("p", {}, title));
  const lines = [...details, ...files.map((f) => `${f.filename}: ${f.error || "rejected"}`)];
  if (lines.length) box.append(h("ul", {}, lines.map((line) => h("li", {}, line))));
  box.append(h("button", { type: "button", class: "dismiss", "aria-label": "Dismiss message",
    onclick: () => box.remove() }, "×"));
  $("messages").append(box);
  return box;
}

/** An API error (see api.js ApiError) or any other exception, as a notice. */
export function notifyError(error, title) {
  const message = error && error.message ? error.message : String(error);
  return notify("error", title ? `${title}: ${message}` : message,
    { details: error?.details || [], files: (error?.files || []).filter((f) => !f.accepted) });
}

export function clearMessages() {
  $("messages").replaceChildren();
}
