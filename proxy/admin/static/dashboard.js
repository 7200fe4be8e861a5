// serving-proxy migration dashboard: reads /admin/report and draws plain SVG charts.
// No framework, no CDN, no build step: the proxy serves this file as it is, so the page
// works offline.
// Every value from the report is put in the page as text (textContent), never as HTML:
// client keys may be header values that a client chose.
"use strict";

(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const W = 560, H = 220, PAD = { l: 48, r: 14, t: 10, b: 24 };
  const params = new URLSearchParams(location.search);
  const REFRESH_S = Math.max(1, Number(params.get("refresh")) || 5);
  // location.origin carries no user:password, which fetch() would refuse.
  const REPORT_URL = location.origin + "/admin/report";
  let refreshes = 0;

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function svgEl(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function ms(v) {
    if (v === null || v === undefined) return "n/a";
    return v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2);
  }

  function pct(v) {
    return v === null || v === undefined ? "n/a" : (100 * v).toFixed(2) + "%";
  }

  function ratio(v) {
    return v === null || v === undefined ? "n/a" : v.toFixed(2) + "×";
  }

  function plural(n, word) {
    return `${n} ${word}${n === 1 ? "" : "s"}`;
  }

  function clock(t) {
    return new Date(t * 1000).toISOString().substring(11, 19);
  }

  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  function frame(svg, xLabels, yMax, yUnit) {
    const innerH = H - PAD.t - PAD.b;
    for (let i = 0; i <= 4; i++) {
      const y = PAD.t + innerH - (innerH * i) / 4;
      svg.appendChild(svgEl("line", { class: "axis", x1: PAD.l, x2: W - PAD.r, y1: y, y2: y }));
      svg.appendChild(
        svgEl("text", { x: PAD.l - 4, y: y + 3, "text-anchor": "end" }, ms((yMax * i) / 4) + yUnit)
      );
    }
    xLabels.forEach(([x, label], i) => {
      const anchor = i === xLabels.length - 1 && i > 0 ? "end" : i === 0 ? "start" : "middle";
      svg.appendChild(svgEl("text", { x: x, y: H - 6, "text-anchor": anchor }, label));
    });
  }

  function newChart(container, name, title, legend) {
    const box = el("div", { class: "chart" });
    box.appendChild(el("h3", {}, title));
    if (legend) {
      const lg = el("div", { class: "legend" });
      for (const [cls, text] of legend) {
        lg.appendChild(el("b", { class: "l-" + cls }));
        lg.appendChild(document.createTextNode(text));
      }
      box.appendChild(lg);
    }
    const svg = svgEl("svg", { viewBox: `0 0 ${W} ${H}`, "data-chart": name, "data-points": 0 });
    box.appendChild(svg);
    container.appendChild(box);
    return svg;
  }

  function empty(svg, text) {
    const box = svg.parentNode;
    box.replaceChild(el("div", { class: "empty", "data-chart": svg.dataset.chart }, text), svg);
  }

  // Latency over time: p50 solid, p99 dashed; legacy, serverless, and the proxy's own p50.
  function latencyChart(container, name, series) {
    const svg = newChart(container, "latency", "Latency over time (ms)", [
      ["legacy", "legacy"], ["serverless", "serverless"], ["proxy", "proxy's own p50"],
    ]);
    const lines = [
      ["legacy", "p50", "legacy"], ["legacy", "p99", "legacy p99"],
      ["serverless", "p50", "serverless"], ["serverless", "p99", "serverless p99"],
      ["proxy", "p50", "proxy"],
    ];
    const points = series.filter((s) => s.models[name]);
    let yMax = 0, count = 0;
    for (const s of points) {
      for (const [side, p] of lines) {
        const v = (s.models[name][side] || {})[p];
        if (v !== null && v !== undefined) { yMax = Math.max(yMax, v); count++; }
      }
    }
    if (!count) return empty(svg, "no requests in the window yet");
    yMax = niceMax(yMax * 1.05);
    const t0 = points[0].t, t1 = Math.max(points[points.length - 1].t, t0 + 1);
    const x = (t) => PAD.l + ((W - PAD.l - PAD.r) * (t - t0)) / (t1 - t0);
    const y = (v) => H - PAD.b - ((H - PAD.t - PAD.b) * v) / yMax;
    frame(svg, [[x(t0), clock(t0)], [x(t1), clock(t1)]], yMax, "");
    for (const [side, p, cls] of lines) {
      const xy = [];
      for (const s of points) {
        const v = (s.models[name][side] || {})[p];
        if (v !== null && v !== undefined) xy.push(`${x(s.t).toFixed(1)},${y(v).toFixed(1)}`);
      }
      if (!xy.length) continue;
      const style = side === "proxy" ? "weight" : cls;
      if (xy.length === 1) {
        const [cx, cy] = xy[0].split(",");
        svg.appendChild(svgEl("circle", { class: style, cx: cx, cy: cy, r: 2.5 }));
      } else {
        svg.appendChild(svgEl("polyline", { class: style, points: xy.join(" ") }));
      }
    }
    svg.dataset.points = String(count);
  }

  // Distribution over the window, each side as a share of its own requests.
  function histogramChart(container, view) {
    const svg = newChart(container, "histogram", "Latency distribution in the window (ms)", [
      ["legacy", "legacy"], ["serverless", "serverless"],
    ]);
    const sides = ["legacy", "serverless"].filter((s) => view.histogram[s]);
    if (!sides.length) return empty(svg, "no requests in the window yet");
    const edges = view.histogram[sides[0]].edges_ms;
    const n = edges.length + 1;
    const shares = {};
    let yMax = 0, count = 0;
    for (const side of sides) {
      const counts = view.histogram[side].counts;
      const total = counts.reduce((a, b) => a + b, 0) || 1;
      shares[side] = counts.map((c) => (100 * c) / total);
      yMax = Math.max(yMax, ...shares[side]);
      count += counts.filter((c) => c > 0).length;
    }
    yMax = niceMax(yMax);
    const slot = (W - PAD.l - PAD.r) / n;
    const labels = [];
    for (let i = 0; i < n; i += 4) {
      labels.push([PAD.l + slot * (i + 0.5), i < edges.length ? "≤" + edges[i] : ">" + edges[n - 2]]);
    }
    frame(svg, labels, yMax, "%");
    sides.forEach((side, k) => {
      shares[side].forEach((share, i) => {
        if (!share) return;
        const h = ((H - PAD.t - PAD.b) * share) / yMax;
        svg.appendChild(svgEl("rect", {
          class: side, x: PAD.l + slot * i + (slot / 2) * k + 1, y: H - PAD.b - h,
          width: Math.max(slot / 2 - 2, 1), height: h,
        }));
      });
    });
    svg.dataset.points = String(count);
  }

  // The serverless weight as a step line; red triangles where traffic went back to legacy.
  function weightChart(container, view, now) {
    const svg = newChart(container, "weight", "Serverless weight over time (%)", [
      ["proxy", "weight"], ["bad", "rollback"],
    ]);
    const pts = view.weights.filter((p) => p.weight !== null && p.weight !== undefined);
    if (!pts.length) return empty(svg, "weight n/a");
    const t0 = pts[0].t, t1 = Math.max(now, t0 + 1);
    const x = (t) => PAD.l + ((W - PAD.l - PAD.r) * (t - t0)) / (t1 - t0);
    const y = (v) => H - PAD.b - ((H - PAD.t - PAD.b) * v) / 100;
    frame(svg, [[x(t0), clock(t0)], [x(t1), clock(t1)]], 100, "");
    const xy = [];
    pts.forEach((p, i) => {
      if (i > 0) xy.push(`${x(p.t).toFixed(1)},${y(pts[i - 1].weight).toFixed(1)}`);
      xy.push(`${x(p.t).toFixed(1)},${y(p.weight).toFixed(1)}`);
    });
    xy.push(`${x(t1).toFixed(1)},${y(pts[pts.length - 1].weight).toFixed(1)}`);
    svg.appendChild(svgEl("polyline", { class: "weight", points: xy.join(" ") }));
    for (const p of pts.filter((q) => q.event === "rollback")) {
      const cx = x(p.t), cy = y(p.weight);
      const mark = svgEl("polygon", {
        class: "rollback", points: `${cx},${cy - 9} ${cx - 6},${cy + 2} ${cx + 6},${cy + 2}`,
      });
      mark.appendChild(svgEl("title", {}, "rollback at " + clock(p.t)));
      svg.appendChild(mark);
    }
    svg.dataset.points = String(pts.length);
  }

  // Shadow parity in the window, as one stacked bar.
  function parityChart(container, view) {
    const svg = newChart(container, "parity", "Shadow parity in the window", [
      ["ok", "match"], ["bad", "mismatch"], ["muted", "error / dropped"],
    ]);
    const order = ["match", "mismatch", "error", "dropped"];
    const total = order.reduce((a, k) => a + view.parity[k], 0);
    if (!total) return empty(svg, "parity n/a (no shadow comparisons in the window)");
    let x = PAD.l;
    const width = W - PAD.l - PAD.r;
    for (const k of order) {
      const w = (width * view.parity[k]) / total;
      if (w > 0) svg.appendChild(svgEl("rect", { class: k, x: x, y: 60, width: w, height: 50 }));
      x += w;
    }
    svg.appendChild(svgEl("text", { x: PAD.l, y: 50 },
      `match rate ${pct(view.parity.rate)} of ${view.parity.match + view.parity.mismatch} compared`));
    svg.appendChild(svgEl("text", { x: PAD.l, y: 130 },
      order.map((k) => `${k} ${view.parity[k]}`).join(" · ")));
    svg.dataset.points = String(total);
  }

  function clientsTable(view, now) {
    const table = el("table", { class: "clients" });
    const head = el("tr");
    for (const h of ["client key", "legacy requests", "last seen", "formats"]) {
      head.appendChild(el("th", {}, h));
    }
    table.appendChild(head);
    for (const c of view.clients) {
      const tr = el("tr");
      tr.appendChild(el("td", {}, c.client));
      tr.appendChild(el("td", {}, String(c.requests)));
      tr.appendChild(el("td", {}, `${clock(c.last_seen)} (${Math.round(now - c.last_seen)} s ago)`));
      tr.appendChild(el("td", {},
        Object.entries(c.formats).map(([f, n]) => `${f} ${n}`).join(", ")));
      table.appendChild(tr);
    }
    return table;
  }

  // The rollout gates' window over the fleet: every replica's slots since the weight took
  // effect, merged, then each replica's own (what the gates and `status` read).
  function gateWindowTable(gw) {
    const wrap = el("div", { class: "gate-window" });
    const shared = gw.shared
      ? `${plural(Object.keys(gw.replicas).length, "replica")}`
      : "this replica's window only: the state store is unreachable";
    wrap.appendChild(el("h3", {}, "Rollout gate window over the fleet "));
    wrap.lastChild.appendChild(el("span", { class: "muted" }, `(since the weight took effect; ${shared})`));
    const table = el("table", { class: "gate-window" });
    const head = el("tr");
    for (const h of ["replica", "serverless calls", "errors", "serverless p99 ms",
      "legacy calls", "legacy p99 ms", "parity compared", "matches"]) {
      head.appendChild(el("th", {}, h));
    }
    table.appendChild(head);
    const rows = [["fleet", gw], ...Object.entries(gw.replicas)];
    for (const [name, w] of rows) {
      const tr = el("tr");
      for (const text of [name, String(w.serverless_calls), String(w.serverless_errors),
        ms(w.serverless_p99_ms), String(w.legacy_calls), ms(w.legacy_p99_ms),
        String(w.parity_samples), String(w.parity_matches)]) {
        tr.appendChild(el("td", {}, text));
      }
      table.appendChild(tr);
    }
    wrap.appendChild(table);
    return wrap;
  }

  function summaryRow(name, v) {
    const tr = el("tr");
    const l = v.backends.legacy, s = v.backends.serverless;
    const parity = v.parity.rate === null ? "n/a" : pct(v.parity.rate);
    const cells = [
      name, String(v.requests), pct(v.error_rate), ms(l.p50), ms(l.p95), ms(l.p99),
      ms(s.p50), ms(s.p95), ms(s.p99), ratio(v.ratio.p99), ms(v.proxy.p50), ms(v.proxy.p99),
      v.weight === null ? "n/a" : v.weight + "%", v.state || "n/a", parity,
      `${plural(v.clients.filter((c) => c.client !== "other").length, "key")}, ` +
        `${v.clients.reduce((a, c) => a + c.requests, 0)} req`,
    ];
    cells.forEach((text, i) => {
      const td = el("td", {}, text);
      if (i === 2 && v.error_rate > 0.01) td.className = "bad";
      if (i === 9 && v.ratio.p99 !== null) td.className = v.ratio.p99 > 1.5 ? "bad" : "ok";
      tr.appendChild(td);
    });
    return tr;
  }

  function render(report) {
    const meta = document.getElementById("meta");
    meta.textContent =
      `window ${report.window_s} s · slot ${report.slot_s} s · ` +
      `${report.significant_figures} significant figures · updated ${clock(report.now)} UTC · ` +
      `refresh every ${REFRESH_S} s · serving-proxy ${report.version}` +
      (report.replicas > 1 ? ` · ${report.replicas} replicas` : "") +
      (report.replicas_reachable === false ? " · THIS REPLICA ONLY (state store unreachable)" : "");
    const tbody = document.querySelector("#summary tbody");
    tbody.replaceChildren();
    const main = document.getElementById("models");
    main.replaceChildren();
    for (const [name, view] of Object.entries(report.models)) {
      tbody.appendChild(summaryRow(name, view));
      const card = el("section", { class: "model", "data-model": name });
      card.appendChild(el("h2", {}, name));
      const charts = el("div", { class: "charts" });
      latencyChart(charts, name, report.series);
      histogramChart(charts, view);
      weightChart(charts, view, report.now);
      parityChart(charts, view);
      card.appendChild(charts);
      if (view.gate_window) card.appendChild(gateWindowTable(view.gate_window));
      card.appendChild(el("h3", {}, "Legacy clients (still calling /model/<name>/<version>/invocations)"));
      if (view.clients.length) card.appendChild(clientsTable(view, report.now));
      else card.appendChild(el("p", { class: "muted" }, "none seen"));
      main.appendChild(card);
    }
  }

  async function refresh() {
    const banner = document.getElementById("error");
    try {
      const response = await fetch(REPORT_URL, {
        credentials: "same-origin", headers: { accept: "application/json" }, cache: "no-store",
      });
      if (!response.ok) throw new Error(`${REPORT_URL} answered ${response.status}`);
      render(await response.json());
      banner.hidden = true;
      refreshes++;
      document.body.dataset.state = "ready";
      document.body.dataset.refreshes = String(refreshes);
    } catch (err) {
      // Shown on the page; a dashboard that cannot refresh must say so, not go stale.
      banner.textContent = "Could not refresh: " + err.message;
      banner.hidden = false;
      document.body.dataset.state = "error";
    }
  }

  refresh();
  setInterval(refresh, REFRESH_S * 1000);
})();
