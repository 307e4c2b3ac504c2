// Jobs: the live list, a job's page (curves from its event stream, the event log,
// checkpoints, pause / resume / cancel) and the create-job form built from the
// server's hyperparameter table.

import { ApiError, EventFeed, all, get, post, seg } from "./api.js";
import { LineChart } from "./chart.js";
import {
  enumName,
  eta,
  every,
  field,
  fill,
  h,
  metric,
  notice,
  progressBar,
  routeQuery,
  stateBadge,
  table,
  when,
} from "./dom.js";

const REQUESTED = "tunewire.requested.";
const FINAL = new Set(["STATE_SUCCEEDED", "STATE_FAILED", "STATE_CANCELLED"]);
const CAN = {
  pause: new Set(["STATE_RUNNING"]),
  resume: new Set(["STATE_PAUSED"]),
  cancel: new Set(["STATE_QUEUED", "STATE_RUNNING", "STATE_PAUSING", "STATE_PAUSED"]),
};
const LOG_TAIL = 200;

let tableCache = null;
/** The hyperparameter table (GET /tunewire/v1/hyperparameters), fetched once. */
export async function hyperparameterTable() {
  tableCache ||= get("/hyperparameters").catch((error) => {
    tableCache = null;
    throw error;
  });
  return tableCache;
}

function heading(text, ...after) {
  return h("header", { class: "page-head" }, h("h1", { tabindex: "-1" }, text), ...after);
}

// --- the list -------------------------------------------------------------------------

function jobRow(job) {
  return h(
    "tr",
    { dataset: { job: job.id, state: job.state } },
    h("td", {}, h("a", { href: `#/jobs/${seg(job.id)}`, class: "mono" }, job.id)),
    h(
      "td",
      {},
      job.base_model,
      job.suffix ? h("span", { class: "muted" }, ` · ${job.suffix}`) : "",
    ),
    h("td", {}, stateBadge(job.state)),
    h("td", {}, progressBar(job, `Progress of ${job.id}`)),
    h("td", {}, eta(job)),
    h("td", {}, when(job.create_time)),
  );
}

export async function jobsView(page) {
  const wrap = table("Jobs", ["Job", "Model", "State", "Progress", "ETA", "Created"], [], {
    id: "jobs-table",
  });
  const body = wrap.querySelector("tbody");
  fill(
    page,
    heading("Jobs", h("a", { href: "#/jobs/new", class: "button primary" }, "New job")),
    wrap,
  );
  const refresh = async () => {
    const { jobs = [] } = await get("/jobs", { page_size: 50 });
    fill(
      body,
      jobs.length
        ? jobs.map(jobRow)
        : h("tr", {}, h("td", { colspan: 6, class: "empty" }, "No jobs yet.")),
    );
  };
  await refresh();
  return every(2000, refresh);
}

// --- one job --------------------------------------------------------------------------

function charts() {
  const make = (id, title, series, unit) => new LineChart({ id, title, series, unit });
  return {
    loss: make("chart-loss", "Loss", [
      { key: "train", label: "training loss", cls: "s1" },
      { key: "valid", label: "validation loss", cls: "s2" },
    ]),
    accuracy: make("chart-accuracy", "Token accuracy", [
      { key: "train", label: "training accuracy", cls: "s1" },
      { key: "valid", label: "validation accuracy", cls: "s2" },
    ]),
    lr: make("chart-lr", "Learning rate", [{ key: "lr", label: "learning rate", cls: "s3" }]),
    speed: make("chart-speed", "Throughput", [{ key: "tps", label: "tokens/s", cls: "s4" }]),
  };
}

function requestedOf(jobId) {
  try {
    return JSON.parse(sessionStorage.getItem(REQUESTED + jobId) || "null");
  } catch {
    return null;
  }
}

/** A snake_case name that may wrap after its underscores (and nowhere else). */
function breakable(name) {
  return name.split("_").flatMap((part, i) => (i ? [h("wbr"), `_${part}`] : [part]));
}

function shown(value) {
  if (typeof value !== "number" || Number.isInteger(value)) return String(value);
  return String(Number(value.toPrecision(6)));
}

