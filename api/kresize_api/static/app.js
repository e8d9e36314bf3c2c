// kresize web page: sign-in, routing between the views (URL hash, so a reload keeps the view).
// Plain ES modules served by the API: no framework, no build step, nothing fetched from elsewhere.
//
//   #/new          upload images and choose targets   (upload.js)
//   #/jobs         the caller's jobs                   (jobs.js)
//   #/jobs/<name>  one job: live progress and results  (job.js)

import { clearToken, getToken, setToken, whoAmI } from "./api.js";
import { $, clearMessages, notify } from "./dom.js";
import { mountJob, setupJob, unmountJob } from "./job.js";
import { mountJobs, setupJobs, unmountJobs } from "./jobs.js";
import { setupUpload } from "./upload.js";

const VIEWS = ["loading", "signin", "new", "job", "jobs"];

let session = null; // {tenant, admin, authOff} once /v1/me accepted us
let firstRoute = true;
let keepMessages = false;

/** Switch views from code; notices shown just before (files rejected at upload, say) stay on screen. */
function go(hash) {
  keepMessages = true;
  if (location.hash === hash) route();
  else location.hash = hash;
}

function onHashChange() {
  if (!keepMessages) clearMessages(); // the user went elsewhere: old notices no longer apply
  keepMessages = false;
  route();
}

function parseRoute() {
  const hash = location.hash.replace(/^#/, "");
  const job = hash.match(/^\/jobs\/([^/]+)$/);
  if (job) return { view: "job", name: decodeURIComponent(job[1]) };
  return { view: hash === "/jobs" ? "jobs" : "new" };
}

function route() {
  unmountJob();
  unmountJobs();
  if (!session) {
    showSignIn();
    return;
  }
  const target = parseRoute();
  if (target.view === "job") {
    showView("job", `Job ${target.name}`);
    mountJob(target.name);
  } else if (target.view === "jobs") {
    showView("jobs", "Your jobs");
    mountJobs();
  } else {
    showView("new", "New job");
  }
}

function showView(id, title) {
  for (const name of VIEWS) $(`view-${name}`).hidden = name !== id;
  document.title = title ? `${title} · kresize` : "kresize";
  const section = id === "job" ? "jobs" : id;
  for (const link of document.querySelectorAll("#nav a")) {
    if (link.dataset.route === section) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  // After a navigation, focus the new view's heading so that screen readers announce it and Tab continues
  // from there. Not on the first load: there the browser's own starting point is what people expect.
  if (!firstRoute && id !== "loading") $(`view-${id}`).querySelector("h1")?.focus();
  if (id !== "loading") firstRoute = false;
}

// ---- session ----

async function checkSession() {
  showView("loading");
  $("loading-text").textContent = "Loading…";
  $("retry").hidden = true;
  const token = getToken();
  try {
    // Without a token this also tells whether authentication is off (then /v1/me answers 200).
    signedIn(await whoAmI(token), !token);
  } catch (error) {
    if (error.status === 401) {
      if (token) {
        clearToken();
        notify("warning", "Your saved token is no longer accepted. Please sign in again.");
      }
      route();
      return;
    }
    $("loading-text").textContent = `Cannot load kresize: ${error.message}`;
    $("retry").hidden = false;
  }
}

function signedIn(me, authOff) {
  session = { tenant: me.tenant, admin: Boolean(me.admin), authOff };
  $("nav").hidden = false;
  $("account").hidden = false;
  $("sign-out").hidden = authOff;
  $("account-name").textContent = authOff
    ? "Authentication is off"
    : `Signed in as ${me.tenant}${me.admin ? " (admin)" : ""}`;
  route();
}

function showSignIn() {
  $("nav").hidden = true;
  $("account").hidden = true;
  showView("signin", "Sign in");
}

let signingIn = false;

async function onSignIn(event) {
  event.preventDefault();
  if (signingIn) return;
  const input = $("token");
  const token = input.value.trim();
  if (!token) {
    setSignInError("Enter your API token.");
    return;
  }
  signingIn = true;
  setSignInError("");
  try {
    const me = await whoAmI(token);
    setToken(token);
    input.value = "";
    clearMessages();
    signedIn(me, false);
  } catch (error) {
    setSignInError(error.status === 401 ? "This token was not accepted. Check it and try again." : error.message);
  } finally {
    signingIn = false;
  }
}

function setSignInError(message) {
  $("signin-error").textContent = message;
  const input = $("token");
  if (message) {
    input.setAttribute("aria-invalid", "true");
    input.focus();
  } else {
    input.removeAttribute("aria-invalid");
  }
}

function signOut() {
  clearToken();
  session = null;
  clearMessages();
  notify("info", "Signed out. The token was removed from this browser.");
  route();
}

/** A call answered 401 with our token: it was revoked or rotated meanwhile. */
function onUnauthorized() {
  if (!session || session.authOff) return;
  clearToken();
  session = null;
  notify("warning", "Your token is no longer accepted. Please sign in again.");
  route();
}

function start() {
  setupUpload(go);
  setupJob(go);
  setupJobs(go);
  $("signin-form").addEventListener("submit", onSignIn);
  $("sign-out").addEventListener("click", signOut);
  $("retry").addEventListener("click", checkSession);
  // The skip link must not change the hash (that is the route): it only moves the focus.
  $("skip-link").addEventListener("click", (event) => {
    event.preventDefault();
    $("main").focus();
  });
  window.addEventListener("hashchange", onHashChange);
  window.addEventListener("kresize:unauthorized", onUnauthorized);
  checkSession();
}

start();
