// The "New job" view: choose images (picker or drag and drop), choose targets, submit.

import { submitJob } from "./api.js";
import { $, clearMessages, formatBytes, h, notify, notifyError } from "./dom.js";

// Preset targets, in the API's target shape (`targets` is a JSON list of these).
const PRESETS = [
  { label: "Thumbnail", about: "320×320, cropped to fill, WebP", checked: true,
    target: { name: "thumb", width: 320, height: 320, fit: "cover", format: "webp" } },
  { label: "Web", about: "fits 1280×1280, JPEG quality 80",
    target: { name: "web", width: 1280, height: 1280, fit: "inside", format: "jpeg", quality: 80 } },
  { label: "WebP", about: "fits 1600×1600, WebP",
    target: { name: "webp", width: 1600, height: 1600, fit: "inside", format: "webp" } },
  { label: "AVIF", about: "fits 1600×1600, AVIF (smallest files, slowest)",
    target: { name: "avif", width: 1600, height: 1600, fit: "inside", format: "avif" } },
];
const TARGET_NAME = /^[a-z0-9]([a-z0-9_-]*[a-z0-9])?$/;

let chosen = []; // File objects, in the order they were added
let navigate = () => {};

/** Wire the form once; `go(hash)` switches views (after a successful submit). */
export function setupUpload(go) {
  navigate = go;
  renderPresets();
  const input = $("file-input");
  const zone = $("dropzone");
  // A real <button>: Enter and Space open the picker natively, and screen readers announce it as a button.
  zone.addEventListener("click", () => input.click());
  input.addEventListener("change", () => {
    addFiles(input.files);
    input.value = ""; // so that choosing the same file again still fires `change`
  });
  setupDrop(zone);
  $("custom-enabled").addEventListener("change", (event) => {
    $("custom-target").disabled = !event.target.checked;
    if (event.target.checked) $("custom-name").focus();
  });
  $("upload-form").addEventListener("submit", onSubmit);
  renderFiles();
}

function renderPresets() {
  $("presets").replaceChildren(...PRESETS.map((preset) => {
    const id = `preset-${preset.target.name}`;
    return h("li", { class: "check" },
      h("input", { type: "checkbox", id, name: "preset", value: preset.target.name, checked: preset.checked }),
      h("label", { for: id }, h("strong", {}, preset.label), " ", h("span", { class: "muted" }, preset.about)));
  }));
}

function setupDrop(zone) {
  const over = (event) => {
    event.preventDefault(); // needed for `drop` to fire
    zone.classList.add("dragging");
  };
  zone.addEventListener("dragenter", over);
  zone.addEventListener("dragover", over);
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    addFiles(event.dataTransfer.files);
  });
  // A file dropped next to the zone would otherwise make the browser open it and leave the page.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
}

const fileKey = (file) => `${file.name}\u0000${file.size}\u0000${file.lastModified}`;

function addFiles(files) {
  const known = new Set(chosen.map(fileKey));
  for (const file of files) {
    if (!known.has(fileKey(file))) chosen.push(file);
    known.add(fileKey(file));
  }
  renderFiles();
}

function removeFile(index) {
  chosen.splice(index, 1);
  renderFiles();
  // Keep the keyboard where it was: on the next remove button, or back on the drop zone.
  const buttons = $("file-list").querySelectorAll("button");
  (buttons[Math.min(index, buttons.length - 1)] || $("dropzone")).focus();
}

function renderFiles() {
  $("file-list").replaceChildren(...chosen.map((file, index) => h("li", {},
    h("span", { class: "name" }, file.name),
    h("span", { class: "size" }, formatBytes(file.size)),
    h("button", { type: "button", class: "link", "aria-label": `Remove ${file.name}`,
      onclick: () => removeFile(index) }, "Remove"))));
  const total = chosen.reduce((sum, file) => sum + file.size, 0);
  $("file-summary").textContent = chosen.length
    ? `${chosen.length} ${chosen.length === 1 ? "image" : "images"} chosen, ${formatBytes(total)}.`
    : "No images chosen yet.";
}

/** The targets to send, or throws an Error naming the field to fix (its `field` property). */
function selectedTargets() {
  const names = new Set([...document.querySelectorAll("input[name=preset]:checked")].map((box) => box.value));
  const targets = PRESETS.filter((preset) => names.has(preset.target.name)).map((preset) => preset.target);
  if ($("custom-enabled").checked) targets.push(customTarget(names));
  if (!targets.length) throw fieldError("Choose at least one target.", $("preset-thumb"));
  return targets;
}

function customTarget(presetNames) {
  const name = $("custom-name").value.trim();
  if (!TARGET_NAME.test(name) || name.length > 63) {
    throw fieldError("The custom target's name may use lowercase letters, digits, - and _ "
      + "(starting and ending with a letter or digit).", $("custom-name"));
  }
  if (presetNames.has(name)) throw fieldError(`A preset is already named "${name}": rename the custom target.`,
    $("custom-name"));
  const target = { name, fit: $("custom-fit").value, format: $("custom-format").value };
  for (const [key, id, max] of [["width", "custom-width", 16384], ["height", "custom-height", 16384],
    ["quality", "custom-quality", 100]]) {
    const raw = $(id).value.trim();
    if (!raw) continue;
    const value = Number(raw);
    if (!Number.isInteger(value) || value < 1 || value > max) {
      throw fieldError(`The custom ${key} must be a whole number from 1 to ${max}.`, $(id));
    }
    target[key] = value;
  }
  if (!target.width && !target.height) throw fieldError("The custom target needs a width or a height.",
    $("custom-width"));
  return target;
}

function fieldError(message, field) {
  return Object.assign(new Error(message), { field });
}

function markInvalid(field) {
  document.querySelectorAll("#upload-form [aria-invalid]").forEach((el) => el.removeAttribute("aria-invalid"));
  if (field && field.tagName !== "BUTTON") field.setAttribute("aria-invalid", "true");
  if (field) field.focus();
}

async function onSubmit(event) {
  event.preventDefault();
  clearMessages();
  let targets;
  try {
    if (!chosen.length) throw fieldError("Choose at least one image.", $("dropzone"));
    targets = selectedTargets();
  } catch (error) {
    notify("error", error.message);
    markInvalid(error.field);
    return;
  }
  markInvalid(null);
  const form = new FormData();
  for (const file of chosen) form.append("files", file, file.name);
  form.append("targets", JSON.stringify(targets));
  await send(form);
}

async function send(form) {
  setBusy(true);
  try {
    const created = await submitJob(form, showUploadProgress);
    reportRejected(created.files || []);
    chosen = [];
    renderFiles();
    navigate(`#/jobs/${encodeURIComponent(created.name)}`);
  } catch (error) {
    notifyError(error, "The job was not created");
  } finally {
    setBusy(false);
  }
}

function reportRejected(files) {
  const rejected = files.filter((file) => !file.accepted);
  if (!rejected.length) return;
  notify("warning", `${rejected.length} of ${files.length} files were rejected; the others are being resized.`,
    { files: rejected });
}

function setBusy(busy) {
  $("submit").disabled = busy;
  $("upload-state").hidden = !busy;
  if (busy) showUploadProgress(0);
}

function showUploadProgress(fraction) {
  const percent = Math.floor(fraction * 100);
  $("upload-progress").value = percent;
  $("upload-percent").textContent = `${percent}%`;
  // Once the bytes are sent the server still inspects them and creates the job.
  $("upload-label").textContent = fraction >= 1 ? "Creating the job" : "Uploading";
}
