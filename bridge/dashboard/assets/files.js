// Files: upload with a progress bar, the list, and a file's validation report.

import { ApiError, all, get, seg, upload } from "./api.js";
import { bytes, enumName, every, field, fill, h, notice, stateBadge, table, when } from "./dom.js";

function heading(text, ...after) {
  return h("header", { class: "page-head" }, h("h1", { tabindex: "-1" }, text), ...after);
}

/** A file's validation report: counts, then every problem as line, JSON path and code. */
export function report(file) {
  const v = file.validation || {};
  const problems = v.problems || [];
  const total = Number(v.problem_count || 0);
  const facts = [
    ["State", stateBadge(file.state)],
    ["Format", v.format || "—"],
    ["Valid examples", String(Number(v.example_count || 0))],
    ["Lines", String(Number(v.line_count || 0))],
    ["Estimated tokens", String(Number(v.token_estimate || 0))],
    ["Problems", String(total)],
  ];
  const parts = [
    h(
      "dl",
      { class: "summary" },
      facts.map(([k, x]) => [h("dt", {}, k), h("dd", {}, x)]),
    ),
  ];
  if (problems.length) {
    parts.push(
      table(
        `Validation problems of ${file.filename}`,
        ["Line", "JSON path", "Code", "Problem"],
        problems.map((p) =>
          h(
            "tr",
            { dataset: { line: Number(p.line || 0) } },
            h("td", {}, Number(p.line || 0) ? String(Number(p.line)) : "file"),
            h("td", { class: "mono" }, p.path || "—"),
            h("td", { class: "mono" }, p.code),
            h("td", {}, p.message),
          ),
        ),
        { class: "report" },
      ),
    );
    if (total > problems.length) {
      parts.push(
        h("p", { class: "help" }, `Showing the first ${problems.length} of ${total} problems.`),
      );
    }
  }
  if ((v.labels || []).length) {
    parts.push(
      table(
        "Labels",
        ["Label", "Examples", "First line"],
        v.labels.map((l) =>
          h(
            "tr",
            {},
            h("td", {}, l.label),
            h("td", {}, String(Number(l.example_count))),
            h("td", {}, String(Number(l.first_line))),
          ),
        ),
      ),
    );
  }
  return h("div", { class: "validation", id: `report-${file.id}` }, parts);
}

function fileRow(file) {
  const v = file.validation || {};
  return h(
    "tr",
    { dataset: { file: file.id } },
    h("td", {}, h("a", { href: `#/files/${seg(file.id)}`, class: "mono" }, file.id)),
    h("td", {}, file.filename),
    h("td", {}, enumName(file.purpose, "PURPOSE_")),
    h("td", {}, bytes(file.bytes)),
    h("td", {}, stateBadge(file.state)),
    h("td", {}, String(Number(v.example_count || 0))),
    h("td", {}, String(Number(v.problem_count || 0))),
    h("td", {}, when(file.create_time)),
  );
}

export async function filesView(page) {
  const input = h("input", {
    type: "file",
    name: "file",
    required: true,
    accept: ".jsonl,.json,.txt,.md",
  });
  const purpose = h(
    "select",
    { name: "purpose" },
    h("option", { value: "PURPOSE_FINE_TUNE" }, "fine-tune (validated)"),
    h("option", { value: "PURPOSE_USER_DATA" }, "user data (kept as is)"),
  );
  const bar = h("progress", { id: "upload-progress", max: 100, value: 0 });
  const percent = h("span", { id: "upload-percent" }, "");
  const result = h("div", { id: "upload-result", "aria-live": "polite" });
  const button = h("button", { type: "submit", class: "primary" }, "Upload");
  const form = h(
    "form",
    { class: "card", id: "upload-form" },
    h("h2", {}, "Upload"),
    h(
      "div",
      { class: "grid2" },
      field(
        "File",
        input,
        "JSONL chat, prompt/completion, preference or classification data; or .txt/.md documents.",
      ),
      field("Purpose", purpose),
    ),
    h(
      "div",
      { class: "field" },
      h("label", { for: "upload-progress" }, "Upload progress"),
      h("span", { class: "progress" }, bar, percent),
    ),
    button,
    result,
  );
  const wrap = table(
    "Files",
    ["File", "Name", "Purpose", "Size", "State", "Examples", "Problems", "Uploaded"],
    [],
    { id: "files-table" },
  );
  const body = wrap.querySelector("tbody");
  const refresh = async () => {
    const files = await all("/files", "files", {}, 5);
    fill(
      body,
      files.length
        ? files.map(fileRow)
        : h("tr", {}, h("td", { colspan: 8, class: "empty" }, "No files yet.")),
    );
  };
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const chosen = input.files[0];
    if (!chosen) return;
    button.disabled = true;
    bar.value = 0;
    percent.textContent = "0%";
    fill(result, notice("info", `Uploading ${chosen.name}…`));
    try {
      const file = await upload(chosen, purpose.value, (loaded, total) => {
        const p = total ? Math.round((loaded / total) * 100) : 0;
        bar.value = p;
        percent.textContent = `${p}%`;
      });
      bar.value = 100;
      percent.textContent = "100%";
      const ok = file.state !== "STATE_ERROR";
      fill(
        result,
        notice(
          ok ? "ok" : "error",
          ok
            ? `Uploaded ${file.filename} as ${file.id}.`
            : `${file.filename} has problems: it cannot train until they are fixed.`,
        ),
        report(file),
        ok && file.purpose === "PURPOSE_FINE_TUNE"
          ? h(
              "a",
              { href: `#/jobs/new?file=${encodeURIComponent(file.id)}`, class: "button" },
              "Train on this file",
            )
          : "",
      );
      form.reset();
      await refresh();
    } catch (error) {
      fill(
        result,
        notice(
          "error",
          error instanceof ApiError ? `Upload refused: ${error.message}` : String(error),
        ),
      );
    } finally {
      button.disabled = false;
    }
  });
  fill(
    page,
    heading("Files"),
    form,
    h("section", { "aria-labelledby": "h-files" }, h("h2", { id: "h-files" }, "All files"), wrap),
  );
  await refresh();
  return every(5000, refresh);
}

export async function fileView(page, fileId) {
  let file;
  try {
    file = await get(`/files/${seg(fileId)}`);
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) {
      fill(
        page,
        heading("File not found"),
        notice("error", `No file ${fileId} in this organization.`),
      );
      return () => {};
    }
    throw error;
  }
  fill(
    page,
    heading(h("span", {}, "File ", h("span", { class: "mono" }, file.id))),
    h(
      "p",
      {},
      `${file.filename} · ${bytes(file.bytes)} · ${enumName(file.purpose, "PURPOSE_")} · uploaded `,
      when(file.create_time),
    ),
    h("p", { class: "mono small" }, `sha256 ${file.sha256}`),
    file.state === "STATE_PROCESSED" && file.purpose === "PURPOSE_FINE_TUNE"
      ? h(
          "a",
          { href: `#/jobs/new?file=${encodeURIComponent(file.id)}`, class: "button primary" },
          "Train on this file",
        )
      : "",
    h(
      "section",
      { class: "card", "aria-labelledby": "h-report" },
      h("h2", { id: "h-report" }, "Validation report"),
      report(file),
    ),
  );
  return () => {};
}
