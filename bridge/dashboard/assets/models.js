// Models: the list, the playground (a chat that streams), a side-by-side compare of
// two models or checkpoints on one prompt, and exports with their downloads.

import { all, downloadArtifact, generate, get, post, seg } from "./api.js";
import {
  bytes,
  enumName,
  every,
  field,
  fill,
  h,
  notice,
  routeQuery,
  stateBadge,
  table,
  when,
} from "./dom.js";

function heading(text, ...after) {
  return h("header", { class: "page-head" }, h("h1", { tabindex: "-1" }, text), ...after);
}

/** Everything that can generate: fine-tuned models, their jobs' checkpoints, base models. */
async function modelChoices() {
  const [models, bases, jobs] = await Promise.all([
    all("/models", "models", {}, 5),
    get("/base-models"),
    get("/jobs", { page_size: 20 }),
  ]);
  const trained = (jobs.jobs || []).filter((j) => Number(j.progress?.step || 0) > 0);
  const lists = await Promise.all(
    trained.map((j) => all(`/jobs/${seg(j.id)}/checkpoints`, "checkpoints", {}, 2)),
  );
  const checkpoints = lists
    .flat()
    .sort((a, b) => (a.job_id === b.job_id ? Number(a.step) - Number(b.step) : 0));
  const causal = (bases.base_models || []).filter((m) => m.kind !== "KIND_ENCODER");
  return { models, checkpoints, bases: causal };
}

/** A <select> of the choices, grouped; `selected` is preselected (added if unknown). */
function modelSelect(choices, selected, attrs = {}) {
  const known = new Set([
    ...choices.models.map((m) => m.id),
    ...choices.checkpoints.map((c) => c.model),
    ...choices.bases.map((b) => b.id),
  ]);
  const opt = (value) => h("option", { value, selected: value === selected }, value);
  return h(
    "select",
    { required: true, ...attrs },
    selected && !known.has(selected) ? opt(selected) : "",
    h(
      "optgroup",
      { label: "Fine-tuned models" },
      choices.models.map((m) => opt(m.id)),
    ),
    h(
      "optgroup",
      { label: "Checkpoints" },
      choices.checkpoints.map((c) => opt(c.model)),
    ),
    h(
      "optgroup",
      { label: "Base models" },
      choices.bases.map((b) => opt(b.id)),
    ),
  );
}

function sampling(defaults) {
  const maxTokens = h("input", {
    type: "number",
    name: "max_tokens",
    min: 1,
    max: 4096,
    step: 1,
    value: defaults.maxTokens,
  });
  const temperature = h("input", {
    type: "number",
    name: "temperature",
    min: 0,
    max: 2,
    step: "any",
    value: defaults.temperature,
  });
  return {
    fields: [
      field("Max new tokens", maxTokens, "1 to 4096."),
      field("Temperature", temperature, "0 to 2; 0 is greedy (the same answer every time)."),
    ],
    read: () => ({ max_tokens: Number(maxTokens.value), temperature: Number(temperature.value) }),
  };
}

// --- the list -------------------------------------------------------------------------