function hyperparameterRows(job, rows, modules) {
  const requested = requestedOf(job.id);
  const used = job.hyperparameters || {};
  const planned = Number(job.progress?.total_steps || 0) > 0;
  const method = job.method?.type || "TYPE_SUPERVISED";
  const out = [];
  for (const row of rows) {
    if (row.method && row.method !== method) continue;
    let asked = "—";
    if (requested)
      asked =
        row.name in requested
          ? shown(requested[row.name])
          : row.default === "auto"
            ? "auto"
            : `default (${shown(row.default)})`;
    let value;
    if (row.name in used) value = shown(used[row.name]);
    else if (row.default === "auto") value = planned ? "—" : "auto: resolved when the job plans";
    else value = shown(row.default);
    const resolved =
      requested && !(row.name in requested) && row.default === "auto" && row.name in used;
    out.push(
      h(
        "tr",
        { dataset: { name: row.name } },
        h("th", { scope: "row" }, h("span", { class: "mono" }, breakable(row.name))),
        h("td", {}, asked),
        h("td", { class: resolved ? "resolved" : undefined }, resolved ? `auto → ${value}` : value),
        h("td", { class: "muted" }, row.range),
      ),
    );
  }
  const preset = (value) => String(value).replace("TARGET_MODULES_", "");
  out.push(
    h(
      "tr",
      { dataset: { name: "target_modules" } },
      h("th", { scope: "row" }, h("span", { class: "mono" }, "target_modules")),
      h(
        "td",
        {},
        requested
          ? requested.target_modules
            ? preset(requested.target_modules)
            : `default (${preset(modules[0])})`
          : "—",
      ),
      h("td", {}, preset(used.target_modules || modules[0])),
      h("td", { class: "muted" }, modules.map(preset).join(", ")),
    ),
  );
  return out;
}

function bestOf(checkpoints) {
  const flagged = checkpoints.find((c) => c.best);
  if (flagged) return flagged.id;
  const scored = checkpoints.filter((c) => c.metrics?.valid_loss !== undefined);
  if (!scored.length) return null;
  return scored.reduce((a, b) => (b.metrics.valid_loss < a.metrics.valid_loss ? b : a)).id;
}

function summary(job) {
  const item = (term, ...value) => [h("dt", {}, term), h("dd", {}, ...value)];
  const model = job.fine_tuned_model;
  return h(
    "dl",
    { class: "summary" },
    item("State", stateBadge(job.state)),
    item(
      "Progress",
      progressBar(job, "Training progress"),
      job.progress?.epoch ? ` epoch ${job.progress.epoch}` : "",
    ),
    item("ETA", eta(job)),
    item("Base model", job.base_model),
    item("Method", enumName(job.method?.type, "TYPE_") || "supervised"),
    item(
      "Training file",
      h("a", { href: `#/files/${seg(job.training_file)}`, class: "mono" }, job.training_file),
    ),
    job.validation_file
      ? item(
          "Validation file",
          h(
            "a",
            { href: `#/files/${seg(job.validation_file)}`, class: "mono" },
            job.validation_file,
          ),
        )
      : [],
    item("Trained tokens", String(Number(job.trained_tokens || 0))),
    item("Attempt", String(job.progress?.attempt || 1)),
    item("Created", when(job.create_time)),
    job.finish_time ? item("Finished", when(job.finish_time)) : [],
    model
      ? item(
          "Fine-tuned model",
          h("span", { class: "mono" }, model),
          " ",
          h(
            "a",
            { href: `#/playground?model=${encodeURIComponent(model)}`, class: "button small" },
            "Chat",
          ),
        )
      : [],
    job.error?.code
      ? item("Error", h("span", { class: "error-text" }, `${job.error.code}: ${job.error.message}`))
      : [],
  );
}

