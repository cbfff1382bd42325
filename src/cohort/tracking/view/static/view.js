// cohort's live view: one snapshot from /api/state, then a new one with every "state" event of
// /api/events (server-sent events: the page never polls). Everything drawn comes from the run folder.
"use strict";

const token = new URLSearchParams(location.search).get("token");
const query = token ? "?token=" + encodeURIComponent(token) : "";
const COLORS = ["#4fb3ff", "#3ecf8e", "#f5b942", "#ff6b6b", "#b48cff", "#5ce1e6", "#ff9f5a"];
const charts = {};

function el(tag, attrs = {}, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function fmt(v, digits = 4) {
  if (v === null || v === undefined) return "–";
  if (typeof v !== "number") return String(v);
  if (Number.isInteger(v)) return v.toLocaleString();
  return Math.abs(v) >= 100 ? v.toFixed(1) : v.toPrecision(digits);
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  if (!n) return "0 B";
  const units = ["B", "kB", "MB", "GB", "TB"];
  const i = Math.min(units.length - 1, Math.floor(Math.log10(n) / 3));
  return (n / 10 ** (3 * i)).toFixed(i ? 1 : 0) + " " + units[i];
}

function marks(values, higher) {
  // [best, last] as series that are empty but at one round each: drawn as large points on the curve
  let best = -1, last = -1;
  values.forEach((v, i) => {
    if (v === null || v === undefined) return;
    if (best < 0 || (higher ? v > values[best] : v < values[best])) best = i;
    last = i;
  });
  return [values.map((v, i) => (i === best ? v : null)), values.map((v, i) => (i === last ? v : null))];
}

function chart(id, x, series) {
  // series: [[label, values, mark?]]; rebuilt when the set of series changes, else updated in place
  const box = document.getElementById(id);
  const names = series.map(s => s[0]).join("|");
  const data = [x, ...series.map(s => s[1])];
  box.dataset.points = String(x.length);
  if (!series.length) { box.textContent = "no values yet"; return; }
  const width = Math.max(320, box.clientWidth || 420);
  if (!charts[id] || charts[id].names !== names) {
    if (charts[id]) charts[id].plot.destroy();
    box.textContent = "";
    const opts = {
      width, height: 220, legend: { live: true },
      scales: { x: { time: false } },
      axes: [{ stroke: "#8a96a8", grid: { stroke: "#273142" }, label: "round" },
             { stroke: "#8a96a8", grid: { stroke: "#273142" }, size: 60 }],
      series: [{ label: "round" }, ...series.map((s, i) => s[2] ? {  // a best or last mark
        label: s[0], stroke: s[2], width: 0, points: { show: true, size: 11, width: 2, stroke: s[2], fill: "#0f1419" },
      } : {
        label: s[0], stroke: COLORS[i % COLORS.length], width: 2, spanGaps: true,
        points: { show: x.length <= 60, size: 5 } })],
    };
    charts[id] = { names, plot: new uPlot(opts, data, box) };
  } else {
    charts[id].plot.setData(data);
  }
}

function bestLast(x, values, higher) {
  let best = null, at = null, last = null, lastAt = null;
  values.forEach((v, i) => {
    if (v === null || v === undefined) return;
    if (best === null || (higher ? v > best : v < best)) { best = v; at = x[i]; }
    last = v; lastAt = x[i];
  });
  return best === null ? "" : `best ${fmt(best)} at round ${at} · last ${fmt(last)} at round ${lastAt}`;
}

function ago(t) {
  if (!t) return "";
  const s = Math.max(0, Date.now() / 1000 - t);
  return s < 90 ? Math.round(s) + " s ago" : s < 5400 ? Math.round(s / 60) + " min ago" : Math.round(s / 3600) + " h ago";
}

function card(k, v, s) {
  const c = el("div", { class: "card" });
  c.append(el("div", { class: "k" }, k), el("div", { class: "v" }, v));
  if (s) c.append(el("div", { class: "s" }, s));
  return c;
}

function render(s) {
  document.getElementById("name").textContent = s.name;
  const badge = document.getElementById("state");
  badge.textContent = s.status.state; badge.className = "badge " + s.status.state;
  document.getElementById("why").textContent = s.status.stopped_by ? "stopped by " + s.status.stopped_by : "";
  const round = document.getElementById("round");
  round.textContent = s.round; round.dataset.round = String(s.round);
  document.getElementById("rounds").textContent = s.rounds ?? "?";
  const t = s.target && s.target.value !== null && s.target.value !== undefined ? `target ${s.target.metric} ${s.target.value}` : "";
  document.getElementById("target").textContent = t;
  document.getElementById("bar").style.width = s.rounds ? Math.min(100, 100 * s.round / s.rounds) + "%" : "0";

  const m = s.metrics, x = s.x;
  const quality = Object.keys(m).filter(k => /(accuracy|r2)$/.test(k));
  const losses = Object.keys(m).filter(k => /loss$/.test(k));
  const headlineKey = quality.includes(s.status.best?.metric) ? s.status.best.metric : quality[0];
  const qualityMarks = headlineKey ? marks(m[headlineKey], true) : [];
  chart("chart-quality", x, [...quality.map(k => [k, m[k]]),
                             ...(headlineKey ? [["best " + headlineKey, qualityMarks[0], "#f5b942"],
                                                ["last " + headlineKey, qualityMarks[1], "#d7dde6"]] : [])]);
  const lossKey = losses.includes("federated_loss") ? "federated_loss" : losses.includes("loss") ? "loss" : losses[0];
  const lossMarks = lossKey ? marks(m[lossKey], false) : [];
  chart("chart-loss", x, [...losses.map(k => [k, m[k]]),
                          ...(lossKey ? [["best " + lossKey, lossMarks[0], "#f5b942"], ["last " + lossKey, lossMarks[1], "#d7dde6"]] : [])]);
  document.getElementById("note-quality").textContent = quality.map(k => `${k}: ${bestLast(x, m[k], true)}`).join(" · ");
  document.getElementById("note-loss").textContent = losses.slice(0, 2).map(k => `${k}: ${bestLast(x, m[k], false)}`).join(" · ");
  const tm = s.timing;
  chart("chart-timing", x, [["clients", tm.fit_seconds], ["aggregation", tm.aggregate_seconds], ["evaluation", tm.evaluate_seconds]]);
  if (s.privacy) {
    document.getElementById("fig-privacy").hidden = false;
    const series = [["ε spent", s.privacy.epsilon]];
    if (s.privacy.budget) series.push(["budget", x.map(() => s.privacy.budget)]);
    chart("chart-privacy", x, series);
    const spent = s.privacy.epsilon.filter(v => v !== null).slice(-1)[0];
    document.getElementById("note-privacy").textContent =
      `ε = ${fmt(spent)}${s.privacy.budget ? " of " + s.privacy.budget : ""} at δ = ${s.privacy.delta ?? "?"}`;
  }
  if (s.staleness) {
    document.getElementById("fig-staleness").hidden = false;
    chart("chart-staleness", x, [["mean", s.staleness.mean], ["max", s.staleness.max]]);
  }

  const cards = document.getElementById("cards"); cards.textContent = "";
  const headline = s.status.best || null;
  if (headline) cards.append(card("best " + headline.metric, fmt(headline.value), "round " + headline.round));
  for (const k of quality.slice(0, 2)) cards.append(card(k, fmt(m[k].filter(v => v !== null).slice(-1)[0]), "last round"));
  const failing = s.clients.filter(c => c.failures > 0).length;
  cards.append(card("clients", s.clients.length.toLocaleString(), failing ? `${failing} with failures` : "none failed"));
  const secs = tm.seconds.filter(v => v !== null);
  if (secs.length) cards.append(card("last round", fmt(secs[secs.length - 1], 3) + " s",
                                     "total " + fmt(secs.reduce((a, b) => a + b, 0), 3) + " s"));
  const secure = Boolean((s.protections || {}).secagg_mode);  // then no client's own figures are known
  if (!secure) cards.append(card("bytes up", bytes(s.clients.reduce((a, c) => a + c.bytes, 0)), "from every client"));
  if (s.privacy) cards.append(card("ε spent", fmt(s.privacy.epsilon.filter(v => v !== null).slice(-1)[0]),
                                   s.privacy.budget ? "budget " + s.privacy.budget : "no budget set"));
  const pr = s.protections || {};
  if (pr.secagg_mode) cards.append(card("secure aggregation", pr.secagg_mode,
    `t = ${pr.secagg_threshold} · the server sees sums only: per-client examples and metrics are not known`));
  if (pr.norm_bound !== undefined) cards.append(card("updates bounded", fmt(pr.updates_bounded ?? 0), "norm bound " + fmt(pr.norm_bound)));
  if (pr.dp_clipped_fraction !== undefined) cards.append(card("DP clipped", fmt(pr.dp_clipped_fraction), "clip " + fmt(pr.dp_clip)));
  document.getElementById("protections").textContent = Object.keys(pr).length
    ? "protections: " + Object.entries(pr).map(([k, v]) => `${k} ${fmt(v)}`).join(" · ") : "";

  const body = document.querySelector("#clients tbody"); body.textContent = "";
  for (const c of s.clients.slice(0, 2000)) {
    const tr = el("tr", { "data-client": c.id, "data-rounds": c.rounds });
    const metrics = Object.entries(c.metrics).slice(0, 3).map(([k, v]) => `${k} ${fmt(v)}`).join(", ");
    const seen = c.connected === true ? "connected" : c.connected === false ? "left " + ago(c.since)
               : c.last_round ? "round " + c.last_round : "–";
    tr.append(el("td", {}, c.id), el("td", {}, c.name), el("td", {}, fmt(c.examples)), el("td", {}, c.rounds),
              el("td", c.connected === true ? { class: "on" } : {}, seen), el("td", {}, metrics || "–"),
              el("td", c.failures ? { class: "fail", title: c.last_failure } : {},
                 c.failures ? `${c.failures}: ${c.last_failure}` : "0"),
              el("td", {}, bytes(secure ? null : c.bytes)));
    body.append(tr);
  }
  document.getElementById("client-count").textContent =
    `${s.clients.length.toLocaleString()} seen` + (s.clients.length > 2000 ? " (first 2,000 listed)" : "");
  document.getElementById("failures").textContent = s.last_failures.length ? "last round: " + s.last_failures.join(" · ") : "";
  document.getElementById("config").textContent = JSON.stringify(s.config, null, 2);
  document.body.dataset.loaded = "1";
}

fetch("api/state" + query).then(r => r.json()).then(render).catch(() => {});
const events = new EventSource("api/events" + query);
events.addEventListener("state", e => render(JSON.parse(e.data)));
events.onerror = () => {  // the stream ends when the run's process does; a finished run keeps its state
  const badge = document.getElementById("state");
  if (badge.textContent === "running" || badge.textContent === "connecting") badge.textContent = "reconnecting";
};