export async function modelsView(page) {
  const [models, bases] = await Promise.all([all("/models", "models", {}, 5), get("/base-models")]);
  const problem = h("div", { "aria-live": "assertive" });
  const format = (id) =>
    h(
      "span",
      { class: "inline-form" },
      h(
        "select",
        { "aria-label": `Export format for ${id}` },
        h("option", { value: "FORMAT_MERGED_SAFETENSORS" }, "merged safetensors"),
        h("option", { value: "FORMAT_ONNX" }, "ONNX"),
      ),
      h(
        "button",
        {
          type: "button",
          class: "small",
          onclick: async (event) => {
            const button = event.currentTarget;
            button.disabled = true;
            try {
              await post("/exports", { model_id: id, format: button.previousSibling.value });
              location.hash = "#/exports";
            } catch (error) {
              fill(problem, notice("error", `Export refused: ${error.message}`));
              button.disabled = false;
            }
          },
        },
        "Export",
      ),
    );
  fill(
    page,
    heading("Models"),
    problem,
    h(
      "section",
      { "aria-labelledby": "h-ft" },
      h("h2", { id: "h-ft" }, "Fine-tuned models"),
      table(
        "Fine-tuned models",
        ["Model", "Base", "Job", "State", "Created", "Use"],
        models.length
          ? models.map((m) =>
              h(
                "tr",
                { dataset: { model: m.id } },
                h("td", { class: "mono" }, m.id),
                h("td", {}, m.base_model),
                h("td", {}, h("a", { href: `#/jobs/${seg(m.job_id)}`, class: "mono" }, m.job_id)),
                h("td", {}, stateBadge(m.state)),
                h("td", {}, when(m.create_time)),
                h(
                  "td",
                  {},
                  h(
                    "a",
                    {
                      href: `#/playground?model=${encodeURIComponent(m.id)}`,
                      class: "button small",
                      "aria-label": `Chat with ${m.id}`,
                    },
                    "Chat",
                  ),
                  " ",
                  format(m.id),
                ),
              ),
            )
          : h("tr", {}, h("td", { colspan: 6, class: "empty" }, "No fine-tuned models yet.")),
        { id: "models-table" },
      ),
    ),
    h(
      "section",
      { "aria-labelledby": "h-base" },
      h("h2", { id: "h-base" }, "Base models"),
      table(
        "Base models",
        ["Model", "Kind", "Architecture", "Parameters", "Context"],
        (bases.base_models || []).map((b) =>
          h(
            "tr",
            {},
            h("td", { class: "mono" }, b.id),
            h("td", {}, enumName(b.kind, "KIND_")),
            h("td", {}, b.architecture),
            h("td", {}, Number(b.parameter_count).toLocaleString()),
            h("td", {}, String(b.context_length)),
          ),
        ),
      ),
    ),
  );
  return () => {};
}

// --- the playground -------------------------------------------------------------------

export async function playgroundView(page) {
  const choices = await modelChoices();
  const wanted = routeQuery().get("model") || choices.models[0]?.id || choices.bases[0]?.id || "";
  const model = modelSelect(choices, wanted, { name: "model" });
  const system = h("textarea", {
    name: "system",
    rows: 2,
    placeholder: "Optional: how the model should behave",
  });
  const message = h("textarea", { name: "message", rows: 3, required: true });
  const settings = sampling({ maxTokens: 48, temperature: 0.7 });
  const transcript = h("ol", {
    class: "transcript",
    id: "transcript",
    "aria-live": "polite",
    "aria-label": "Conversation",
  });
  const send = h("button", { type: "submit", class: "primary" }, "Send");
  const stop = h("button", { type: "button", disabled: true }, "Stop");
  const clear = h("button", { type: "button" }, "New conversation");
  const status = h("div", { "aria-live": "polite" });
  let history = [];
  let controller = null;
  const bubble = (role, text) =>
    h(
      "li",
      { class: `turn ${role}`, dataset: { role } },
      h("span", { class: "role" }, role),
      h("div", { class: "text" }, text),
    );

  const form = h(
    "form",
    { class: "card", id: "chat-form" },
    h("div", { class: "grid2" }, field("Model", model), field("System prompt", system)),
    h("div", { class: "grid2" }, settings.fields),
    transcript,
    field("Message", message, "Enter sends; Shift+Enter starts a new line."),
    h("div", { class: "actions" }, send, stop, clear),
    status,
  );
  message.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  clear.addEventListener("click", () => {
    history = [];
    fill(transcript);
    fill(status);
    message.focus();
  });
  stop.addEventListener("click", () => controller?.abort());
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = message.value.trim();
    if (!text) return;
    history.push({ role: "user", content: text });
    transcript.append(bubble("user", text));
    const answer = bubble("assistant", "");
    const out = answer.querySelector(".text");
    out.dataset.streaming = "true";
    transcript.append(answer);
    message.value = "";
    send.disabled = true;
    stop.disabled = false;
    fill(status);
    controller = new AbortController();
    const messages = [
      ...(system.value.trim() ? [{ role: "system", content: system.value.trim() }] : []),
      ...history,
    ];
    try {
      const last = await generate(
        model.value,
        { messages, ...settings.read() },
        (piece) => {
          out.textContent += piece;
        },
        { signal: controller.signal },
      );
      history.push({ role: "assistant", content: out.textContent });
      const usage = last.usage || {};
      fill(
        status,
        notice(
          "info",
          `finished: ${last.finish_reason || "—"} · ${Number(usage.prompt_tokens || 0)} prompt + ${Number(usage.completion_tokens || 0)} generated tokens`,
        ),
      );
    } catch (error) {
      history.pop();
      fill(status, notice("error", error.name === "AbortError" ? "Stopped." : error.message));
    } finally {
      out.dataset.streaming = "false";
      send.disabled = false;
      stop.disabled = true;
      message.focus();
    }
  });
  fill(page, heading("Playground"), form);
  return () => controller?.abort();
}

