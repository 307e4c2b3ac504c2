// The dashboard's shell: sign-in, navigation and a hash router. Each view renders into
// <main> and returns a function that stops whatever it keeps running (polls, streams).

import { ApiError, get, session } from "./api.js";
import { fill, h, notice } from "./dom.js";
import { filesView, fileView } from "./files.js";
import { jobView, jobsView, newJobView } from "./jobs.js";
import { compareView, exportsView, modelsView, playgroundView } from "./models.js";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const account = document.getElementById("account");

const ROUTES = [
  [/^\/jobs$/, jobsView, "Jobs"],
  [/^\/jobs\/new$/, newJobView, "New job"],
  [/^\/jobs\/([^/]+)$/, jobView, "Job"],
  [/^\/files$/, filesView, "Files"],
  [/^\/files\/([^/]+)$/, fileView, "File"],
  [/^\/models$/, modelsView, "Models"],
  [/^\/playground$/, playgroundView, "Playground"],
  [/^\/compare$/, compareView, "Compare"],
  [/^\/exports$/, exportsView, "Exports"],
];
const LINKS = [
  ["#/jobs", "Jobs"],
  ["#/jobs/new", "New job"],
  ["#/files", "Files"],
  ["#/models", "Models"],
  ["#/playground", "Playground"],
  ["#/compare", "Compare"],
  ["#/exports", "Exports"],
];

let stopView = () => {};
let caller = null;

function path() {
  const hash = location.hash.replace(/^#/, "") || "/jobs";
  return hash.split("?")[0];
}

async function signIn(key) {
  session.key = key;
  try {
    caller = await get("/caller");
  } catch (error) {
    session.clear();
    throw error;
  }
}

function signOut() {
  stopView();
  session.clear();
  caller = null;
  location.hash = "#/jobs";
  render();
}

function signInView() {
  const error = h("div", { "aria-live": "assertive" });
  const input = h("input", {
    id: "api-key",
    type: "password",
    name: "api-key",
    autocomplete: "off",
    spellcheck: "false",
    required: true,
    "aria-describedby": "api-key-help",
  });
  const form = h(
    "form",
    {
      class: "card signin",
      onsubmit: async (event) => {
        event.preventDefault();
        const button = form.querySelector("button");
        button.disabled = true;
        try {
          await signIn(input.value.trim());
          render();
        } catch (failure) {
          const text =
            failure instanceof ApiError && failure.status === 401
              ? "That key was not accepted."
              : `Could not sign in: ${failure.message}`;
          fill(error, notice("error", text));
          button.disabled = false;
          input.focus();
        }
      },
    },
    h("h1", { tabindex: "-1" }, "Sign in"),
    h("div", { class: "field" }, h("label", { for: "api-key" }, "API key"), input),
    h(
      "p",
      { class: "help", id: "api-key-help" },
      "The key is kept in this tab's session storage only, and is sent as a Bearer token. ",
      "The server prints the first key when it starts (also saved in .tunewire/api-key); ",
      "`tunewire keys create --org NAME` makes more.",
    ),
    h("button", { type: "submit", class: "primary" }, "Sign in"),
    error,
  );
  fill(nav);
  fill(account);
  fill(main, form);
  input.focus();
}

function shell() {
  const current = path();
  fill(
    nav,
    h(
      "ul",
      {},
      LINKS.map(([href, text]) => {
        const target = href.slice(1);
        const active =
          current === target || (target === "/jobs" && /^\/jobs\/(?!new)/.test(current));
        return h("li", {}, h("a", { href, "aria-current": active ? "page" : undefined }, text));
      }),
    ),
  );
  fill(
    account,
    h("span", { class: "org", title: `key ${caller.key_id}` }, "org ", h("strong", {}, caller.org)),
    h("button", { type: "button", onclick: signOut }, "Sign out"),
  );
}

let generation = 0;

async function render() {
  const mine = ++generation;
  stopView();
  stopView = () => {};
  if (!session.key) return signInView();
  if (!caller) {
    try {
      caller = await get("/caller");
    } catch {
      session.clear();
      return signInView();
    }
  }
  if (mine !== generation) return;
  shell();
  const route = path();
  for (const [pattern, view, title] of ROUTES) {
    const match = route.match(pattern);
    if (!match) continue;
    document.title = `${title} · Tunewire`;
    // A page of its own: a view still loading when the route changes writes to a
    // detached element, and is stopped as soon as it returns.
    const page = h("div", { class: "page" });
    fill(main, page);
    let stop = () => {};
    try {
      stop = (await view(page, ...match.slice(1).map(decodeURIComponent))) || stop;
    } catch (error) {
      fill(page, h("h1", { tabindex: "-1" }, title), notice("error", error.message));
    }
    if (mine !== generation) return stop();
    stopView = stop;
    // Focus the new page's heading, so keyboard and screen-reader users start there.
    page.querySelector("h1")?.focus({ preventScroll: true });
    return;
  }
  location.hash = "#/jobs";
}

// The skip link focuses <main> itself: its own href would be taken for a route.
document.querySelector(".skip").addEventListener("click", (event) => {
  event.preventDefault();
  main.focus();
});
window.addEventListener("hashchange", render);
window.addEventListener("tunewire:unauthorized", () => {
  if (caller) signOut();
});
render();