export async function jobView(page, jobId) {
  let job;
  try {
    job = await get(`/jobs/${seg(jobId)}`);
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) {
      fill(
        page,
        heading("Job not found"),
        notice("error", `No job ${jobId} in this organization.`),
      );
      return () => {};
    }
    throw error;
  }
  const hp = await hyperparameterTable();
  if (!requestedOf(job.id) && !Number(job.progress?.total_steps || 0)) {
    // Not planned yet: what is unset now is what was asked to be "auto".
    sessionStorage.setItem(REQUESTED + job.id, JSON.stringify(job.hyperparameters || {}));
  }
  const badge = h("span", { id: "job-state" }, stateBadge(job.state));
  const live = h("span", { class: "stream", id: "stream-status", role: "status" }, "connecting…");
  const actionNotice = h("div", { "aria-live": "polite" });
  const buttons = {
    pause: h("button", { type: "button", id: "pause" }, "Pause"),
    resume: h("button", { type: "button", id: "resume" }, "Resume"),
    cancel: h("button", { type: "button", id: "cancel", class: "danger" }, "Cancel job"),
  };
  const summaryBox = h("div", { id: "job-summary" });
  const hpBody = h("tbody");
  const curves = charts();
  const ckptWrap = table(
    "Checkpoints",
    [
      "Compare",
      "Step",
      "Epoch",
      "Training loss",
      "Validation loss",
      "Training accuracy",
      "Validation accuracy",
      "Best",
      "Model",
    ],
    [],
    { id: "checkpoints" },
  );
  const ckptBody = ckptWrap.querySelector("tbody");
  const compareButton = h(
    "button",
    { type: "button", id: "compare-selected", disabled: true },
    "Compare the two selected",
  );
  const log = h("ol", { class: "log", id: "event-log", "aria-label": "Event log" });
  const logBox = h(
    "div",
    { class: "log-box", tabindex: "0", role: "region", "aria-label": "Event log (newest last)" },
    log,
  );

  fill(
    page,
    heading(h("span", {}, "Job ", h("span", { class: "mono" }, job.id)), badge, live),
    h("div", { class: "actions" }, buttons.pause, buttons.resume, buttons.cancel),
    actionNotice,
    h(
      "div",
      { class: "columns" },
      h(
        "section",
        { class: "card", "aria-labelledby": "h-summary" },
        h("h2", { id: "h-summary" }, "Summary"),
        summaryBox,
      ),
      h(
        "section",
        { class: "card", "aria-labelledby": "h-hp" },
        h("h2", { id: "h-hp" }, "Hyperparameters"),
        h(
          "div",
          { class: "table-wrap" },
          h(
            "table",
            { id: "hyperparameters" },
            h(
              "thead",
              {},
              h(
                "tr",
                {},
                ["Name", "Requested", "Used", "Range"].map((x) => h("th", { scope: "col" }, x)),
              ),
            ),
            hpBody,
          ),
        ),
      ),
    ),
    h(
      "section",
      { "aria-labelledby": "h-curves" },
      h("h2", { id: "h-curves" }, "Training curves"),
      h(
        "div",
        { class: "charts" },
        Object.values(curves).map((c) => c.element),
      ),
    ),
    h(
      "section",
      { "aria-labelledby": "h-ckpt" },
      h("div", { class: "section-head" }, h("h2", { id: "h-ckpt" }, "Checkpoints"), compareButton),
      ckptWrap,
    ),
    h("section", { "aria-labelledby": "h-log" }, h("h2", { id: "h-log" }, "Events"), logBox),
  );

  let shownState = job.state;
  const show = () => {
    if (job.state !== shownState) fill(actionNotice); // a steering notice is stale by now
    shownState = job.state;
    fill(badge, stateBadge(job.state));
    fill(summaryBox, summary(job));
    fill(hpBody, hyperparameterRows(job, hp.hyperparameters, hp.target_modules));
    for (const [name, button] of Object.entries(buttons))
      button.disabled = !CAN[name].has(job.state);
  };
  show();

  let checkpointsShown = "";
  const loadCheckpoints = async () => {
    const checkpoints = await all(`/jobs/${seg(job.id)}/checkpoints`, "checkpoints");
    checkpoints.sort((a, b) => Number(a.step) - Number(b.step));
    const key = JSON.stringify(checkpoints);
    if (key === checkpointsShown) return;
    checkpointsShown = key;
    const selected = new Set([...ckptBody.querySelectorAll("input:checked")].map((x) => x.value));
    const best = bestOf(checkpoints);
    fill(
      ckptBody,
      checkpoints.length
        ? checkpoints.map((c) => {
            const m = c.metrics || {};
            const isBest = c.id === best;
            return h(
              "tr",
              { class: isBest ? "best" : undefined, dataset: { step: c.step, model: c.model } },
              h(
                "td",
                {},
                h("input", {
                  type: "checkbox",
                  value: c.model,
                  checked: selected.has(c.model),
                  "aria-label": `Select step ${c.step} for comparison`,
                  onchange: pick,
                }),
              ),
              h("td", {}, String(c.step)),
              h("td", {}, String(c.epoch)),
              h("td", {}, metric(m.train_loss)),
              h("td", {}, metric(m.valid_loss)),
              h("td", {}, metric(m.train_mean_token_accuracy)),
              h("td", {}, metric(m.valid_mean_token_accuracy)),
              h("td", {}, isBest ? h("span", { class: "badge best-badge" }, "★ best") : ""),
              h(
                "td",
                {},
                h(
                  "span",
                  { class: "mono small", title: c.model },
                  `…:${c.model.split(":").at(-1)}`,
                ),
                " ",
                h(
                  "a",
                  {
                    href: `#/playground?model=${encodeURIComponent(c.model)}`,
                    class: "button small",
                    "aria-label": `Chat with step ${c.step}`,
                  },
                  "Chat",
                ),
              ),
            );
          })
        : h("tr", {}, h("td", { colspan: 9, class: "empty" }, "No checkpoints yet.")),
    );
    pick();
  };
  function pick() {
    const chosen = [...ckptBody.querySelectorAll("input:checked")].map((x) => x.value);
    compareButton.disabled = chosen.length !== 2;
    compareButton.onclick = () => {
      location.hash = `#/compare?a=${encodeURIComponent(chosen[0])}&b=${encodeURIComponent(chosen[1])}`;
    };
  }

  const refresh = async () => {
    job = await get(`/jobs/${seg(job.id)}`);
    show();
    await loadCheckpoints();
  };
  let soon = null;
  const refreshSoon = () => {
    soon ||= setTimeout(async () => {
      soon = null;
      try {
        await refresh();
      } catch (error) {
        console.warn("refresh failed:", error);
      }
    }, 400);
  };

  const steer = (verb) => async () => {
    if (
      verb === "cancel" &&
      !window.confirm(`Cancel ${job.id}? A cancelled job cannot be resumed.`)
    )
      return;
    for (const b of Object.values(buttons)) b.disabled = true;
    try {
      job = await post(`/jobs/${seg(job.id)}:${verb}`);
      shownState = job.state;
      fill(
        actionNotice,
        notice(
          "ok",
          `${verb[0].toUpperCase()}${verb.slice(1)} accepted: the job is ${enumName(job.state, "STATE_")}.`,
        ),
      );
      show();
    } catch (error) {
      fill(actionNotice, notice("error", error.message));
      await refresh();
    }
  };
  for (const [verb, button] of Object.entries(buttons))
    button.addEventListener("click", steer(verb));

  const onEvent = (event) => {
    const d = event.data || {};
    const step = Number(d.step);
    if (event.type === "TYPE_METRICS") {
      curves.loss.add("train", step, d.train_loss);
      curves.accuracy.add("train", step, d.train_mean_token_accuracy);
      curves.lr.add("lr", step, d.learning_rate);
      curves.speed.add("tps", step, d.tokens_per_second);
      // The step moves the progress bar at once; the job itself is fetched now and then.
      job.progress = {
        ...(job.progress || {}),
        step: String(step),
        total_steps: String(d.total_steps ?? job.progress?.total_steps ?? 0),
      };
      const bar = summaryBox.querySelector("progress");
      if (bar && Number(d.total_steps)) {
        bar.max = Number(d.total_steps);
        bar.value = step;
        bar.nextSibling.textContent = `${step}/${Number(d.total_steps)}`;
      }
    }
    // A step that validated has its figures in its metrics event; jobs that ran before
    // that have them in a message event of their own.
    if (d.valid_loss !== undefined && Number.isFinite(step)) {
      curves.loss.add("valid", step, d.valid_loss);
      curves.accuracy.add("valid", step, d.valid_mean_token_accuracy);
    }
    const atBottom = logBox.scrollTop + logBox.clientHeight >= logBox.scrollHeight - 8;
    log.append(
      h(
        "li",
        {
          class: `level-${enumName(event.level, "LEVEL_")}`,
          dataset: { sequence: event.sequence, type: event.type },
        },
        h("span", { class: "seq" }, `#${event.sequence}`),
        " ",
        h(
          "time",
          { datetime: event.create_time },
          new Date(event.create_time).toLocaleTimeString(),
        ),
        " ",
        event.message,
      ),
    );
    while (log.childElementCount > LOG_TAIL) log.firstElementChild.remove();
    if (atBottom) logBox.scrollTop = logBox.scrollHeight;
    if (event.type === "TYPE_STATE" && d.state) {
      // The event names the new state: the badge and the buttons follow it at once (a
      // job that just started can be paused now), the rest with the refresh.
      job = { ...job, state: `STATE_${String(d.state).toUpperCase()}` };
      show();
    }
    if (event.type === "TYPE_STATE" || /checkpoint|plan/i.test(event.message)) refreshSoon();
  };
  const feed = new EventFeed(job.id, {
    onEvent,
    onStatus: (status, f, error) => {
      const text = {
        live: "live",
        resumed: `live (resumed after event ${f.after}; ${f.reconnects} reconnect${f.reconnects === 1 ? "" : "s"})`,
        reconnecting: `reconnecting after event ${f.after}…`,
        ended: "ended",
        error: `stream failed: ${error?.message}`,
      }[status];
      live.textContent = text;
      live.dataset.status = status;
      if (status === "ended") refreshSoon();
    },
  });
  const online = () => feed.reconnect();
  window.addEventListener("online", online);
  feed.run();
  await loadCheckpoints();
  const stopPoll = every(3000, async () => {
    if (!FINAL.has(job.state)) await refresh();
  });
  return () => {
    feed.stop();
    stopPoll();
    clearTimeout(soon);
    window.removeEventListener("online", online);
  };
}

