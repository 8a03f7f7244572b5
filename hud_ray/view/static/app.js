// hud-ray view: one page, routed by the URL's hash (so every view, filters included, is a
// deep link). Data comes from /api/... or, in a static export, from window.HUDRAY_BUNDLE.
"use strict";

const BUNDLE = window.HUDRAY_BUNDLE || null;
const $ = (sel, el = document) => el.querySelector(sel);
const main = $("#main");
let current = { refresh: null, runId: null, charts: [] };
let versions = {};

// ---------- data ----------
async function api(path, params = {}, body = null) {
  if (BUNDLE) return fromBundle(path, params);
  const qs = new URLSearchParams(params).toString();
  const init = body ? { method: "POST", body: JSON.stringify(body),
                        headers: { "content-type": "application/json" } } : {};
  const resp = await fetch(path + (qs ? "?" + qs : ""), init);
  const data = await resp.json().catch(() => ({ error: `HTTP ${resp.status}` }));
  if (!resp.ok) throw new Error(data.error || `HTTP ${resp.status}`);
  return data;
}

function fromBundle(path, params) {
  const parts = path.split("/").slice(2).map(decodeURIComponent); // runs, RID, what, key
  if (path === "/api/runs") return { roots: ["(static export)"], runs: BUNDLE.runs };
  const run = BUNDLE.run[parts[1]];
  if (parts[0] !== "runs" || !run) throw new Error("not in this static export (it needs the server)");
  const what = parts[2], key = parts.slice(3).join("/");
  if (what === "rollout") return run.rows.find((r) => r.rollout_key === key);
  if (what === "steps") return { steps: run.steps[key] || [] };
  if (what === "rollouts") return localPage(run, params);
  if (run[what]) return run[what];
  throw new Error(`${what}: needs the server (static export)`);
}

function localPage(run, params) {
  let rows = run.rows.filter((r) => matches(r, params, run));
  const sort = params.sort || "finished_at", dir = params.dir === "asc" ? 1 : -1;
  rows = rows.slice().sort((a, b) => (a[sort] ?? "") < (b[sort] ?? "") ? -dir
                                   : (a[sort] ?? "") > (b[sort] ?? "") ? dir : 0);
  const size = +params.size || 100, page = +params.page || 1;
  return { last_row: rows.length, last_page: Math.max(1, Math.ceil(rows.length / size)),
           data: rows.slice((page - 1) * size, page * size) };
}

const TEXT_FILTERS = { template: "template_id", variant: "variant", error_type: "error_type",
                       provider: "provider", node: "node_id", model: "model", slug: "slug" };
function matches(r, p, run) {
  const list = (k) => (p[k] || "").split(",").filter(Boolean);
  if (list("status").length && !list("status").includes(r.status)) return false;
  for (const [k, col] of Object.entries(TEXT_FILTERS)) {
    const v = list(k);
    if (v.length && !v.includes(r[col] ?? "(none)")) return false;
  }
  if (p.reward_min !== undefined && p.reward_min !== "" && !(r.reward >= +p.reward_min)) return false;
  if (p.reward_max !== undefined && p.reward_max !== "" && !(r.reward <= +p.reward_max)) return false;
  if (p.q) {
    const q = p.q.toLowerCase();
    if (![r.prompt, r.answer, r.error_message, r.slug].some((t) => (t || "").toLowerCase().includes(q))) return false;
  }
  if (p.cluster) {
    const c = run.triage.clusters.find((c) => clusterId(c) === p.cluster);
    if (!c || !c.keys.includes(r.rollout_key)) return false;
  }
  return true;
}

// The grid's 450 kB load only on the pages that show one (the overview opens without it).
let tabulatorLoaded = null;
function needTabulator() {
  tabulatorLoaded ??= new Promise((resolve, reject) => {
    const script = document.createElement("script");
    script.src = (BUNDLE ? "static/" : "/static/") + "vendor/tabulator.min.js";
    script.onload = resolve;
    script.onerror = () => reject(new Error("could not load the grid (tabulator.min.js)"));
    document.head.appendChild(script);
  });
  return tabulatorLoaded;
}

