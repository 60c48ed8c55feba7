// The quiver console: reads api/overview and api/latency, and acts through api/search,
// api/verify and api/flip, relative to the page (so it works behind kubectl proxy or an ingress
// under a path prefix). With a token configured, reads need it too. Everything shown is set as text (never as HTML), so a collection,
// tag or error message cannot inject markup.
"use strict";

const $ = (id) => document.getElementById(id);
const tokenKey = "quiver-console-token";

function headers(json) {
  const h = json ? { "content-type": "application/json" } : {};
  const token = $("token").value.trim();
  if (token) h.authorization = "Bearer " + token;
  return h;
}

async function call(path, body) {
  const init = body === undefined
    ? { headers: headers(false) }
    : { method: "POST", headers: headers(true), body: JSON.stringify(body) };
  const response = await fetch(path, init);
  // A token is configured and this page has none (or a wrong one): ask for it.
  if (response.status === 401) $("token-box").hidden = false;
  let json = null;
  try { json = await response.json(); } catch (_) { /* not JSON: the status says it */ }
  return { ok: response.ok, status: response.status, json };
}

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text === undefined || text === null ? "" : String(text);
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return n.toFixed(i ? 1 : 0) + " " + units[i];
}

// Gate values as people read them: 0.96, not 0.9600000000000003.
function num(v) {
  return Number.isInteger(v) ? String(v) : Number(v.toPrecision(4)).toString();
}

function when(secs) {
  return secs ? new Date(secs * 1000).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z") : "";
}

function fill(select, names) {
  const keep = select.value;
  select.replaceChildren(...names.map((n) => { const o = document.createElement("option"); o.textContent = n; return o; }));
  if (names.includes(keep)) select.value = keep;
}

function showError(text) { $("error").textContent = text || ""; }

let overview = null;

async function refresh() {
  const r = await call("api/overview");
  if (!r.ok) { showError((r.json && r.json.error) || "overview: HTTP " + r.status); return; }
  showError("");
  overview = r.json;
  $("role").textContent = overview.role;
  $("ready").textContent = overview.ready ? "SERVING" : "NOT SERVING";
  $("ready").className = "badge " + (overview.ready ? "ok" : "bad");
  $("token-box").hidden = !(overview.search_token || overview.admin_token);

  const body = $("collections").tBodies[0];
  body.replaceChildren();
  for (const c of overview.collections) {
    const row = body.insertRow();
    row.dataset.collection = c.name;
    cell(row, c.name);
    if (c.error) { cell(row, c.error, "fail").colSpan = 10; continue; }
    cell(row, c.count, "num count");
    cell(row, c.dimensions, "num");
    cell(row, c.distance);
    cell(row, c.partitions.map((p) => p.name + " (" + p.count + ")").join(", "));
    cell(row, c.tags.map((t) => t.name + " (" + t.count + ")").join(", ") + (c.tags_not_shown ? " +" + c.tags_not_shown + " more" : ""));
    cell(row, c.setting);
    cell(row, c.calibration ? c.calibration.recall.toFixed(3) + " (" + c.calibration.target_recall + ")" : "–", "num");
    cell(row, bytes(c.disk_bytes), "num");
    cell(row, bytes(c.memory_bytes), "num");
    const button = document.createElement("button");
    button.textContent = "verify";
    button.className = "verify";
    button.addEventListener("click", () => verify(c.name));
    cell(row, "").appendChild(button);
  }

  const aliases = $("aliases").tBodies[0];
  aliases.replaceChildren();
  for (const a of overview.aliases) {
    const row = aliases.insertRow();
    row.dataset.alias = a.name;
    cell(row, a.name);
    cell(row, a.collection, "serves");
    cell(row, a.previous || "–");
    cell(row, when(a.flipped_at));
    cell(row, a.history.map((f) => f.collection + " @ " + when(f.at)).join(" ← "));
  }
  $("aliases-section").hidden = !overview.flips && overview.aliases.length === 0 && overview.role !== "standalone";
  $("flip-form").hidden = !overview.flips;
  $("aliases-read-only").hidden = overview.flips;

  const names = overview.collections.filter((c) => !c.error).map((c) => c.name);
  fill($("flip-collection"), names);
  fill($("search-collection"), overview.aliases.map((a) => a.name).concat(names));

  $("writer-section").hidden = !overview.writer;
  if (overview.writer) {
    const w = overview.writer;
    $("writer").textContent = w.collection + ": " + w.phase + (w.rows ? ", " + w.rows + " rows" : "") +
      (w.message ? " — " + w.message : "") + (w.stored ? " (in the snapshot store)" : "");
  }
}

async function verify(collection) {
  $("verify-section").hidden = false;
  $("verify-collection").textContent = collection;
  $("verify-verdict").textContent = "running…";
  $("gates").tBodies[0].replaceChildren();
  const r = await call("api/verify", { collection });
  if (!r.ok) { $("verify-verdict").textContent = (r.json && r.json.error) || "HTTP " + r.status; return; }
  showGates(r.json, $("verify-verdict"), $("gates"));
}