// --- the create form ------------------------------------------------------------------

const METHOD_NAMES = {
  TYPE_SUPERVISED: "Supervised",
  TYPE_DPO: "DPO (preference pairs)",
  TYPE_CLASSIFICATION: "Classification",
};

function hyperparameterInput(row) {
  const input = h("input", {
    type: "number",
    name: row.name,
    inputmode: row.type === "integer" ? "numeric" : "decimal",
    min: row.minimum,
    max: row.maximum,
    step: row.type === "integer" ? 1 : "any",
    placeholder: row.default === "auto" ? "auto" : String(row.default),
  });
  input.addEventListener("input", () => {
    const v = Number(input.value);
    let problem = "";
    if (input.value !== "" && row.exclusive_minimum && v <= row.minimum)
      problem = `must be above ${row.minimum}`;
    if (input.value !== "" && row.exclusive_maximum && v >= row.maximum)
      problem = `must be below ${row.maximum}`;
    input.setCustomValidity(problem);
  });
  const empty =
    row.default === "auto"
      ? `Empty: auto, ${row.auto.replace(/\.$/, "")}.`
      : `Empty: ${row.default}.`;
  return { input, help: `${row.description} Range ${row.range}. ${empty}` };
}

function option(value, text, selected) {
  return h("option", { value, selected }, text);
}