// ---------- helpers ----------
function esc(text) {
  return String(text ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;",
    '"': "&quot;", "'": "&#39;" }[c]));
}
const f3 = (v) => (v === null || v === undefined || Number.isNaN(v) ? "-" : (+v).toFixed(3));
const ci = (c) => (c ? `[${f3(c[0])}, ${f3(c[1])}]` : "-");
const runLink = (id, sub = "") => `#/run/${encodeURIComponent(id)}${sub}`;
const clusterId = (c) => `${c.status}|${c.error_type}|${c.signature}`;
function banner(msg) { const b = $("#banner"); b.hidden = !msg; b.textContent = msg || ""; }
function hashParams() {
  const h = location.hash.slice(1), i = h.indexOf("?");
  return Object.fromEntries(new URLSearchParams(i < 0 ? "" : h.slice(i + 1)));
}
function setHashParams(params) {
  const h = location.hash.slice(1), path = h.split("?")[0];
  const clean = Object.fromEntries(Object.entries(params).filter(([, v]) => v !== "" && v != null));
  const qs = new URLSearchParams(clean).toString();
  history.replaceState(null, "", "#" + path + (qs ? "?" + qs : ""));
}
function chart(canvas, config) {
  const c = new Chart(canvas, { ...config, options: { animation: false, maintainAspectRatio: false,
                                                      ...(config.options || {}) } });
  current.charts.push(c);
  return c;
}
function nav(runId) {
  $("#nav").innerHTML = runId ? ["", "/rollouts", "/triage", "/dist", "/sql"].map((s) =>
    `<a href="${runLink(runId, s)}">${s ? s.slice(1) : esc(runId)}</a>`).join("")
    + `<a href="#/compare?a=${encodeURIComponent(runId)}">compare</a>` : "";
}

// ---------- routing ----------
async function route() {
  current.charts.forEach((c) => c.destroy());
  current = { refresh: null, runId: null, charts: [] };
  banner("");
  const path = location.hash.slice(1).split("?")[0] || "/";
  const m = path.match(/^\/run\/([^/]+)(?:\/(\w+))?(?:\/(.+))?$/);
  try {
    if (m) {
      const runId = decodeURIComponent(m[1]);
      current.runId = runId;
      nav(runId);
      const page = m[2] || "overview";
      const pages = { overview, rollouts, rollout, triage, dist, sql };
      if (!pages[page]) throw new Error(`no page ${page}`);
      await pages[page](runId, m[3] ? decodeURIComponent(m[3]) : null);
    } else if (path === "/compare") { nav(hashParams().a); await compare(); }
    else if (path === "/pair") { nav(hashParams().a); await pair(); }
    else { nav(null); await runs(); }
  } catch (err) { banner(err.message); }
  document.body.dataset.ready = "1";
}
window.addEventListener("hashchange", () => { document.body.dataset.ready = ""; route(); });

// Live: poll the runs list; a page whose run changed refreshes itself in place.
async function poll() {
  if (BUNDLE) { $("#live").textContent = "static export"; return; }
  try {
    const data = await api("/api/runs");
    const now = Object.fromEntries(data.runs.map((r) => [r.run_id, r.version + r.state]));
    const changed = Object.keys(now).filter((k) => versions[k] !== undefined && versions[k] !== now[k]);
    const added = Object.keys(now).some((k) => versions[k] === undefined) && Object.keys(versions).length;
    versions = now;
    $("#live").textContent = `live · ${new Date().toLocaleTimeString()}`;
    if (current.refresh && (changed.includes(current.runId) || (!current.runId && (changed.length || added)))) {
      await current.refresh();
    }
    if (current.runId && !now[current.runId]) banner(`run ${current.runId} is no longer on disk`);
  } catch (err) { $("#live").textContent = `offline: ${err.message}`; }
}