// --- compare --------------------------------------------------------------------------

export async function compareView(page) {
  const choices = await modelChoices();
  const query = routeQuery();
  const ckpts = choices.checkpoints.map((c) => c.model);
  const a = modelSelect(choices, query.get("a") || ckpts[0] || choices.models[0]?.id || "", {
    name: "a",
  });
  const b = modelSelect(choices, query.get("b") || ckpts.at(-1) || choices.bases[0]?.id || "", {
    name: "b",
  });
  const system = h("textarea", { name: "system", rows: 2, placeholder: "Optional" });
  const prompt = h("textarea", { name: "prompt", rows: 3, required: true });
  const settings = sampling({ maxTokens: 32, temperature: 0 });
  const panes = [a, b].map((select, i) => {
    const name = i ? "B" : "A";
    const out = h("div", { class: "text", id: `answer-${name.toLowerCase()}` });
    const meta = h("p", { class: "help" });
    const title = h("h2", {}, `Model ${name}`);
    return {
      select,
      out,
      meta,
      title,
      el: h(
        "section",
        { class: "card pane", "aria-label": `Answer of model ${name}` },
        title,
        h("p", { class: "mono small" }),
        out,
        meta,
      ),
    };
  });
  const run = h("button", { type: "submit", class: "primary" }, "Run both");
  let controller = null;
  const form = h(
    "form",
    { class: "card", id: "compare-form" },
    h("div", { class: "grid2" }, field("Model A", a), field("Model B", b)),
    h(
      "div",
      { class: "grid2" },
      field("System prompt", system),
      field("Prompt", prompt, "Sent to both as the user's message."),
    ),
    h("div", { class: "grid2" }, settings.fields),
    run,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    controller?.abort();
    controller = new AbortController();
    run.disabled = true;
    const messages = [
      ...(system.value.trim() ? [{ role: "system", content: system.value.trim() }] : []),
      { role: "user", content: prompt.value },
    ];
    await Promise.all(
      panes.map(async (pane) => {
        pane.el.querySelector(".mono").textContent = pane.select.value;
        pane.out.textContent = "";
        pane.out.dataset.streaming = "true";
        fill(pane.meta);
        try {
          const last = await generate(
            pane.select.value,
            { messages, ...settings.read() },
            (piece) => {
              pane.out.textContent += piece;
            },
            { signal: controller.signal },
          );
          const usage = last.usage || {};
          fill(
            pane.meta,
            `finished: ${last.finish_reason || "—"} · ${Number(usage.completion_tokens || 0)} tokens`,
          );
        } catch (error) {
          fill(pane.meta, notice("error", error.message));
        } finally {
          pane.out.dataset.streaming = "false";
        }
      }),
    );
    run.disabled = false;
  });
  fill(
    page,
    heading("Compare"),
    form,
    h(
      "div",
      { class: "side-by-side", id: "compare-answers" },
      panes.map((p) => p.el),
    ),
  );
  return () => controller?.abort();
}

