/* procqueue dashboard: a small single-page app, no dependencies.
 * Data: GET /api/... (JSON); live: Server-Sent Events from /api/events (the
 * newest overview, at most 4 a second), polling /api/overview every 2 s if
 * the stream cannot be held. Everything shown from the server goes through
 * textContent, never innerHTML: task names and errors are user data. */
"use strict";

const STATES = ["waiting", "scheduled", "pending", "running", "retrying", "completed", "failed", "cancelled"];
// What a Redis cluster can list (completed and cancelled tasks are found by id only).
const CLUSTER_STATES = ["pending", "scheduled", "running", "waiting", "failed"];
const FINAL = new Set(["completed", "failed", "cancelled"]);
const HISTORY_MAX = 600;          // chart points kept (one a second: 10 minutes)
const SVGNS = "http://www.w3.org/2000/svg";

const session = { csrf: "", read_only: true, show_args: false, kind: "local" };
const live = { overview: null, history: [], mode: "connecting", source: null, poll: null, lastRefresh: 0 };
let route = { page: "overview", params: {} };
let renderToken = 0;              // a newer navigation cancels an older render

// ------------------------------------------------------------------ helpers

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "style") el.style.cssText = v;  // CSSOM: allowed by our CSP, unlike style=""
    else if (k === "text") el.textContent = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** Replace an element's children (arrays flattened, empty values dropped). */
function fill(el, ...kids) {
  el.replaceChildren(...kids.flat(Infinity).filter((k) => k !== null && k !== undefined && k !== false));
}

function svg(tag, attrs) {
  const el = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  return el;
}

async function api(path, options) {
  const opts = Object.assign({ headers: {} }, options || {});
  if (opts.method === "POST") {
    opts.headers["X-CSRF-Token"] = session.csrf;
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(opts.body || {});
  }
  const resp = await fetch(path, opts);
  let data = null;
  try { data = await resp.json(); } catch (e) { data = null; }
  if (!resp.ok) throw new Error((data && data.error) || resp.status + " " + resp.statusText);
  return data;
}

const fmt = {
  int: (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US")),
  pct: (x) => (x === null || x === undefined ? "–" : (x * 100).toFixed(x >= 0.9995 || x === 0 ? 0 : 1) + "%"),
  rate: (x) => (x === null || x === undefined ? "–" : x >= 100 ? Math.round(x).toLocaleString("en-US") : x.toFixed(1)),
  secs(s) {
    if (s === null || s === undefined) return "–";
    if (s < 0.001) return (s * 1e6).toFixed(0) + " µs";
    if (s < 1) return (s * 1000).toFixed(s < 0.01 ? 2 : 1) + " ms";
    if (s < 120) return s.toFixed(s < 10 ? 2 : 1) + " s";
    if (s < 7200) return (s / 60).toFixed(1) + " min";
    return (s / 3600).toFixed(1) + " h";
  },
  bytes(b) {
    if (b === null || b === undefined) return "–";
    const mb = b / 1048576;
    return mb >= 1024 ? (mb / 1024).toFixed(2) + " GB" : mb.toFixed(1) + " MB";
  },
  time(t) {
    if (!t) return "–";
    const d = new Date(t * 1000);
    return d.toLocaleTimeString([], { hour12: false }) + "." + String(d.getMilliseconds()).padStart(3, "0");
  },
  ago(t) {
    if (!t) return "–";
    const s = Date.now() / 1000 - t;
    if (s < 0) return "in " + fmt.secs(-s);
    if (s < 1) return "just now";
    return fmt.secs(s).replace(/\.\d+ /, " ") + " ago";
  },
  when(t) { return t ? new Date(t * 1000).toLocaleString([], { hour12: false }) : "–"; },
};

function badge(state) { return h("span", { class: "badge s-" + state, "data-state": state }, state); }
function taskLink(id) { return h("a", { href: "#/task/" + id, class: "mono" }, "#" + id); }

function toast(message, isError) {
  const el = document.getElementById("toast");
  el.textContent = message;
  el.className = "toast" + (isError ? " error" : "");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => el.classList.add("hidden"), 3500);
}

function card(title, ...body) { return h("section", { class: "card" }, title ? h("h2", {}, title) : null, ...body); }