function showGates(report, verdict, table) {
  verdict.textContent = (report.passed ? "passed" : "failed") + " (" + report.setting + ", " + report.queries + " queries, k=" + report.k + ")";
  verdict.className = report.passed ? "moved" : "refused";
  const body = table.tBodies[0];
  body.replaceChildren();
  for (const g of report.gates) {
    const row = body.insertRow();
    row.dataset.gate = g.name;
    cell(row, g.name);
    cell(row, g.error ? "not measured: " + g.error : num(g.measured), "num");
    cell(row, g.comparison + " " + num(g.threshold) + (g.threshold_from ? " (" + g.threshold_from + ")" : ""), "num");
    cell(row, num(g.margin), "num");
    cell(row, g.passed ? "yes" : "no", g.passed ? "pass" : "fail");
  }
}

function number(id) {
  const v = $(id).value.trim();
  return v === "" ? undefined : Number(v);
}

async function flip(event) {
  event.preventDefault();
  const result = $("flip-result");
  result.className = "";
  result.textContent = "verifying…";
  const gates = { expected_count: number("flip-count"), min_recall: number("flip-recall"), max_p99_ms: number("flip-p99") };
  const r = await call("api/flip", { alias: $("flip-alias").value.trim(), collection: $("flip-collection").value, gates });
  if (r.ok) {
    result.textContent = "flipped: " + r.json.flipped.collection + " now serves " + $("flip-alias").value.trim();
    result.className = "moved";
  } else if (r.status === 409 && r.json && r.json.refused) {
    result.textContent = "refused: " + r.json.refused;
    result.className = "refused";
  } else {
    result.textContent = (r.json && r.json.error) || "HTTP " + r.status;
    result.className = "refused";
  }
  if (r.json && r.json.report) {
    $("verify-section").hidden = false;
    $("verify-collection").textContent = r.json.report.collection;
    showGates(r.json.report, $("verify-verdict"), $("gates"));
  }
  await refresh();
}

function list(id) {
  return $(id).value.split(",").map((s) => s.trim()).filter((s) => s);
}

async function search(event) {
  event.preventDefault();
  const summary = $("search-summary");
  const body = { collection: $("search-collection").value, k: number("search-k") || 10, partitions: list("search-partitions"), tags: list("search-tags") };
  const item = $("search-item").value.trim();
  if (item !== "") {
    body.item = Number(item);
  } else {
    try { body.vector = JSON.parse($("search-vector").value); } catch (e) { summary.textContent = "the vector is not a JSON array: " + e.message; return; }
  }
  const r = await call("api/search", body);
  const hits = $("hits").tBodies[0];
  hits.replaceChildren();
  if (!r.ok) { summary.textContent = (r.json && r.json.error) || "HTTP " + r.status; summary.className = "refused"; return; }
  summary.className = "";
  summary.textContent = r.json.hits.length + " hits from " + r.json.collection + " in " + r.json.took_ms.toFixed(2) + " ms";
  r.json.hits.forEach((h, i) => {
    const row = hits.insertRow();
    cell(row, i + 1, "num");
    cell(row, h.id, "num");
    cell(row, (h.distance === 0 ? 0 : h.distance).toFixed(4), "num");
  });
}

async function latency() {
  const r = await call("api/latency");
  if (!r.ok) return;
  const points = r.json.points;
  const last = points[points.length - 1] || {};
  const fmt = (v) => (v === null || v === undefined ? "–" : v.toFixed(2) + " ms");
  $("latency-now").textContent = "last " + r.json.step_seconds + " s: " + (last.qps || 0).toFixed(1) + " QPS, p50 " + fmt(last.p50_ms) + ", p99 " + fmt(last.p99_ms);
  const top = Math.max(0.1, ...points.map((p) => p.p99_ms || 0));
  const line = (key) => points
    .map((p, i) => (p[key] === null ? null : (i * 600 / Math.max(1, points.length - 1)).toFixed(1) + "," + (160 - 150 * p[key] / top).toFixed(1)))
    .filter((s) => s)
    .join(" ");
  $("p50-line").setAttribute("points", line("p50_ms"));
  $("p99-line").setAttribute("points", line("p99_ms"));
  $("latency-scale").textContent = "top of the chart: " + top.toFixed(2) + " ms";
}

document.addEventListener("DOMContentLoaded", () => {
  $("token").value = sessionStorage.getItem(tokenKey) || "";
  $("token").addEventListener("change", () => { sessionStorage.setItem(tokenKey, $("token").value); refresh(); });
  $("flip-form").addEventListener("submit", flip);
  $("search-form").addEventListener("submit", search);
  refresh();
  latency();
  setInterval(refresh, 5000);
  setInterval(latency, 5000);
});
