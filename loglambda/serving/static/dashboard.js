// loglambda dashboard: vanilla JS over the read API, charts by Plotly (served by the app
// from the installed plotly package). Every number comes from /v1/dashboard/*, which
// runs SQL over the same merged views as POST /v1/query; the badge shows what the
// answers cover (batch version and horizon, speed position, lag).
//
// Time ranges ("last 1 hour" ...) end now -- unless nothing arrived in that span, then
// they end where the data ends (an imported 2015 log still shows its last 24 h).
// "all data" spans the data's own range. Times are UTC throughout.
"use strict";

(() => {
  const RANGES = { "1h": 3600, "6h": 21600, "24h": 86400, "7d": 604800 };
  const LABELS = { "1h": "1 hour", "6h": "6 hours", "24h": "24 hours", "7d": "7 days" };
  // The API's steps; a series keeps at most TARGET points (as the API's own choice).
  const STEPS = [["1m", 60], ["5m", 300], ["15m", 900], ["30m", 1800], ["1h", 3600],
    ["3h", 10800], ["6h", 21600], ["12h", 43200], ["1d", 86400]];
  const TARGET = 360;
  const LEVELS = ["trace", "debug", "info", "notice", "warn", "error", "fatal"];
  const LEVEL_COLORS = { trace: "#a0aec0", debug: "#718096", info: "#3182ce", notice: "#319795",
    warn: "#d69e2e", error: "#e53e3e", fatal: "#742a2a" };
  const CLASS_COLORS = { "1xx": "#a0aec0", "2xx": "#38a169", "3xx": "#3182ce", "4xx": "#d69e2e",
    "5xx": "#e53e3e", other: "#718096" };
  const TOKEN_KEY = "loglambda.token";
  const $ = (id) => document.getElementById(id);

  // What tests and curious users can read from the console.
  const state = { refreshes: 0, errors: 0, lastError: null, totals: null, visitors: null,
    freshness: null, window: null, points: {} };
  window.loglambda = state;

  // -- token: ?token= once (then removed from the address bar), else sessionStorage --
  const params = new URLSearchParams(location.search);
  if (params.has("token")) {
    sessionStorage.setItem(TOKEN_KEY, params.get("token"));
    params.delete("token");
  }
  const token = () => sessionStorage.getItem(TOKEN_KEY) || "";

  class AuthError extends Error {}

  async function api(path, query) {
    const url = new URL(path, location.origin);
    for (const [k, v] of Object.entries(query || {})) if (v != null) url.searchParams.set(k, v);
    const headers = token() ? { Authorization: `Bearer ${token()}` } : {};
    const res = await fetch(url, { headers, cache: "no-store" });
    if (res.status === 401 || res.status === 403) {
      throw new AuthError(res.status === 401 ? "The token is missing or unknown."
        : "The token lacks the read scope.");
    }
    const body = await res.json().catch(() => ({}));
    if (!res.ok) throw new Error(`${path}: ${body.detail || res.statusText} (${res.status})`);
    return body;
  }

  // -- controls and the address bar ---------------------------------------------------
  const controls = { range: $("range"), refresh: $("refresh"), from: $("from"), to: $("to") };
  for (const name of ["range", "refresh", "from", "to"]) {
    if (params.has(name)) controls[name].value = params.get(name);
  }
  if (!controls.range.value) controls.range.value = "24h";
  if (controls.refresh.value === "" && params.has("refresh")) {
    // A refresh period the menu does not offer (tests use 1 s): add it.
    const s = Number(params.get("refresh"));
    controls.refresh.add(new Option(`${s} s`, String(s), true, true));
  }
  const syncUrl = () => {
    const p = new URLSearchParams({ range: controls.range.value, refresh: controls.refresh.value });
    if (controls.range.value === "custom") { p.set("from", controls.from.value); p.set("to", controls.to.value); }
    history.replaceState(null, "", `${location.pathname}?${p}`);
  };
  const showCustom = () => { $("custom").hidden = controls.range.value !== "custom"; };

  // -- choosing the window ------------------------------------------------------------
  const parse = (iso) => (iso ? Date.parse(iso) : null);
  const localInput = (ms) => new Date(ms).toISOString().slice(0, 16);
  const fromInput = (v) => (v ? Date.parse(`${v}:00Z`) : null);
  const fmt = (ms) => new Date(ms).toISOString().slice(0, 16).replace("T", " ");
  const floorTo = (ms, s) => Math.floor(ms / (s * 1000)) * s * 1000;
  const ceilTo = (ms, s) => Math.ceil(ms / (s * 1000)) * s * 1000;
  const pickStep = (spanS) => STEPS.find(([, s]) => spanS / s <= TARGET) || STEPS[STEPS.length - 1];

  function chooseWindow(range, span) {
    const lasts = [parse(span.traffic.last), parse(span.logs.last)].filter((x) => x !== null);
    const firsts = [parse(span.traffic.first), parse(span.logs.first)].filter((x) => x !== null);
    const now = Date.now();
    let from, to, note = "";
    if (range === "all") {
      if (!firsts.length) return null;
      from = Math.min(...firsts); to = Math.max(...lasts);
    } else if (range === "custom") {
      from = fromInput(controls.from.value); to = fromInput(controls.to.value);
      if (from === null || to === null || from >= to) throw new Error("custom range: give from < to");
    } else {
      const seconds = RANGES[range];
      to = now;
      const end = lasts.length ? Math.max(...lasts) : null;
      if (end !== null && end <= now - seconds * 1000) {
        to = end;
        note = `Nothing arrived in the last ${LABELS[range]}: showing the last ${LABELS[range]} of data, up to ${fmt(end)} UTC.`;
      }
      from = to - seconds * 1000;
    }
    const [step, s] = pickStep((to - from) / 1000);
    return { from: new Date(floorTo(from, s)).toISOString(), to: new Date(ceilTo(to, s)).toISOString(), step, note };
  }

  // -- rendering ----------------------------------------------------------------------
  const nf = new Intl.NumberFormat("en-US");
  const plotTime = (iso) => iso.replace("Z", ""); // Plotly shows the wall time: UTC
  const bytes = (n) => {
    const units = ["B", "KB", "MB", "GB", "TB", "PB"];
    let i = 0; while (n >= 1000 && i < units.length - 1) { n /= 1000; i += 1; }
    return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
  };
  const LAYOUT = { margin: { l: 56, r: 56, t: 8, b: 40 }, font: { size: 11 }, showlegend: true,
    legend: { orientation: "h", y: -0.18 }, paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)" };
  const CONFIG = { displaylogo: false, responsive: true };

  // A count axis: from zero, whole numbers only (Plotly would label 0.5 requests).
  function countAxis(values, extra) {
    const max = Math.max(0, ...values.filter((v) => v != null));
    return { rangemode: "tozero", tickformat: ",d", ...(max <= 5 ? { dtick: 1 } : {}), ...extra };
  }

  function draw(id, traces, layout) {
    const empty = traces.every((t) => !(t.x || []).length);
    const annotations = empty ? [{ text: "no data in this range", showarrow: false, xref: "paper",
      yref: "paper", x: 0.5, y: 0.5, font: { size: 14, color: "#5f6b7a" } }] : [];
    state.points[id] = traces.reduce((n, t) => n + (t.x || []).filter((_, i) => t.y[i] != null).length, 0);
    return Plotly.react($(id), traces, { ...LAYOUT, ...layout, annotations }, CONFIG);
  }

  function renderTraffic(a) {
    const x = a.series.t.map(plotTime);
    draw("chart-traffic", [
      { x, y: a.series.requests, name: "requests", type: "scatter", mode: "lines", fill: "tozeroy", line: { color: "#3182ce" } },
      { x, y: a.series.errors_5xx, name: "5xx errors", type: "scatter", mode: "lines", yaxis: "y2", line: { color: "#e53e3e" } },
    ], { xaxis: { type: "date" }, yaxis: countAxis(a.series.requests, { title: { text: `requests / ${a.step}` } }),
      yaxis2: countAxis(a.series.errors_5xx, { title: { text: "5xx" }, overlaying: "y", side: "right", showgrid: false }) });
    const points = a.series.latency_p95_ms.map((v, i) => [x[i], v]).filter(([, v]) => v !== null);
    draw("chart-latency", [{ x: points.map((p) => p[0]), y: points.map((p) => p[1]), name: "p95",
      type: "scatter", mode: "lines+markers", marker: { size: 3 }, line: { color: "#805ad5" } }],
    { xaxis: { type: "date", range: [x[0], x[x.length - 1]] }, yaxis: { title: { text: "ms" }, rangemode: "tozero" }, showlegend: false });
    const t = a.totals;
    $("tile-requests").textContent = nf.format(t.requests);
    const share = t.requests ? ` (${((100 * t.errors_5xx) / t.requests).toFixed(2)} %)` : "";
    $("tile-errors").textContent = nf.format(t.errors_5xx) + share;
    $("tile-p95").textContent = t.latency_p95_ms == null ? "–" : `${t.latency_p95_ms.toFixed(1)} ms`;
    $("tile-bytes").textContent = bytes(t.bytes);
    state.totals = t;
  }

  function renderRoutes(a) {
    const rows = [...a.routes].reverse();
    draw("chart-routes", [{ type: "bar", orientation: "h", name: "requests",
      x: rows.map((r) => r.requests), y: rows.map((r) => r.route ?? "(none)"),
      customdata: rows.map((r) => [r.errors_5xx, r.latency_p95_ms ?? "–"]),
      hovertemplate: "%{y}<br>%{x} requests, %{customdata[0]} 5xx, p95 %{customdata[1]} ms<extra></extra>",
      marker: { color: "#3182ce" } }], { margin: { ...LAYOUT.margin, l: 200 }, showlegend: false,
      yaxis: { automargin: true }, xaxis: countAxis(rows.map((r) => r.requests)) });
  }

  function renderStatus(a) {
    draw("chart-status", [{ type: "bar", name: "requests", x: a.codes.map((c) => String(c.status)),
      y: a.codes.map((c) => c.requests), marker: { color: a.codes.map((c) => CLASS_COLORS[c.status_class]) } }],
    { xaxis: { type: "category" }, yaxis: { type: "log", title: { text: "requests (log)" } }, showlegend: false });
  }

  function renderVisitors(a) {
    // Days as categories: a date axis would put ticks between the bars.
    draw("chart-visitors", [{ type: "bar", name: "visitors", x: a.days.map((d) => d.day.slice(0, 10)),
      y: a.days.map((d) => d.visitors), customdata: a.days.map((d) => d.hits),
      hovertemplate: "%{x}: %{y} visitors, %{customdata} hits<extra></extra>", marker: { color: "#38a169" } }],
    { xaxis: { type: "category" }, yaxis: countAxis(a.days.map((d) => d.visitors)), showlegend: false });
    $("tile-visitors").textContent = nf.format(a.total.visitors);
    state.visitors = a.total;
  }

  function renderLevels(a) {
    const services = [...new Set(a.rows.map((r) => r.service ?? "(none)"))];
    const levels = LEVELS.filter((l) => a.rows.some((r) => r.level === l));
    const traces = levels.map((level) => ({ type: "bar", name: level, x: services,
      y: services.map((s) => a.rows.filter((r) => (r.service ?? "(none)") === s && r.level === level)
        .reduce((n, r) => n + r.records, 0)), marker: { color: LEVEL_COLORS[level] } }));
    const totals = services.map((_, i) => traces.reduce((n, t) => n + t.y[i], 0));
    draw("chart-levels", traces, { barmode: "stack", yaxis: countAxis(totals) });
  }

  function renderFreshness(f) {
    const badge = $("freshness");
    // Every partition, also those the batch holds nothing of (horizon 0: an imported
    // history is in the batch without any event-log offset).
    const names = [...new Set([...Object.keys(f.horizon), ...Object.keys(f.positions), ...Object.keys(f.log_end)])].sort();
    const parts = (o) => names.map((p) => `${p} < ${nf.format(o[p] || 0)}`).join(", ") || "none";
    const lag = Object.values(f.lag).reduce((n, x) => n + x, 0);
    badge.textContent = `batch v${f.batch_version ?? "–"} · horizon ${parts(f.horizon)} · speed ${parts(f.positions)} · lag ${nf.format(lag)}`;
    badge.className = `badge ${lag ? "behind" : "ok"}`;
    badge.title = [`as of ${new Date(f.as_of * 1000).toISOString()}`, `log end: ${parts(f.log_end)}`,
      "horizon: the batch version covers the log below it; speed: answers cover the log below it; lag: appended, not covered yet",
      ...f.notes].join("\n");
    state.freshness = f;
  }

  // -- the refresh loop -----------------------------------------------------------------
  let timer = null;
  let running = false;

  async function refresh() {
    if (running) return;
    running = true;
    clearTimeout(timer);
    try {
      const span = await api("/v1/dashboard/range");
      const win = chooseWindow(controls.range.value, span);
      if (win === null) throw new Error("no data yet: ingest or import some logs");
      state.window = win;
      $("notice").hidden = !win.note;
      $("notice").textContent = win.note;
      const range = { from: win.from, to: win.to };
      const [traffic, routes, status, visitors, levels] = await Promise.all([
        api("/v1/dashboard/traffic", { ...range, step: win.step }),
        api("/v1/dashboard/top_routes", { ...range, limit: 10 }),
        api("/v1/dashboard/status_codes", range),
        api("/v1/dashboard/visitors", range),
        api("/v1/dashboard/log_levels", range),
      ]);
      renderTraffic(traffic); renderRoutes(routes); renderStatus(status);
      renderVisitors(visitors); renderLevels(levels); renderFreshness(traffic.freshness);
      $("window").textContent = `${fmt(Date.parse(traffic.from))} – ${fmt(Date.parse(traffic.to))} UTC, ${traffic.step} steps; updated ${new Date().toISOString().slice(11, 19)} UTC`;
      $("error").hidden = true;
      $("login").hidden = true;
      state.lastError = null;
      state.refreshes += 1;
      document.body.dataset.refreshes = String(state.refreshes);
    } catch (err) {
      state.errors += 1;
      state.lastError = String(err.message || err);
      if (err instanceof AuthError) {
        $("login-reason").textContent = `${err.message} This dashboard needs a token with the read scope.`;
        $("login").hidden = false;
      } else {
        $("error").textContent = `Could not refresh: ${state.lastError} The charts show the last answer.`;
        $("error").hidden = false;
        $("freshness").className = "badge bad";
      }
    } finally {
      running = false;
      schedule();
    }
  }

  function schedule() {
    clearTimeout(timer);
    const seconds = Number(controls.refresh.value);
    if (seconds > 0 && $("login").hidden) timer = setTimeout(refresh, seconds * 1000);
  }

  function changed() { showCustom(); syncUrl(); refresh(); }

  controls.range.addEventListener("change", () => {
    if (controls.range.value === "custom" && !controls.from.value && state.window) {
      controls.from.value = localInput(Date.parse(state.window.from));
      controls.to.value = localInput(Date.parse(state.window.to));
    }
    changed();
  });
  for (const el of [controls.refresh, controls.from, controls.to]) el.addEventListener("change", changed);
  $("refresh-now").addEventListener("click", refresh);
  $("login").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    $("token").value = "";
    $("login").hidden = true;
    refresh();
  });
  $("logout").addEventListener("click", (ev) => {
    ev.preventDefault();
    sessionStorage.removeItem(TOKEN_KEY);
    location.reload();
  });
  document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });

  showCustom();
  syncUrl();
  refresh();
})();