function table(headers, rows, emptyText) {
  if (!rows.length) return h("div", { class: "empty" }, emptyText || "Nothing here.");
  return h("div", { class: "table-wrap" }, h("table", {},
    h("thead", {}, h("tr", {}, headers.map((x) => h("th", { class: x.endsWith("#") ? "num" : "" }, x.replace(/#$/, ""))))),
    h("tbody", {}, rows)));
}

// ------------------------------------------------------------------ live data

function setMode(mode) {
  live.mode = mode;
  const el = document.getElementById("live");
  el.dataset.mode = mode;
  document.getElementById("live-text").textContent = mode;
}

function acceptOverview(ov, point) {
  live.overview = ov;
  if (point) {
    const last = live.history[live.history.length - 1];
    if (!last || point[0] > last[0]) live.history.push(point);
    while (live.history.length > HISTORY_MAX) live.history.shift();
  }
  const n = ov.stats.dead_letters;
  const pill = document.getElementById("nav-dlq");
  pill.textContent = fmt.int(n);
  pill.classList.toggle("hidden", !n);
  onLive();
}

function connect() {
  if (!window.EventSource) return startPolling();
  const es = new EventSource("/api/events");
  live.source = es;
  let failures = 0;
  es.addEventListener("overview", (ev) => {
    failures = 0;
    setMode("live");
    const data = JSON.parse(ev.data);
    acceptOverview(data.overview, data.point);
  });
  es.onerror = () => {
    failures += 1;
    setMode("connecting");
    if (failures >= 3) { es.close(); live.source = null; startPolling(); }
  };
}

function startPolling() {
  if (live.poll) return;
  const tick = async () => {
    try {
      const ov = await api("/api/overview");
      live.history = ov.history.slice(-HISTORY_MAX);
      acceptOverview(ov, null);
      setMode("polling");
    } catch (e) { setMode("offline"); }
  };
  tick();
  live.poll = setInterval(tick, 2000);
}

/** A live tick: redraw the overview at once; other pages refresh their
 * data at most once a second (they fetch more than the snapshot carries). */
function onLive() {
  if (route.page === "overview") { drawOverview(); return; }
  const now = Date.now();
  if (now - live.lastRefresh < 1000 || document.hidden) return;
  live.lastRefresh = now;
  const refresh = PAGES[route.page] && PAGES[route.page].refresh;
  if (refresh) refresh().catch(() => {});
}

// ------------------------------------------------------------------ overview

const COUNT_ORDER = ["pending", "running", "retrying", "completed", "failed", "waiting", "scheduled", "cancelled"];

function chartCard() {
  return card(h("span", { id: "chart-title" }, "Throughput and success rate"),
    h("div", { class: "figures", id: "ov-figures" }),
    h("div", { class: "chart", id: "ov-chart" }),
    h("div", { class: "legend" },
      h("span", {}, h("i", { class: "ok" }), "completed / s"),
      h("span", {}, h("i", { class: "fail" }), "failed / s"),
      h("span", {}, h("i", { class: "rate" }), "success rate")));
}

function renderOverview(root) {
  if (session.kind === "cluster") return renderClusterOverview(root);
  root.append(
    h("div", { class: "page-head" }, h("h1", {}, "Overview"), h("span", { class: "sub", id: "ov-sub" })),
    h("div", { class: "counts", id: "ov-counts" }),
    h("div", { class: "grid two" },
      chartCard(),
      h("div", { class: "stack" },
        card("Latency · last 10,000 tasks", h("div", { id: "ov-latency" })),
        card("Queue", h("dl", { class: "kv", id: "ov-queue" })))),
    h("div", { style: "height: 16px" }),
    card("Workers", h("div", { id: "ov-workers" })));
  drawOverview();
}

function drawOverview() {
  const ov = live.overview;
  const counts = document.getElementById("ov-counts");
  if (!ov || !counts) return;
  if (ov.kind === "cluster") { drawClusterOverview(ov, counts); return; }
  const s = ov.stats;
  document.getElementById("ov-sub").textContent =
    `${ov.state} · ${s.workers.length} workers (${ov.start_method}) · up ${fmt.secs(s.uptime)}`;
  counts.replaceChildren(...COUNT_ORDER.map((st) =>
    h("a", { class: "count s-" + st, href: "#/tasks?state=" + st },
      h("span", { class: "label" }, st),
      h("span", { class: "value", "data-testid": "count-" + st }, fmt.int(s[st])))),
    h("a", { class: "count s-failed", href: "#/dead-letters" },
      h("span", { class: "label" }, "dead letters"),
      h("span", { class: "value", "data-testid": "count-dead-letters" }, fmt.int(s.dead_letters))));
  document.getElementById("ov-figures").replaceChildren(
    figure(fmt.rate(s.throughput) + "/s", "throughput (10 s)"),
    figure(fmt.pct(s.success_rate), "success rate"),
    figure(fmt.int(s.submitted), "submitted"),
    figure(fmt.int(s.retried), "retried"));
  drawChart(document.getElementById("ov-chart"));
  fill(document.getElementById("ov-queue"), [
    dt("uptime", fmt.secs(s.uptime)), dt("workers", `${s.workers.length} (${ov.start_method})`),
    dt("throttled now", fmt.int(s.throttled)), dt("dead letters", fmt.int(s.dead_letters)),
    dt("dropped from DLQ", fmt.int(s.dead_letters_dropped)), dt("startup deaths", fmt.int(s.startup_deaths))]);
  const lat = (l) => [fmt.secs(l.p50), fmt.secs(l.p95), fmt.secs(l.p99)];
  document.getElementById("ov-latency").replaceChildren(
    table(["", "p50#", "p95#", "p99#"], [
      h("tr", {}, h("td", {}, "queue wait"), lat(s.queue_wait).map((v) => h("td", { class: "num" }, v))),
      h("tr", {}, h("td", {}, "run time"), lat(s.run_time).map((v) => h("td", { class: "num" }, v))),
    ]),
    h("p", { class: "muted" }, `${fmt.int(s.run_time.samples)} samples · queue wait: submit to start`));
  document.getElementById("ov-workers").replaceChildren(table(
    ["slot", "pid", "state", "current task", "done#", "restarts#", "recycled#", "RSS#", "CPU#"],
    s.workers.map((w) => h("tr", {},
      h("td", {}, w.slot), h("td", { class: "mono" }, w.pid || "–"), h("td", {}, badge(w.state)),
      h("td", {}, w.current_task ? taskLink(w.current_task) : h("span", { class: "muted" }, "idle")),
      h("td", { class: "num" }, fmt.int(w.tasks_done)), h("td", { class: "num" }, fmt.int(w.restarts)),
      h("td", { class: "num" }, fmt.int(w.recycled)), h("td", { class: "num" }, fmt.bytes(w.rss)),
      h("td", { class: "num" }, w.cpu_percent === null ? "–" : Math.round(w.cpu_percent) + "%"))),
    "No worker has started yet."));
}

// A Redis cluster: counts by where tasks are in Redis, nodes and their
// worker processes (no latency percentiles: nodes do not publish them).
const CLUSTER_COUNTS = ["pending", "running", "scheduled", "waiting"];

function renderClusterOverview(root) {
  root.append(
    h("div", { class: "page-head" }, h("h1", {}, "Overview"), h("span", { class: "sub", id: "ov-sub" })),
    h("div", { class: "counts", id: "ov-counts" }),
    h("div", { class: "grid two" }, chartCard(), card("Queue", h("dl", { class: "kv", id: "ov-queue" }))),
    h("div", { style: "height: 16px" }),
    card("Nodes", h("div", { id: "ov-nodes" })),
    h("div", { style: "height: 16px" }),
    card("Worker processes", h("div", { id: "ov-workers" })));
  drawOverview();
}

function drawClusterOverview(ov, counts) {
  const s = ov.stats;
  const procs = s.nodes.flatMap((n) => n.processes.map((p) => [n, p]));
  document.getElementById("ov-sub").textContent =
    `queue ${ov.queue} · ${ov.broker} · ${s.nodes.length} nodes · ${procs.length} worker processes`;
  counts.replaceChildren(...CLUSTER_COUNTS.map((st) =>
    h("a", { class: "count s-" + st, href: "#/tasks?state=" + st },
      h("span", { class: "label" }, st),
      h("span", { class: "value", "data-testid": "count-" + st }, fmt.int(s[st])))),
    h("a", { class: "count s-failed", href: "#/dead-letters" },
      h("span", { class: "label" }, "dead letters"),
      h("span", { class: "value", "data-testid": "count-dead-letters" }, fmt.int(s.dead_letters))));
  const about = ov.approximate ? "≈ " : "";
  document.getElementById("ov-figures").replaceChildren(
    figure(fmt.rate(ov.throughput) + "/s", "throughput (10 s)"),
    figure(fmt.pct(ov.success_rate), "success rate"),
    h("div", { class: "figure" }, h("div", { class: "v", "data-testid": "count-completed" }, about + fmt.int(ov.totals[0])), h("div", { class: "l" }, "completed")),
    figure(about + fmt.int(ov.totals[1]), "failed"));
  drawChart(document.getElementById("ov-chart"));
  fill(document.getElementById("ov-queue"), [
    dt("queue", ov.queue), dt("broker", ov.broker), dt("nodes", fmt.int(s.nodes.length)),
    dt("worker processes", fmt.int(procs.length)), dt("busy limit keys", fmt.int(Object.keys(s.limits).length)),
    dt("counting since", fmt.when(ov.since))]);
  document.getElementById("ov-nodes").replaceChildren(table(
    ["node", "host", "pid", "workers#", "tasks held#", "heartbeat#"],
    s.nodes.map((n) => h("tr", { "data-node": n.node },
      h("td", { class: "mono" }, n.node), h("td", {}, n.host), h("td", { class: "mono" }, n.pid),
      h("td", { class: "num" }, fmt.int(n.workers)), h("td", { class: "num" }, fmt.int(n.held)),
      h("td", { class: "num" }, fmt.secs(n.heartbeat_age) + " ago"))),
    "No node serves this queue: start one with procqueue worker --broker ..."));
  document.getElementById("ov-workers").replaceChildren(table(
    ["node", "slot", "pid", "state", "done#", "restarts#", "recycled#", "RSS#", "CPU#"],
    procs.map(([n, w]) => h("tr", {},
      h("td", { class: "mono" }, `${n.host}:${n.pid}`), h("td", {}, w.slot), h("td", { class: "mono" }, w.pid || "–"),
      h("td", {}, badge(w.state)), h("td", { class: "num" }, fmt.int(w.tasks_done)),
      h("td", { class: "num" }, fmt.int(w.restarts)), h("td", { class: "num" }, fmt.int(w.recycled)),
      h("td", { class: "num" }, fmt.bytes(w.rss)),
      h("td", { class: "num" }, w.cpu_percent === null ? "–" : Math.round(w.cpu_percent) + "%"))),
    "No worker process reported yet (nodes report at each heartbeat)."));
}

function figure(value, label) { return h("div", { class: "figure" }, h("div", { class: "v" }, value), h("div", { class: "l" }, label)); }

/** Per-second completions, failures and success rate from the cumulative
 * samples, drawn as inline SVG (no chart library). */
function drawChart(box) {
  const pts = live.history;
  const W = 760, H = 220, L = 44, R = 44, T = 12, B = 26;
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img", "aria-label": "throughput chart" });
  // Rates over a 3-sample window: one-second counts of tiny tasks are jumpy.
  const series = [];
  for (let i = 1; i < pts.length; i++) {
    const j = Math.max(0, i - 3);
    const dt = Math.max(1e-3, pts[i][0] - pts[j][0]);
    const ok = Math.max(0, pts[i][1] - pts[j][1]) / dt;
    const bad = Math.max(0, pts[i][2] - pts[j][2]) / dt;
    series.push({ t: pts[i][0], ok, bad, rate: ok + bad > 0 ? ok / (ok + bad) : null });
  }
  const now = pts.length ? pts[pts.length - 1][0] : Date.now() / 1000;
  // The window grows with the history: 1 minute at first, up to 10.
  const have = pts.length > 1 ? now - pts[0][0] : 0;
  const minutes = Math.min(10, Math.max(1, Math.ceil(have / 60)));
  const span = minutes * 60, t0 = now - span;
  const title = document.getElementById("chart-title");
  if (title) title.textContent = `Throughput and success rate · last ${minutes === 1 ? "minute" : minutes + " minutes"}`;
  const maxY = niceMax(Math.max(1, ...series.map((p) => p.ok + p.bad)));
  const x = (t) => L + ((t - t0) / span) * (W - L - R);
  const y = (v) => T + (1 - v / maxY) * (H - T - B);
  const yr = (r) => T + (1 - r) * (H - T - B);
  for (let i = 0; i <= 4; i++) {
    const v = (maxY * i) / 4;
    root.append(svg("line", { class: "axis", x1: L, x2: W - R, y1: y(v), y2: y(v) }));
    root.append(text(L - 6, y(v) + 4, fmtAxis(v), "end"));
    root.append(text(W - R + 6, yr(i / 4) + 4, (i * 25) + "%", "start"));
  }
  const step = span / 5;
  for (let k = 0; k <= 5; k++) {
    const ago = k * step;
    const label = ago === 0 ? "now" : ago < 60 ? `-${Math.round(ago)}s` : `-${+(ago / 60).toFixed(1)}m`;
    root.append(text(x(now - ago), H - 8, label, k === 0 ? "end" : k === 5 ? "start" : "middle"));
  }
  if (series.length) {
    const vis = series.filter((p) => p.t >= t0);
    const path = (key) => vis.map((p, i) => (i ? "L" : "M") + x(p.t).toFixed(1) + " " + y(key(p)).toFixed(1)).join(" ");
    if (vis.length) {
      root.append(svg("path", { class: "area", d: path((p) => p.ok + p.bad) + ` L${x(vis[vis.length - 1].t)} ${y(0)} L${x(vis[0].t)} ${y(0)} Z` }));
      root.append(svg("path", { class: "line-ok", d: path((p) => p.ok) }));
      root.append(svg("path", { class: "line-fail", d: path((p) => p.bad) }));
      let d = "", pen = false;
      for (const p of vis) {
        if (p.rate === null) { pen = false; continue; }
        d += (pen ? "L" : "M") + x(p.t).toFixed(1) + " " + yr(p.rate).toFixed(1) + " ";
        pen = true;
      }
      if (d) root.append(svg("path", { class: "line-rate", d }));
    }
  }
  box.replaceChildren(root);
}

function text(x, y, s, anchor) {
  const el = svg("text", { class: "tick", x, y, "text-anchor": anchor });
  el.textContent = s;
  return el;
}
function niceMax(v) { const p = Math.pow(10, Math.floor(Math.log10(v))); for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p; return 10 * p; }
function fmtAxis(v) { return v >= 1000 ? (v / 1000).toFixed(v >= 10000 ? 0 : 1) + "k" : String(Math.round(v * 10) / 10); }

// ------------------------------------------------------------------ tasks

function renderTasks(root, params) {
  const state = params.state || "", name = params.name || "";
  const stateSel = h("select", { id: "filter-state", "aria-label": "state" },
    h("option", { value: "" }, "all states"),
    (session.kind === "cluster" ? CLUSTER_STATES : STATES).map((s) => h("option", { value: s, selected: s === state }, s)));
  const nameSel = h("select", { id: "filter-name", "aria-label": "task name" }, h("option", { value: "" }, "all names"));
  const search = h("input", { type: "search", id: "search-id", placeholder: "task id", inputmode: "numeric", value: params.id || "" });
  const go = () => {
    const q = new URLSearchParams();
    if (stateSel.value) q.set("state", stateSel.value);
    if (nameSel.value) q.set("name", nameSel.value);
    location.hash = "#/tasks" + (q.toString() ? "?" + q : "");
  };
  stateSel.addEventListener("change", go);
  nameSel.addEventListener("change", go);
  search.addEventListener("keydown", (e) => {
    if (e.key !== "Enter") return;
    const id = search.value.trim();
    if (/^\d+$/.test(id)) location.hash = "#/task/" + id;
  });
  const list = h("div", { id: "tasks-list" });
  const pager = h("div", { class: "pager" });
  root.append(
    h("div", { class: "page-head" }, h("h1", {}, "Tasks"), h("span", { class: "sub" },
      session.kind === "cluster" ? "in Redis: running, pending, scheduled, waiting, failed · finished ones by id" : "newest first")),
    h("div", { class: "toolbar" }, stateSel, nameSel, search, h("span", { class: "grow" })),
    card(null, list, pager));
  // Cursor paging: a stack of "before" ids, so Newer goes back exactly.
  const view = { stack: [], before: params.before ? Number(params.before) : null };
  async function load() {
    const q = new URLSearchParams({ limit: "50" });
    if (state) q.set("state", state);
    if (name) q.set("name", name);
    if (view.before) q.set("before", String(view.before));
    const data = await api("/api/tasks?" + q);
    if (nameSel.options.length - 1 !== data.names.length) {
      fill(nameSel, h("option", { value: "" }, "all names"),
        data.names.map((n) => h("option", { value: n, selected: n === name }, n)));
    }
    const where = session.kind === "cluster" ? "node" : "worker";  // a cluster's row has its node's pid
    list.replaceChildren(table(["id", "name", "state", "priority#", "attempts#", "submitted", "run time#", where, "error"],
      data.tasks.map((t) => h("tr", { "data-task": t.id },
        h("td", {}, taskLink(t.id)), h("td", {}, t.name), h("td", {}, badge(t.state), progressText(t)),
        h("td", { class: "num" }, t.priority), h("td", { class: "num" }, `${t.attempts}/${t.max_retries + 1}`),
        h("td", { title: fmt.when(t.submitted_at) }, fmt.ago(t.submitted_at)),
        h("td", { class: "num" }, t.finished_at && t.started_at ? fmt.secs(t.finished_at - t.started_at) : "–"),
        h("td", { class: "mono" }, t.worker_pid || "–"),
        h("td", { class: "err", title: t.error || "" }, t.error || ""))),
      "No task matches."));
    const from = view.stack.length * 50 + (data.tasks.length ? 1 : 0);
    pager.replaceChildren(
      h("span", { id: "page-info" }, data.tasks.length
        ? `${fmt.int(from)}–${fmt.int(from + data.tasks.length - 1)}` + (data.total !== null ? ` of ${fmt.int(data.total)}` : "")
        : ""),
      h("button", { id: "page-newer", disabled: !view.stack.length, onclick: () => { view.before = view.stack.pop(); load(); } }, "← Newer"),
      h("button", { id: "page-older", disabled: !data.next_before, onclick: () => { view.stack.push(view.before); view.before = data.next_before; load(); } }, "Older →"));
  }
  PAGES.tasks.refresh = load;
  return load();
}

function progressText(t) {
  if (!t.progress || t.state !== "running") return null;
  const p = t.progress;
  return h("span", { class: "muted" }, " " + (p.fraction !== null ? Math.round(p.fraction * 100) + "%" : fmt.int(p.done)));
}

// ------------------------------------------------------------------ task detail

async function renderTask(root, params) {
  const id = params.id;
  const body = h("div", { class: "stack", id: "task-body" });
  root.append(body);
  async function load() {
    const t = await api("/api/tasks/" + id);
    fill(body, taskView(t));
    PAGES.task.refresh = FINAL.has(t.state) ? null : load;
  }
  PAGES.task.refresh = load;
  return load();
}

function taskView(t) {
  const head = h("div", { class: "page-head" },
    h("h1", {}, `Task #${t.id}`), h("span", { class: "mono" }, t.name), badge(t.state),
    t.schedule ? h("span", { class: "muted" }, "schedule " + t.schedule) : null,
    h("span", { class: "grow" }),
    t.in_dead_letters && !session.read_only
      ? h("button", { class: "primary", "data-testid": "detail-retry", onclick: () => retryLetter(t.id) }, "Retry") : null);
  const timings = card("Timings", h("dl", { class: "kv" },
    dt("submitted", fmt.when(t.submitted_at)), t.due_at ? dt("due", fmt.when(t.due_at)) : null,
    dt("started", fmt.when(t.started_at)), dt("finished", fmt.when(t.finished_at)),
    dt(t.attempts > 1 ? "submit → last start" : "queue wait", fmt.secs(t.queue_wait)),
    dt(t.attempts > 1 ? "last run time" : "run time", fmt.secs(t.run_time)),
    dt("timeout", t.timeout ? fmt.secs(t.timeout) : "none"), dt("priority", t.priority),
    dt("attempts", `${t.attempts} of ${t.max_retries + 1}`), t.node !== undefined ? dt("node", t.node || "–") : dt("worker", t.worker_pid || "–"),
    t.limit_key ? dt("limit key", t.limit_key + (t.throttled ? " (waiting for room)" : "")) : null));
  const prog = t.progress ? card("Progress",
    h("div", { class: "progress" }, h("div", { style: `width: ${Math.round((t.progress.fraction || 0) * 100)}%` })),
    h("div", {}, `${fmt.int(t.progress.done)}${t.progress.total ? " of " + fmt.int(t.progress.total) : ""}`,
      t.progress.message ? " · " + t.progress.message : "")) : null;
  let call;
  if (!t.show_args) call = card("Call", h("p", { class: "muted" }, "Arguments are hidden (show_args=False)."));
  else {
    const parts = [];
    if (!t.call) parts.push(h("p", { class: "muted" }, FINAL.has(t.state) ? "The queue drops a task's arguments once it has ended (a dead letter keeps them)." : "–"));
    else if (t.call.note) parts.push(h("p", { class: "muted" }, t.call.note));
    else {
      parts.push(h("div", { class: "muted" }, "arguments"), h("ul", { class: "args mono", "data-testid": "args" },
        t.call.args.map((a) => h("li", {}, a)),
        Object.entries(t.call.kwargs).map(([k, v]) => h("li", {}, `${k}=${v}`))));
      if (!t.call.args.length && !Object.keys(t.call.kwargs).length) parts.push(h("p", { class: "muted" }, "none"));
    }
    if (t.state === "completed" && t.result === undefined) parts.push(h("p", { class: "muted" }, "The result is held by the caller's future only."));
    if (t.result !== undefined) parts.push(h("div", { class: "muted", style: "margin-top: 10px" }, "result"), h("pre", { "data-testid": "result" }, t.result));
    call = card("Call", ...parts);
  }
  const states = t.linked_states || {};
  const depRow = (i) => h("div", { class: "row" }, taskLink(i), states[i] ? badge(states[i]) : h("span", { class: "muted" }, "no longer kept"));
  const deps = card("Dependencies", h("div", { class: "grid halves" },
    h("div", {}, h("div", { class: "muted" }, "waits for"), h("div", { class: "deps" }, t.after.length ? t.after.map(depRow) : h("span", { class: "muted" }, "nothing"))),
    h("div", {}, h("div", { class: "muted" }, "needed by"), h("div", { class: "deps" }, t.dependents.length ? t.dependents.map(depRow) : h("span", { class: "muted" }, "nothing")))));
  const attempts = card(`Attempts · ${t.attempts}`, t.errors.length
    ? t.errors.map(attemptView)
    : h("p", { class: "muted" }, t.state === "completed" ? "Succeeded on attempt " + t.attempts + "." : "No failed attempt."),
    t.state === "completed" && t.errors.length ? h("p", { class: "muted" }, `Attempt ${t.attempts} succeeded.`) : null);
  return [head, h("div", { class: "grid two" }, h("div", { class: "stack" }, attempts, call), h("div", { class: "stack" }, timings, prog, deps))];
}

function attemptView(e) {
  const exit = e.exitcode !== null && e.exitcode !== undefined ? ` · exit code ${e.exitcode}` : "";
  return h("div", { class: "attempt" },
    h("div", { class: "head" }, h("strong", {}, `Attempt ${e.attempt}`), h("span", { class: "exc" }, e.exc_type),
      h("span", { class: "muted" }, `worker ${e.worker_pid || "–"}${exit} · ${fmt.when(e.finished_at)}`)),
    h("div", {}, e.message),
    e.traceback ? h("pre", { class: "traceback", "data-testid": "traceback" }, e.traceback) : null);
}

function dt(k, v) { return [h("dt", {}, k), h("dd", {}, v)]; }

// ------------------------------------------------------------------ dead letters

async function retryLetter(id) {
  try {
    const r = await api(`/api/dead-letters/${id}/retry`, { method: "POST" });
    toast(`Task #${id} queued again as #${r.new}`);
    location.hash = "#/task/" + r.new;
  } catch (e) { toast(e.message, true); }
}

function renderDeadLetters(root, params) {
  const flt = { name: params.name || "", exception: params.exception || "" };
  const nameSel = h("select", { id: "dlq-name", "aria-label": "task name" }, h("option", { value: "" }, "all names"));
  const exc = h("input", { type: "search", id: "dlq-exception", placeholder: "error type contains…", value: flt.exception });
  const apply = () => {
    const q = new URLSearchParams();
    if (nameSel.value) q.set("name", nameSel.value);
    if (exc.value.trim()) q.set("exception", exc.value.trim());
    location.hash = "#/dead-letters" + (q.toString() ? "?" + q : "");
  };
  nameSel.addEventListener("change", apply);
  exc.addEventListener("keydown", (e) => { if (e.key === "Enter") apply(); });
  const actions = session.read_only ? [] : [
    h("button", { id: "retry-all", class: "primary", onclick: async () => {
      if (!confirm("Run every matching dead letter again?")) return;
      try { const r = await api("/api/dead-letters/retry", { method: "POST", body: flt }); toast(`${Object.keys(r.requeued).length} task(s) queued again`); load(); }
      catch (e) { toast(e.message, true); }
    } }, "Retry all matching"),
    h("button", { id: "purge-all", class: "danger", onclick: async () => {
      if (!confirm("Drop every matching dead letter? This cannot be undone.")) return;
      try { const r = await api("/api/dead-letters/purge", { method: "POST", body: flt }); toast(`${r.purged} dead letter(s) purged`); load(); }
      catch (e) { toast(e.message, true); }
    } }, "Purge matching")];
  const list = h("div", { id: "dlq-list" });
  const info = h("span", { class: "sub" });
  root.append(h("div", { class: "page-head" }, h("h1", {}, "Dead letters"), info),
    h("div", { class: "toolbar" }, nameSel, exc, h("span", { class: "grow" }), actions), card(null, list));
  let offset = 0;
  async function load() {
    const q = new URLSearchParams({ limit: "50", offset: String(offset) });
    if (flt.name) q.set("name", flt.name);
    if (flt.exception) q.set("exception", flt.exception);
    const d = await api("/api/dead-letters?" + q);
    if (nameSel.options.length - 1 !== d.names.length) {
      fill(nameSel, h("option", { value: "" }, "all names"), d.names.map((n) => h("option", { value: n, selected: n === flt.name }, n)));
    }
    info.textContent = `${fmt.int(d.total)} matching · ${fmt.int(d.size)} kept` + (d.dropped ? ` · ${fmt.int(d.dropped)} dropped when full` : "") + (d.partial ? " · filter reads the newest 10,000" : "");
    list.replaceChildren(table(["id", "name", "attempts#", "failed", "error", ""],
      d.dead_letters.map((l) => h("tr", { "data-letter": l.id },
        h("td", {}, taskLink(l.id)), h("td", {}, l.name), h("td", { class: "num" }, l.attempts),
        h("td", { title: fmt.when(l.failed_at) }, fmt.ago(l.failed_at)),
        h("td", {}, l.error ? h("div", {}, h("span", { class: "exc", style: "color: var(--danger); font-weight: 600" }, l.error.exc_type), ": ", l.error.message,
          l.error.traceback ? h("details", {}, h("summary", {}, "traceback"), h("pre", { "data-testid": "traceback" }, l.error.traceback)) : null) : "–"),
        h("td", { class: "num", style: "white-space: nowrap" }, session.read_only ? null : [
          h("button", { class: "small", "data-testid": "retry-" + l.id, onclick: () => retryLetter(l.id) }, "Retry"), " ",
          h("button", { class: "small danger", "data-testid": "purge-" + l.id, onclick: async () => {
            try { await api("/api/dead-letters/purge", { method: "POST", body: { ids: [l.id] } }); toast(`#${l.id} purged`); load(); }
            catch (e) { toast(e.message, true); }
          } }, "Purge")]))),
      "No dead letters. Tasks that fail for good land here, with their tracebacks."));
  }
  PAGES["dead-letters"].refresh = load;
  return load();
}

// ------------------------------------------------------------------ schedules, limits

function renderSchedules(root) {
  const list = h("div", { id: "schedules-list" });
  root.append(h("div", { class: "page-head" }, h("h1", {}, "Schedules")), card(null, list));
  const act = (name, op) => async () => {
    try { const r = await api(`/api/schedules/${encodeURIComponent(name)}/${op}`, { method: "POST" }); toast(op === "run-now" ? `run queued as #${r.task_id}` : `${name}: ${op}d`); load(); }
    catch (e) { toast(e.message, true); }
  };
  async function load() {
    const d = await api("/api/schedules");
    list.replaceChildren(table(["name", "trigger", "next run", "runs#", "skipped#", "last runs", ""],
      d.schedules.map((s) => h("tr", {},
        h("td", {}, h("strong", {}, s.name)), h("td", { class: "mono" }, s.trigger),
        h("td", {}, s.paused ? badge("paused") : h("span", { title: fmt.when(s.next_run) }, fmt.ago(s.next_run))),
        h("td", { class: "num" }, fmt.int(s.runs)),
        h("td", { class: "num", title: `overlap ${s.skipped.overlap} · misfire ${s.skipped.misfire} · catchup ${s.skipped.catchup}` },
          fmt.int(s.skipped.overlap + s.skipped.misfire + s.skipped.catchup)),
        h("td", {}, h("div", { class: "dots" }, s.last_runs.map(([id, st]) =>
          h("a", { href: "#/task/" + id, class: "s-" + (st || "cancelled"), title: `#${id} ${st || "no longer kept"}` })))),
        h("td", { class: "num", style: "white-space: nowrap" }, session.read_only ? null : [
          s.paused ? h("button", { class: "small", onclick: act(s.name, "resume") }, "Resume")
            : h("button", { class: "small", onclick: act(s.name, "pause") }, "Pause"), " ",
          h("button", { class: "small", onclick: act(s.name, "run-now") }, "Run now")]))),
      "No schedules. queue.schedule(fn, cron=...) or every=... adds one."));
  }
  PAGES.schedules.refresh = load;
  return load();
}

function renderLimits(root) {
  const list = h("div", { id: "limits-list" });
  root.append(h("div", { class: "page-head" }, h("h1", {}, "Limits")), card(null, list));
  async function load() {
    const d = await api("/api/limits");
    const configured = d.limits.filter((r) => !r.concrete);
    const keys = d.limits.filter((r) => r.concrete);
    list.replaceChildren(
      h("h2", {}, "Configured"),
      table(["key", "limits"], configured.map((r) => h("tr", {}, h("td", { class: "mono" }, r.key + (r.pattern ? " (pattern)" : "")), h("td", { class: "mono" }, r.limits.join(", ")))),
        "No limits configured (key_limits=...)."),
      h("h2", { style: "margin-top: 20px" }, `Keys in use · ${fmt.int(d.keys_total)}`),
      table(["key", "running#", "max running#", "waiting#", "tokens#", "rate#"],
        keys.map((r) => h("tr", {}, h("td", { class: "mono" }, r.key), h("td", { class: "num" }, r.running),
          h("td", { class: "num" }, r.max_running === null ? "–" : r.max_running), h("td", { class: "num" }, fmt.int(r.waiting)),
          h("td", { class: "num" }, r.tokens.map((x) => x.toFixed(1)).join(" / ") || "–"),
          h("td", { class: "num" }, r.rates.map((x) => fmt.rate(x) + "/s").join(" / ") || r.rate || "–"))),
        session.kind === "cluster" ? "No limit key has tasks running or waiting now." : "No task has used a limit key yet."));
  }
  PAGES.limits.refresh = load;
  return load();
}

// ------------------------------------------------------------------ routing

const PAGES = {
  overview: { render: renderOverview },
  tasks: { render: renderTasks },
  task: { render: renderTask },
  "dead-letters": { render: renderDeadLetters },
  schedules: { render: renderSchedules },
  limits: { render: renderLimits },
};

function parseRoute() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [path, query] = raw.split("?");
  const params = Object.fromEntries(new URLSearchParams(query || ""));
  const parts = path.split("/").filter(Boolean);
  if (parts[0] === "task" && /^\d+$/.test(parts[1] || "")) return { page: "task", params: Object.assign(params, { id: parts[1] }) };
  if (parts[0] && PAGES[parts[0]]) return { page: parts[0], params };
  return { page: "overview", params };
}

async function navigate() {
  route = parseRoute();
  const mine = ++renderToken;
  for (const a of document.querySelectorAll("#nav a")) {
    a.classList.toggle("active", a.dataset.page === route.page || (route.page === "task" && a.dataset.page === "tasks"));
  }
  for (const p of Object.values(PAGES)) p.refresh = null;
  const root = document.getElementById("app");
  root.replaceChildren();
  try {
    await PAGES[route.page].render(root, route.params);
  } catch (e) {
    if (mine === renderToken) root.replaceChildren(h("div", { class: "card empty" }, e.message));
  }
}

async function boot() {
  try {
    Object.assign(session, await api("/api/session"));
  } catch (e) {
    document.getElementById("app").replaceChildren(h("div", { class: "card empty" }, "Cannot reach the dashboard: " + e.message));
    return;
  }
  document.getElementById("readonly").classList.toggle("hidden", !session.read_only);
  document.body.classList.toggle("read-only", session.read_only);
  try {
    const ov = await api("/api/overview");
    live.history = ov.history.slice(-HISTORY_MAX);
    live.overview = ov;
  } catch (e) { /* the stream will bring it */ }
  window.addEventListener("hashchange", navigate);
  await navigate();
  connect();
}

document.addEventListener("DOMContentLoaded", boot);