// ---------- runs ----------
async function runs() {
  main.innerHTML = `<h1>Runs</h1><div id="runs"></div><h2>Compare two runs</h2>
    <form id="cmp">A <select name="a"></select> B <select name="b"></select> <button>compare</button></form>`;
  const draw = async () => {
    const data = await api("/api/runs");
    if (!data.runs.length) {
      $("#runs").innerHTML = `<p class="muted">No run under ${esc(data.roots.join(", "))} yet
        (a run is a directory with a manifest.json). This list updates as runs appear.</p>`;
      return;
    }
    data.runs.sort((a, b) => (b.started_at || "").localeCompare(a.started_at || ""));  // newest first
    $("#runs").innerHTML = `<table class="stats" id="runs-table"><tr><th>run</th><th>state</th><th>rows</th>
      <th>status</th><th>mean reward</th><th>started</th><th>config</th></tr>${data.runs.map((r) => `
      <tr class="click" data-run="${esc(r.run_id)}"><td><a href="${runLink(r.run_id)}">${esc(r.run_id)}</a></td>
      <td><span class="state ${esc(r.state)}">${esc(r.state)}</span></td>
      <td data-field="rows">${r.rows ?? "-"}${r.expected ? " / " + r.expected : ""}</td>
      <td class="l">${esc(Object.entries(r.counts || {}).map(([k, v]) => `${k}=${v}`).join(" ") || r.error || "")}
        ${r.unreadable_parts?.length ? `<span class="loss">${r.unreadable_parts.length} unreadable part(s)</span>` : ""}</td>
      <td data-field="mean_reward">${f3(r.mean_reward)}</td><td class="l">${esc((r.started_at || "").slice(0, 19))}</td>
      <td class="l">${esc(Object.entries(r.config || {}).map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`).join(" ").slice(0, 160))}</td></tr>`).join("")}</table>`;
    const opts = data.runs.map((r) => `<option>${esc(r.run_id)}</option>`).join("");
    $("#cmp [name=a]").innerHTML = opts; $("#cmp [name=b]").innerHTML = opts;
  };
  $("#cmp").onsubmit = (e) => { e.preventDefault(); const f = new FormData(e.target);
    location.hash = `#/compare?a=${encodeURIComponent(f.get("a"))}&b=${encodeURIComponent(f.get("b"))}`; };
  await draw();
  current.refresh = draw;
}

// ---------- overview ----------
async function overview(runId) {
  const draw = async () => {
    const o = await api(`/api/runs/${encodeURIComponent(runId)}/overview`);
    current.charts.forEach((c) => c.destroy()); current.charts = [];
    const r = o.run, x = o.extra, hasVariant = o.templates.some((t) => t.variant);
    const statRow = (t, attrs) => `<tr ${attrs}>${hasVariant ? `<td class="l">${esc(t.variant)}</td>` : ""}
      <td class="l">${esc(t.template)}</td><td data-field="rollouts">${t.rollouts}</td><td data-field="graded">${t.graded}</td>
      <td data-field="failed">${t.failed}</td><td data-field="mean_reward">${f3(t.mean_reward)}</td>
      <td data-field="ci95">${ci(t.ci95)}</td><td data-field="graded_mean_reward">${f3(t.graded_mean_reward)}</td>
      <td data-field="pass@1">${f3(t["pass@1"])}</td>
      <td data-field="pass@k">${f3(Object.entries(t).filter(([k]) => k.startsWith("pass@") && k !== "pass@1").map(([, v]) => v)[0] ?? t["pass@1"])}</td>
      <td>${t.usage.tokens}</td><td>${t.usage.cost_usd === null ? "-" : t.usage.cost_usd.toFixed(4)}</td></tr>`;
    const head = `<tr>${hasVariant ? "<th>variant</th>" : ""}<th>template</th><th>n</th><th>graded</th><th>failed</th>
      <th>mean reward</th><th>95% CI</th><th>graded mean</th><th>pass@1</th><th>pass@k</th><th>tokens</th><th>cost $</th></tr>`;
    main.innerHTML = `<h1>${esc(runId)} <span class="state ${esc(r.state)}">${esc(r.state)}</span></h1>
      <div class="cards" id="cards">
        <div class="card">rollouts<b data-field="rows">${o.rows}</b></div>
        ${Object.entries(o.status).sort().map(([k, v]) => `<a class="card" href="${runLink(runId, `/rollouts?status=${encodeURIComponent(k)}`)}">${esc(k)}<b data-status="${esc(k)}">${v}</b></a>`).join("")}
        <div class="card">mean reward<b data-field="overall_mean">${f3(o.overall?.mean_reward)}</b></div>
        <div class="card">retries<b>${x.retries}</b></div>
        <div class="card">sandbox-seconds<b>${x.sandbox_seconds === null ? "-" : Math.round(x.sandbox_seconds)}</b></div>
        <div class="card">cost $<b>${x.cost_usd === null ? "-" : x.cost_usd.toFixed(4)}</b></div>
        ${x.cost_per_solved.map((c) => `<div class="card">$ per solved${c.variant ? " · " + esc(c.variant) : ""}<b>${c.usd_per_solved === null ? "-" : c.usd_per_solved.toFixed(4)}</b></div>`).join("")}
      </div>
      ${r.unreadable_parts?.length ? `<p class="loss">unreadable part(s), skipped: ${esc(r.unreadable_parts.join(", "))}</p>` : ""}
      ${o.variants.length ? `<h2>Variants</h2><table class="stats" id="variants">${head.replace("<th>template</th>", "")}
        ${o.variants.map((v) => statRow({ ...v, template: "*" }, `data-variant="${esc(v.variant)}"`).replace(/<td class="l">\*<\/td>/, "")).join("")}</table>
        <p><a href="#/compare?a=${encodeURIComponent(runId)}&a_variant=${encodeURIComponent(o.variants[0].variant)}&b=${encodeURIComponent(runId)}&b_variant=${encodeURIComponent(o.variants[1].variant)}">compare ${esc(o.variants[0].variant)} vs ${esc(o.variants[1].variant)} by task</a></p>` : ""}
      <h2>Reward by template</h2><table class="stats" id="templates">${head}
        ${o.templates.map((t) => statRow(t, `class="click" data-template="${esc(t.template)}" data-variant="${esc(t.variant)}"`)).join("")}
        ${o.overall && o.templates.length > 1 ? statRow({ ...o.overall, variant: "" }, `data-template="(all)" data-variant=""`) : ""}</table>
      <p class="muted">mean reward: failed rollouts count as 0 (graded mean: ok rollouts only); 95% CI: Wilson for 0/1 rewards, Wilson's bound for rewards in [0,1], bootstrap otherwise — the same numbers as <code>hud-ray report</code>.</p>
      <div class="grid2"><div><h2>Phase latency (s)</h2><table class="stats" id="phases"><tr><th>phase</th><th>p50</th><th>p95</th></tr>
        ${Object.entries(o.phases).map(([p, v]) => `<tr data-phase="${esc(p)}"><td>${esc(p)}</td><td data-field="p50">${f3(v.p50)}</td><td data-field="p95">${f3(v.p95)}</td></tr>`).join("")}</table>
        <h2>Failures by class</h2><table class="stats" id="failures">${Object.entries(o.failures).sort().map(([k, v]) =>
          `<tr class="click" data-status="${esc(k.split(":")[0])}"><td>${esc(k)}</td><td>${v}</td></tr>`).join("") || "<tr><td>none</td></tr>"}</table>
        <p><a href="${runLink(runId, "/triage")}">triage failures →</a></p></div>
        <div><h2>Throughput (rollouts/s, per ${x.throughput.bucket_s} s)</h2><div class="chart"><canvas id="tp"></canvas></div></div></div>`;
    chart($("#tp"), { type: "line", data: { labels: x.throughput.t.map((t) => new Date(t * 1000).toLocaleTimeString()),
      datasets: [{ label: "finished", data: x.throughput.rows_per_s }, { label: "ok", data: x.throughput.ok_per_s }] } });
    main.querySelectorAll("#templates tr.click").forEach((tr) => tr.onclick = () => {
      location.hash = runLink(runId, `/rollouts?template=${encodeURIComponent(tr.dataset.template)}`
        + (tr.dataset.variant ? `&variant=${encodeURIComponent(tr.dataset.variant)}` : "")); });
    main.querySelectorAll("#failures tr.click").forEach((tr) => tr.onclick = () => {
      location.hash = runLink(runId, `/rollouts?status=${encodeURIComponent(tr.dataset.status)}`); });
  };
  await draw();
  current.refresh = draw;
}

// ---------- rollouts table ----------
const DEFAULT_COLS = ["slug", "template_id", "variant", "status", "reward", "error_type",
  "total_s", "n_turns", "n_tool_calls", "cost_usd", "provider", "node_id", "finished_at"];

async function rollouts(runId) {
  const base = `/api/runs/${encodeURIComponent(runId)}`;
  const [facets] = await Promise.all([api(`${base}/facets`), needTabulator()]);
  let params = hashParams();
  const visible = params.cols ? params.cols.split(",") : DEFAULT_COLS;
  const pick = (name) => {
    const chosen = (params[name] || "").split(",");
    return `<details><summary>${name}${params[name] ? " (" + chosen.length + ")" : ""}</summary><div>${
      (facets[name] || []).map(([v, n]) => `<label style="flex-direction:row"><input type="checkbox" data-f="${name}" value="${esc(v)}"
      ${chosen.includes(String(v)) ? "checked" : ""}> ${esc(v)} <span class="muted">${n}</span></label>`).join("")}</div></details>`;
  };
  main.innerHTML = `<h1>Rollouts of ${esc(runId)} — <span id="count">…</span> rows</h1>
    <form class="filters" id="filters">
      ${["status", "template", "variant", "error_type", "provider", "node", "model"].map(pick).join("")}
      <label>reward ≥<input type="number" step="any" name="reward_min" value="${esc(params.reward_min || "")}"></label>
      <label>reward ≤<input type="number" step="any" name="reward_max" value="${esc(params.reward_max || "")}"></label>
      <label>text in prompt / answer / error<input type="search" name="q" value="${esc(params.q || "")}"></label>
      ${params.cluster ? `<label>cluster<input name="cluster" value="${esc(params.cluster)}" size="30"></label>` : ""}
      <details><summary>columns</summary><div>${facets.columns.map((c) => `<label style="flex-direction:row">
        <input type="checkbox" data-col="${c}" ${visible.includes(c) ? "checked" : ""}> ${c}</label>`).join("")}</div></details>
      <span>export: <a id="exp-pq" href="#">parquet</a> · <a id="exp-jl" href="#">jsonl</a> · steps <a id="exp-spq" href="#">parquet</a> · <a id="exp-sjl" href="#">jsonl</a></span>
    </form><div id="grid"></div>`;
  const filterParams = () => {
    const out = {};
    const form = $("#filters");
    for (const el of form.querySelectorAll("input[name]")) if (el.value !== "") out[el.name] = el.value;
    for (const name of ["status", "template", "variant", "error_type", "provider", "node", "model"]) {
      const v = [...form.querySelectorAll(`input[data-f=${name}]:checked`)].map((e) => e.value);
      if (v.length) out[name] = v.join(",");
    }
    for (const k of ["slug", "keys"]) if (params[k]) out[k] = params[k];
    return out;
  };
  const grid = new Tabulator("#grid", {
    height: "calc(100vh - 220px)", layout: "fitData", placeholder: "no rollout matches",
    progressiveLoad: "scroll", paginationSize: 200, sortMode: "remote", ajaxURL: base + "/rollouts",
    ajaxRequestFunc: async (url, config, p) => {
      const s = (p.sort && p.sort[0]) || {};
      const resp = await api(url, { ...filterParams(), page: p.page, size: p.size,
                                    ...(s.field ? { sort: s.field, dir: s.dir } : {}) });
      $("#count").textContent = resp.last_row;
      return resp;
    },
    initialSort: params.sort ? [{ column: params.sort, dir: params.dir || "desc" }] : [],
    columns: facets.columns.map((c) => ({ title: c, field: c, visible: visible.includes(c),
      headerSort: true, formatter: c === "status" ? (cell) => `<span class="state ${esc(cell.getValue())}">${esc(cell.getValue())}</span>`
        : (cell) => { const v = cell.getValue(); return esc(typeof v === "number" && !Number.isInteger(v) ? +v.toPrecision(5) : v); },
      maxWidth: 420 })),
  });
  grid.on("rowClick", (e, row) => { location.hash = runLink(runId, `/rollout/${encodeURIComponent(row.getData().rollout_key)}`); });
  grid.on("dataSorted", (sorters) => { const s = sorters[0]; params = { ...params, sort: s?.field || "", dir: s?.dir || "" };
    setHashParams({ ...filterParams(), cols: params.cols, sort: params.sort, dir: params.dir }); });
  const apply = () => {
    const cols = [...$("#filters").querySelectorAll("input[data-col]:checked")].map((e) => e.dataset.col);
    params = { ...params, cols: cols.join(",") === DEFAULT_COLS.join(",") ? "" : cols.join(",") };
    setHashParams({ ...filterParams(), cols: params.cols, sort: params.sort, dir: params.dir });
    grid.setData();
  };
  $("#filters").addEventListener("change", (e) => {
    if (e.target.dataset.col) {
      e.target.checked ? grid.showColumn(e.target.dataset.col) : grid.hideColumn(e.target.dataset.col);
    }
    apply();
  });
  $("#filters").addEventListener("submit", (e) => { e.preventDefault(); apply(); });
  const exp = (fmt, what) => (e) => { e.preventDefault();
    if (BUNDLE) { banner("export needs the server (static export)"); return; }
    location.href = `${base}/export?${new URLSearchParams({ ...filterParams(), format: fmt, what })}`; };
  $("#exp-pq").onclick = exp("parquet", "rollouts"); $("#exp-jl").onclick = exp("jsonl", "rollouts");
  $("#exp-spq").onclick = exp("parquet", "steps"); $("#exp-sjl").onclick = exp("jsonl", "steps");
  // A live run: at the top of the grid, reload it; scrolled down, keep the reader's place
  // and only update the count (the new rows are there on the next scroll to the top).
  current.refresh = async () => {
    const holder = $("#grid .tabulator-tableholder");
    if (!holder || holder.scrollTop === 0) { await grid.setData(); return; }
    const resp = await api(base + "/rollouts", { ...filterParams(), page: 1, size: 1 });
    $("#count").textContent = resp.last_row;
  };
}

// ---------- one rollout ----------
const LONG = 1500;
function block(label, text, cls = "") {
  if (text === null || text === undefined || text === "") return "";
  let shown = String(text);
  try { if (/^[[{]/.test(shown)) shown = JSON.stringify(JSON.parse(shown), null, 2); } catch (e) { /* not JSON: as is */ }
  const body = `<pre class="${cls}">${esc(shown)}</pre>`;
  if (shown.length <= LONG) return `<div><b>${label}</b>${body}</div>`;
  // Collapsed, never cut: the whole text is inside, one click away.
  return `<details class="long"><summary><b>${label}</b> <span class="muted">(${shown.length} chars, click to expand)</span>
    <pre>${esc(shown.slice(0, 200))}…</pre></summary>${body}</details>`;
}

function stepHtml(s) {
  const err = s.is_error || s.error;
  const meta = [s.kind, s.model, s.finish_reason && `stop: ${s.finish_reason}`,
    s.prompt_tokens != null && `tokens: ${s.prompt_tokens} in / ${s.completion_tokens} out`,
    s.cached_tokens && `cached ${s.cached_tokens}`, s.latency_s != null && `${f3(s.latency_s)} s`,
    s.cost_usd != null && `$${s.cost_usd.toFixed(5)}`, s.tool_name && `tool: ${s.tool_name}`,
    s.tool_call_id && `id ${s.tool_call_id}`].filter(Boolean).map(esc).join(" · ");
  return `<div class="step ${esc(s.kind)} ${err ? "err" : ""}" data-index="${s.index}"><div class="meta">#${s.index} ${meta}</div>
    ${block("content", s.content)}${block("tool arguments", s.tool_args)}${block("tool result", s.tool_result)}
    ${block("error", s.error, "err")}${block("extra", s.extra)}</div>`;
}

async function rolloutHtml(runId, key) {
  const base = `/api/runs/${encodeURIComponent(runId)}`;
  const r = await api(`${base}/rollout/${encodeURIComponent(key)}`);
  if (!r) throw new Error(`no rollout ${key}`);
  const phases = ["throttle", "provision", "ready", "start", "agent", "grade", "teardown", "total"];
  const html = `<h2>${esc(r.slug)} <span class="state ${esc(r.status)}">${esc(r.status)}</span> reward ${f3(r.reward)}</h2>
    <table class="stats rollout-meta">${[["rollout_key", r.rollout_key], ["template", r.template_id], ["variant", r.variant],
      ["agent", r.agent], ["provider / node", `${r.provider} / ${r.node_id || "-"}`], ["sandbox", r.sandbox_id],
      ["attempts", r.attempts], ["model", r.model], ["turns / tool calls / tool errors", `${r.n_turns ?? "-"} / ${r.n_tool_calls ?? "-"} / ${r.n_tool_errors ?? "-"}`],
      ["tokens", r.prompt_tokens == null ? "-" : `${r.prompt_tokens} in / ${r.completion_tokens} out`],
      ["cost $", r.cost_usd == null ? "-" : r.cost_usd.toFixed(5)], ["stop reason", r.stop_reason],
      ["timings (s)", phases.map((p) => r[p + "_s"] != null ? `${p} ${f3(r[p + "_s"])}` : "").filter(Boolean).join(" · ")],
      ["finished", r.finished_at]].map(([k, v]) => `<tr><td>${esc(k)}</td><td class="l">${esc(v ?? "-")}</td></tr>`).join("")}</table>
    ${r.error_type || r.error_message ? `<div class="step err">${block(`error: ${esc(r.error_type || "")} ${esc(r.timeout_phase ? "(timeout in " + r.timeout_phase + ")" : "")}`, r.error_message || "-", "err")}</div>` : ""}
    ${block("task args", r.args)}${block("prompt", r.prompt)}${block("answer", r.answer)}${block("grade", r.grade)}
    <h2>Trajectory <input type="search" class="tsearch" placeholder="search the transcript"> <span class="muted tcount"></span></h2>
    <div class="steps muted">loading steps…</div>`;
  return { html, row: r, loadSteps: async (el) => {
    const { steps } = await api(`${base}/steps/${encodeURIComponent(key)}`);
    const box = $(".steps", el);
    box.classList.remove("muted");
    box.innerHTML = steps.length ? steps.map(stepHtml).join("") : "<p class='muted'>no steps recorded for this rollout</p>";
    $(".tsearch", el).oninput = (e) => searchSteps(el, e.target.value);
  } };
}

function searchSteps(el, text) {
  const q = text.toLowerCase();
  let hits = 0;
  el.querySelectorAll(".step[data-index]").forEach((s) => {
    const hit = !q || s.textContent.toLowerCase().includes(q);
    s.hidden = !hit; hits += hit ? 1 : 0;
    if (hit && q) s.querySelectorAll("details").forEach((d) => { d.open = d.textContent.toLowerCase().includes(q); });
  });
  $(".tcount", el).textContent = q ? `${hits} step(s) match` : "";
}

async function rollout(runId, key) {
  const view = await rolloutHtml(runId, key);
  main.innerHTML = `<p><a href="${runLink(runId, "/rollouts")}">← rollouts</a></p>${view.html}`;
  await view.loadSteps(main);
}

// ---------- compare ----------
async function compare() {
  const p = hashParams();
  const { runs: all } = await api("/api/runs");
  const opts = (sel) => all.map((r) => `<option ${r.run_id === sel ? "selected" : ""}>${esc(r.run_id)}</option>`).join("");
  const vopts = (run, sel) => ["", ...((all.find((r) => r.run_id === run) || {}).variants || [])]
    .map((v) => `<option value="${esc(v)}" ${v === (sel || "") ? "selected" : ""}>${esc(v || "(all variants)")}</option>`).join("");
  main.innerHTML = `<h1>Compare, paired by task</h1>
    <form id="cmpform">A <select name="a">${opts(p.a)}</select><select name="a_variant">${vopts(p.a, p.a_variant)}</select>
      &nbsp; B <select name="b">${opts(p.b)}</select><select name="b_variant">${vopts(p.b, p.b_variant)}</select> <button>compare</button></form>
    <div id="result"></div>`;
  $("#cmpform").onsubmit = (e) => { e.preventDefault();
    location.hash = "#/compare?" + new URLSearchParams([...new FormData(e.target)].filter(([, v]) => v)); };
  if (!p.a || !p.b) return;
  const c = await api("/api/compare", p);
  const side = (pre) => ({ run: p[pre], variant: p[pre + "_variant"] || "" });
  const A = side("a"), B = side("b");
  const pk = Object.keys(c).find((k) => k.startsWith("pass@") && k !== "pass@1");
  const line = (name, s) => `<tr><td>${name}</td><td>${f3(s.a)}</td><td>${f3(s.b)}</td><td data-field="diff">${f3(s.diff)}</td><td>${ci(s.ci95)}</td></tr>`;
  $("#result").innerHTML = `<div class="cards"><div class="card">tasks paired<b>${c.tasks}</b></div>
      <div class="card win">A wins<b id="wins">${c.wins}</b></div><div class="card loss">A loses<b id="losses">${c.losses}</b></div>
      <div class="card">ties<b id="ties">${c.ties}</b></div><div class="card">McNemar p<b>${c.mcnemar.p < 0.001 ? c.mcnemar.p.toExponential(1) : f3(c.mcnemar.p)}</b></div></div>
    ${c.only_a || c.only_b ? `<p class="muted">${c.only_a} task(s) only in A, ${c.only_b} only in B (not paired)</p>` : ""}
    <h2>Difference A − B (paired bootstrap 95% CI over tasks)</h2>
    <table class="stats"><tr><th>metric</th><th>A</th><th>B</th><th>A − B</th><th>95% CI</th></tr>${line("pass@1", c["pass@1"])}${pk ? line(pk, c[pk]) : ""}</table>
    <h2>Tasks that flipped (${c.flips.length})</h2>
    <table class="stats" id="flips"><tr><th>task</th><th>A success</th><th>B success</th><th></th></tr>${c.flips.map((f) => `
      <tr class="click" data-slug="${esc(f.slug)}"><td class="l">${esc(f.slug)}</td><td>${f3(f.a)}</td><td>${f3(f.b)}</td>
      <td class="${f.diff > 0 ? "win" : "loss"}">${f.diff > 0 ? "A wins" : "B wins"}</td></tr>`).join("")}</table>`;
  main.querySelectorAll("#flips tr.click").forEach((tr) => tr.onclick = () => {
    location.hash = "#/pair?" + new URLSearchParams({ a: A.run, a_variant: A.variant, b: B.run, b_variant: B.variant, slug: tr.dataset.slug }); });
}

async function pair() {
  const p = hashParams();
  const first = async (run, variant) => {
    const page = await api(`/api/runs/${encodeURIComponent(run)}/rollouts`,
      { slug: p.slug, ...(variant ? { variant } : {}), sort: "repeat", dir: "asc", size: 50 });
    return page.data;
  };
  const [ra, rb] = await Promise.all([first(p.a, p.a_variant), first(p.b, p.b_variant)]);
  main.innerHTML = `<h1>${esc(p.slug)}: A vs B</h1><div class="grid2"><div id="pa"></div><div id="pb"></div></div>`;
  for (const [el, run, rows, name] of [[$("#pa"), p.a, ra, "A"], [$("#pb"), p.b, rb, "B"]]) {
    if (!rows.length) { el.innerHTML = `<p>${name}: no rollout of this task</p>`; continue; }
    const view = await rolloutHtml(run, rows[0].rollout_key);
    el.innerHTML = `<h2>${name}: ${esc(run)} ${esc(rows[0].variant || "")} <span class="muted">(repeat 0 of ${rows.length})</span></h2>${view.html}`;
    await view.loadSteps(el);
  }
}

// ---------- triage ----------
async function triage(runId) {
  const t = await api(`/api/runs/${encodeURIComponent(runId)}/triage`);
  const counts = (list) => list.map(([k, n]) => `${esc(k)}: ${n}`).join(", ");
  main.innerHTML = `<h1>Failure triage — ${t.failed} failed rollout(s)</h1>
    <div class="chart" style="max-width:900px"><canvas id="classes"></canvas></div>
    <h2>Clusters by normalised error signature (${t.clusters.length})</h2>
    <table class="stats" id="clusters"><tr><th>count</th><th>class</th><th>signature</th><th>by template</th><th>by provider</th><th>by node</th></tr>
    ${t.clusters.map((c, i) => `<tr class="click" data-i="${i}"><td>${c.count}</td><td class="l">${esc(c.status)}:${esc(c.error_type)}</td>
      <td class="l" title="${esc(c.example || "")}"><code>${esc(c.signature)}</code></td><td class="l">${counts(c.by_template)}</td>
      <td class="l">${counts(c.by_provider)}</td><td class="l">${counts(c.by_node)}</td></tr>`).join("")}</table>
    <h2>By provider and node</h2>
    <table class="stats" id="fleet"><tr><th>provider</th><th>node</th><th>rollouts</th><th>failed</th><th>infra_error</th>
      <th>retries</th><th>sandbox start p50 s</th><th>p95 s</th><th>total p95 s</th></tr>
    ${t.fleet.map((f) => `<tr class="click" data-node="${esc(f.node)}"><td class="l">${esc(f.provider)}</td><td class="l">${esc(f.node.slice(0, 16))}</td>
      <td>${f.rollouts}</td><td>${f.failed}</td><td>${f.infra}</td><td>${f.retries}</td><td>${f3(f.start_p50)}</td>
      <td>${f3(f.start_p95)}</td><td>${f3(f.total_p95)}</td></tr>`).join("")}</table>`;
  main.querySelectorAll("#fleet tr.click").forEach((tr) => tr.onclick = () => {
    location.hash = runLink(runId, `/rollouts?node=${encodeURIComponent(tr.dataset.node === "-" ? "(none)" : tr.dataset.node)}`); });
  chart($("#classes"), { type: "bar", data: { labels: t.classes.map(([k]) => k),
    datasets: [{ label: "rollouts", data: t.classes.map(([, n]) => n) }] }, options: { indexAxis: "y" } });
  main.querySelectorAll("#clusters tr.click").forEach((tr) => tr.onclick = () => {
    location.hash = runLink(runId, `/rollouts?cluster=${encodeURIComponent(clusterId(t.clusters[+tr.dataset.i]))}`); });
  current.refresh = () => triage(runId);
}

// ---------- distributions ----------
async function dist(runId) {
  const d = await api(`/api/runs/${encodeURIComponent(runId)}/dist`);
  const names = { reward: "reward", total_s: "duration (s)", tokens: "tokens", cost_usd: "cost ($)" };
  main.innerHTML = `<h1>Distributions per variant</h1><div class="charts">${Object.keys(names).map((k) =>
    `<div><h2>${names[k]}</h2>${d[k] ? `<div class="chart"><canvas id="d-${k}"></canvas></div>` : "<p class='muted'>no values</p>"}</div>`).join("")}</div>`;
  for (const k of Object.keys(names)) {
    if (!d[k]) continue;
    const e = d[k].edges;
    chart($(`#d-${k}`), { type: "bar", data: { labels: e.slice(0, -1).map((x) => +x.toPrecision(3)),
      datasets: Object.entries(d[k].series).map(([v, counts]) => ({ label: v || "(no variant)", data: counts })) } });
  }
}

// ---------- SQL ----------
async function sql(runId) {
  if (BUNDLE) throw new Error("the SQL box needs the server (static export)");
  await needTabulator();
  main.innerHTML = `<h1>SQL over ${esc(runId)}</h1><p class="muted">One read-only SELECT over <code>rollouts</code> and
    <code>steps</code> (duckdb). No writes, ATTACH, COPY, extensions, or files outside the run.</p>
    <form id="sqlform"><textarea name="sql" rows="6">${esc(hashParams().sql || "SELECT template_id, status, count(*) AS n, avg(reward) AS mean_reward\nFROM rollouts GROUP BY ALL ORDER BY n DESC")}</textarea>
    <label>row limit <input type="number" name="limit" value="1000" min="1" max="10000"></label> <button>run</button> <span id="sqlinfo" class="muted"></span></form>
    <div id="sqlgrid"></div>`;
  $("#sqlform").onsubmit = async (e) => {
    e.preventDefault();
    const f = new FormData(e.target);
    setHashParams({ sql: f.get("sql") });
    try {
      const res = await api(`/api/runs/${encodeURIComponent(runId)}/sql`, {}, { sql: f.get("sql"), limit: f.get("limit") });
      banner("");
      $("#sqlinfo").textContent = `${res.rows.length} row(s)${res.truncated ? ` (limit ${res.limit} reached)` : ""}`;
      new Tabulator("#sqlgrid", { maxHeight: "60vh", layout: "fitData",
        columns: res.columns.map((c, i) => ({ title: esc(c), field: "c" + i })),  // a title is HTML to the grid
        data: res.rows.map((row) => Object.fromEntries(row.map((v, i) => ["c" + i, v]))) });
    } catch (err) { banner(err.message); $("#sqlinfo").textContent = "error"; }
  };
}

route();
poll();
if (!BUNDLE) setInterval(poll, 2000);