export async function newJobView(page) {
  const query = routeQuery();
  const [hp, bases, files] = await Promise.all([
    hyperparameterTable(),
    get("/base-models"),
    all("/files", "files", { purpose: "PURPOSE_FINE_TUNE" }, 5),
  ]);
  const usable = files.filter((f) => f.state === "STATE_PROCESSED");
  const wanted = query.get("file");
  const fileLabel = (f) =>
    `${f.filename} · ${f.id} · ${Number(f.validation?.example_count || 0)} examples`;
  const base = h(
    "select",
    { name: "base_model", required: true },
    (bases.base_models || []).map((m) =>
      option(
        m.id,
        `${m.id} (${enumName(m.kind, "KIND_")}, ${Number(m.parameter_count).toLocaleString()} parameters)`,
      ),
    ),
  );
  const method = h(
    "select",
    { name: "method" },
    hp.methods.map((v) => option(v, METHOD_NAMES[v] || enumName(v, "TYPE_"))),
  );
  const training = h(
    "select",
    { name: "training_file", required: true },
    usable.length ? "" : option("", "no processed files: upload one first"),
    usable.map((f) => option(f.id, fileLabel(f), f.id === wanted)),
  );
  const validation = h(
    "select",
    { name: "validation_file" },
    option("", "none"),
    usable.map((f) => option(f.id, fileLabel(f))),
  );
  const suffix = h("input", { name: "suffix", type: "text", maxlength: 64, autocomplete: "off" });
  const seed = h("input", {
    name: "seed",
    type: "number",
    step: 1,
    min: 0,
    inputmode: "numeric",
    placeholder: "random",
  });
  const modules = h(
    "select",
    { name: "target_modules" },
    option("", "default (QV)"),
    hp.target_modules.map((m) => option(m, m.replace("TARGET_MODULES_", ""))),
  );
  const inputs = {};
  const hpFields = hp.hyperparameters.map((row) => {
    const { input, help } = hyperparameterInput(row);
    inputs[row.name] = input;
    const wrap = field(row.name, input, help);
    wrap.dataset.method = row.method;
    return wrap;
  });
  const showMethodFields = () => {
    for (const wrap of hpFields)
      wrap.hidden = Boolean(wrap.dataset.method) && wrap.dataset.method !== method.value;
  };
  method.addEventListener("change", showMethodFields);
  showMethodFields();
  const errors = h("div", { "aria-live": "assertive" });
  const submit = h("button", { type: "submit", class: "primary" }, "Create job");
  const form = h(
    "form",
    { class: "card", id: "new-job", novalidate: false },
    h(
      "div",
      { class: "grid2" },
      field("Base model", base),
      field("Method", method),
      field("Training file", training, "A processed fine-tune file (see Files)."),
      field(
        "Validation file",
        validation,
        "Optional: validation loss and accuracy, and the best checkpoint.",
      ),
      field("Suffix", suffix, "Optional: part of the model's name."),
      field("Seed", seed, "Optional: the same seed trains the same run."),
    ),
    h(
      "fieldset",
      {},
      h("legend", {}, "Hyperparameters"),
      h(
        "p",
        { class: "help" },
        'Leave a field empty for its default; "auto" is resolved from the data when the job plans, and the job page shows what it became.',
      ),
      h(
        "div",
        { class: "grid2" },
        hpFields,
        field("target_modules", modules, "LoRA target modules preset."),
      ),
    ),
    errors,
    submit,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
    for (const el of form.querySelectorAll(".field-error")) el.remove();
    const hyperparameters = {};
    for (const row of hp.hyperparameters) {
      const input = inputs[row.name];
      if (input.closest(".field").hidden || input.value === "") continue;
      hyperparameters[row.name] = Number(input.value);
    }
    if (modules.value) hyperparameters.target_modules = modules.value;
    const body = {
      base_model: base.value,
      training_file: training.value,
      method: { type: method.value },
      hyperparameters,
    };
    if (validation.value) body.validation_file = validation.value;
    if (suffix.value.trim()) body.suffix = suffix.value.trim();
    if (seed.value !== "") body.seed = seed.value;
    submit.disabled = true;
    try {
      const job = await post("/jobs", body);
      sessionStorage.setItem(REQUESTED + job.id, JSON.stringify(hyperparameters));
      location.hash = `#/jobs/${seg(job.id)}`;
    } catch (error) {
      submit.disabled = false;
      const violations = error instanceof ApiError ? error.violations : {};
      let first = null;
      for (const [name, description] of Object.entries(violations)) {
        const key = name.replace(/^job\./, "").replace(/^hyperparameters\./, "");
        const control = inputs[key] || form.elements[key];
        if (!control) continue;
        control.setAttribute("aria-invalid", "true");
        control.closest(".field").append(h("p", { class: "field-error" }, description));
        first ||= control;
      }
      fill(errors, notice("error", error.message));
      first?.focus();
    }
  });
  fill(page, heading("New job"), form);
  return () => {};
}