// --- exports --------------------------------------------------------------------------

function exportRow(item) {
  const status = h("span", { class: "download-status", "aria-live": "polite" });
  const downloads = (item.artifacts || []).map((artifact) =>
    h(
      "li",
      {},
      h(
        "button",
        {
          type: "button",
          class: "small",
          "aria-label": `Download ${artifact.path} of ${item.id}`,
          onclick: async (event) => {
            const button = event.currentTarget;
            button.disabled = true;
            try {
              await downloadArtifact(item.id, artifact.path, (done, total) => {
                status.textContent = total ? ` ${Math.round((done / total) * 100)}%` : "";
              });
              status.textContent = " saved";
            } catch (error) {
              status.textContent = ` failed: ${error.message}`;
            } finally {
              button.disabled = false;
            }
          },
        },
        artifact.path,
      ),
      " ",
      h("span", { class: "size" }, bytes(artifact.bytes)),
    ),
  );
  return h(
    "tr",
    { dataset: { export: item.id, state: item.state } },
    h("td", { class: "mono" }, item.id),
    h("td", { class: "mono small" }, item.model_id),
    h("td", {}, enumName(item.format, "FORMAT_")),
    h(
      "td",
      {},
      stateBadge(item.state),
      item.error?.message ? h("p", { class: "error-text" }, item.error.message) : "",
    ),
    h("td", {}, when(item.create_time)),
    h("td", {}, downloads.length ? h("ul", { class: "artifacts" }, downloads) : "—", status),
  );
}

export async function exportsView(page) {
  const choices = await modelChoices();
  const model = modelSelect(
    { ...choices, bases: [] },
    routeQuery().get("model") || choices.models[0]?.id || "",
    { name: "model_id" },
  );
  const format = h(
    "select",
    { name: "format" },
    h("option", { value: "FORMAT_MERGED_SAFETENSORS" }, "merged safetensors"),
    h("option", { value: "FORMAT_ONNX" }, "ONNX"),
  );
  const int8 = h("input", { type: "checkbox", name: "quantize_int8", id: "quantize-int8" });
  const result = h("div", { "aria-live": "polite" });
  const form = h(
    "form",
    { class: "card", id: "export-form" },
    h("h2", {}, "New export"),
    h("div", { class: "grid2" }, field("Model or checkpoint", model), field("Format", format)),
    h(
      "div",
      { class: "field checkbox" },
      int8,
      h("label", { for: "quantize-int8" }, "ONNX: also an int8 quantized model"),
    ),
    h("button", { type: "submit", class: "primary" }, "Export"),
    result,
  );
  const wrap = table(
    "Exports",
    ["Export", "Model", "Format", "State", "Created", "Artifacts"],
    [],
    { id: "exports-table" },
  );
  const body = wrap.querySelector("tbody");
  let shown = "";
  const refresh = async () => {
    const items = await all("/exports", "exports", {}, 5);
    const key = JSON.stringify(items);
    if (key === shown) return; // keep focus and download progress while nothing changed
    shown = key;
    fill(
      body,
      items.length
        ? items.map(exportRow)
        : h("tr", {}, h("td", { colspan: 6, class: "empty" }, "No exports yet.")),
    );
  };
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const body = { model_id: model.value, format: format.value };
      if (int8.checked) body.quantize_int8 = true;
      const created = await post("/exports", body);
      fill(result, notice("ok", `Export ${created.id} is ${enumName(created.state, "STATE_")}.`));
      await refresh();
    } catch (error) {
      fill(result, notice("error", error.message));
    }
  });
  fill(
    page,
    heading("Exports"),
    form,
    h(
      "section",
      { "aria-labelledby": "h-exports" },
      h("h2", { id: "h-exports" }, "All exports"),
      wrap,
    ),
  );
  await refresh();
  return every(2000, refresh);
}
