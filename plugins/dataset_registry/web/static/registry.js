// The dataset registry page: four views over the JSON API next to it, switched by the URL hash.
//   #/                          projects
//   #/p/<project>               versions of a project (table, chart, diff picker)
//   #/p/<project>/v/<version>   one version (facts, pull commands, profile, experiments)
//   #/p/<project>/diff/<base>/<target>
// Opened from a DAG page tab (?dag=version_<p> or train_<p>) it starts at that project.
// Every value is put into the page as text (textContent), never as HTML.
"use strict";

(function () {
  const view = document.getElementById("view");
  const crumbs = document.getElementById("crumbs");
  const SVG = "http://www.w3.org/2000/svg";

  // ---------------------------------------------------------------- theme: follow the Airflow UI
  function airflowTheme() {
    try {  // inside the UI's iframe (same origin): the UI's own <html class="dark">
      if (window.parent !== window && window.parent.document.documentElement) {
        const cls = window.parent.document.documentElement.classList;
        if (cls.contains("dark")) return "dark";
        if (cls.contains("light")) return "light";
      }
    } catch (e) { /* another origin: fall through */ }
    try {  // the UI's stored choice (next-themes' "theme": light, dark or system)
      const stored = window.localStorage.getItem("theme");
      if (stored === "dark" || stored === "light") return stored;
    } catch (e) { /* storage blocked */ }
    return null;  // the CSS follows prefers-color-scheme
  }
  function applyTheme() {
    const theme = airflowTheme();
    if (theme) document.documentElement.setAttribute("data-theme", theme);
    else document.documentElement.removeAttribute("data-theme");
  }
  applyTheme();
  window.addEventListener("storage", applyTheme);
  try {
    if (window.parent !== window) {
      new MutationObserver(applyTheme).observe(window.parent.document.documentElement,
        { attributes: true, attributeFilter: ["class"] });
    }
  } catch (e) { /* another origin */ }

  // ---------------------------------------------------------------- helpers
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") el.className = v;
      else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      el.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }
  function s(tag, attrs, ...children) {
    const el = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined) continue;
      el.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }
  const enc = encodeURIComponent;
  const hrefProject = (p) => `#/p/${enc(p)}`;
  const hrefVersion = (p, v) => `#/p/${enc(p)}/v/${enc(v)}`;
  const hrefDiff = (p, b, t) => `#/p/${enc(p)}/diff/${enc(b)}/${enc(t)}`;

  function fmtInt(n) { return n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"); }
  function fmtBytes(n) {
    if (n === null || n === undefined) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let v = Number(n), i = 0;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return (i === 0 ? v.toFixed(0) : v.toFixed(v < 10 ? 2 : 1)) + " " + units[i];
  }
  function fmtTime(t) {
    if (!t) return "–";
    const d = new Date(t);
    if (isNaN(d.getTime())) return String(t);
    return d.toISOString().replace("T", " ").replace(/:\d\d(\.\d+)?Z$/, " UTC");
  }
  function fmtWindow(r) {
    if (!r.window_start && !r.window_end) return "–";
    return `${fmtTime(r.window_start)} → ${fmtTime(r.window_end)}`;
  }
  function short(x, n) { return x ? String(x).slice(0, n || 10) : "–"; }
  function fmtValue(v) {
    if (v === null || v === undefined) return "–";
    if (typeof v === "object") return JSON.stringify(v);
    return String(v);
  }

  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }
  async function api(path) {
    const resp = await fetch("api/" + path, { credentials: "same-origin", headers: { Accept: "application/json" } });
    let body = null;
    try { body = await resp.json(); } catch (e) { body = null; }
    if (!resp.ok) {
      let detail = body && body.detail !== undefined ? body.detail : resp.statusText;
      if (typeof detail !== "string") detail = JSON.stringify(detail);
      throw new ApiError(resp.status, detail);
    }
    return body;
  }

  function setCrumbs(parts) {
    crumbs.replaceChildren();
    parts.forEach((p, i) => {
      if (i) crumbs.appendChild(h("span", { class: "sep" }, "/"));
      crumbs.appendChild(p.href ? h("a", { href: p.href }, p.text) : h("span", {}, p.text));
    });
  }
  function show(...nodes) { view.replaceChildren(...nodes); }
  function showError(err) {
    const msg = err instanceof ApiError ? `${err.status}: ${err.message}` : String(err && err.message || err);
    const hint = err instanceof ApiError && (err.status === 401 || err.status === 403)
      ? h("p", {}, "Your Airflow session has ended: ", h("a", { href: "./", target: "_top" }, "log in again"), ".")
      : null;
    show(h("h1", {}, "Something went wrong"), h("p", { class: "error", role: "alert" }, msg), hint,
      h("p", {}, h("a", { href: "#/" }, "Back to the projects")));
  }
  function copyButton(text) {
    return h("button", {
      type: "button", title: "Copy to the clipboard", onclick: (ev) => {
        const btn = ev.currentTarget;
        const done = () => { btn.textContent = "Copied"; setTimeout(() => { btn.textContent = "Copy"; }, 1500); };
        if (navigator.clipboard && window.isSecureContext) navigator.clipboard.writeText(text).then(done, () => fallback());
        else fallback();
        function fallback() {
          const ta = h("textarea", {}, text); document.body.appendChild(ta); ta.select();
          try { document.execCommand("copy"); done(); } catch (e) { /* nothing to do */ }
          ta.remove();
        }
      },
    }, "Copy");
  }
  function command(text) { return h("div", { class: "cmd" }, h("pre", {}, text), copyButton(text)); }

  // ---------------------------------------------------------------- chart: rows and bytes per version
  function chart(versions) {
    const data = versions.slice().reverse();  // oldest first, left to right
    const W = 720, H = 130, L = 56, R = 56, T = 12, B = 28;
    const n = data.length;
    const x = (i) => (n === 1 ? L + (W - L - R) / 2 : L + (i * (W - L - R)) / (n - 1));
    const series = [
      { key: "rows", color: "var(--rows)", label: "rows", fmt: fmtInt, axis: "left" },
      { key: "bytes", color: "var(--bytes)", label: "bytes", fmt: fmtBytes, axis: "right" },
    ];
    const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "rows and bytes across versions" });
    svg.appendChild(s("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "var(--line)" }));
    for (const sr of series) {
      const vals = data.map((d) => (d[sr.key] === null || d[sr.key] === undefined ? null : Number(d[sr.key])));
      const known = vals.filter((v) => v !== null);
      if (!known.length) continue;
      const max = Math.max(...known), min = Math.min(0, ...known);
      const y = (v) => T + (H - T - B) * (1 - (v - min) / (max - min || 1));
      const pts = vals.map((v, i) => (v === null ? null : [x(i), y(v)])).filter(Boolean);
      svg.appendChild(s("polyline", { points: pts.map((p) => p.join(",")).join(" "), fill: "none",
        stroke: sr.color, "stroke-width": 2, "stroke-linejoin": "round" }));
      vals.forEach((v, i) => {
        if (v === null) return;
        svg.appendChild(s("circle", { cx: x(i), cy: y(v), r: 3.5, fill: sr.color },
          s("title", {}, `${data[i].version}: ${sr.fmt(v)} ${sr.label}`)));
      });
      const ax = sr.axis === "left" ? L - 6 : W - R + 6;
      const anchor = sr.axis === "left" ? "end" : "start";
      svg.appendChild(s("text", { x: ax, y: y(max) + 4, "text-anchor": anchor }, sr.fmt(max)));
      svg.appendChild(s("text", { x: ax, y: y(min) + 4, "text-anchor": anchor }, sr.fmt(min)));
    }
    const every = Math.max(1, Math.ceil(n / 8));
    data.forEach((d, i) => {
      if (i % every && i !== n - 1) return;
      svg.appendChild(s("text", { x: x(i), y: H - 8, "text-anchor": "middle" }, d.version));
    });
    return h("figure", { class: "chart", style: "margin:0 0 1rem" },
      h("div", { class: "legend" },
        h("span", {}, h("i", { style: "background:var(--rows)" }), "rows (left axis)"),
        h("span", {}, h("i", { style: "background:var(--bytes)" }), "bytes (right axis)")),
      svg);
  }

  // ---------------------------------------------------------------- views
  async function viewProjects() {
    setCrumbs([{ text: "projects" }]);
    const projects = await api("projects");
    if (!projects.length) {
      return show(h("h1", {}, "Projects"), h("p", { class: "muted" },
        "No project has a version in the registry yet. Run a version_<project> DAG to publish one."));
    }
    show(h("h1", {}, "Projects"),
      h("div", { class: "cards", id: "projects" }, projects.map((p) =>
        h("a", { class: "card project", href: hrefProject(p.project), "data-project": p.project },
          h("div", { class: "name" }, p.project),
          h("div", { class: "muted" }, `${p.versions} version${p.versions === 1 ? "" : "s"}`),
          h("div", {}, "latest ", h("code", {}, p.latest || "–"))))));
  }

  function diffPicker(project, versions, base, target) {
    const opts = (sel) => versions.map((v) => h("option", { value: v.version, selected: v.version === sel }, v.version));
    const b = h("select", { id: "diff-base", "aria-label": "base version" }, opts(base));
    const t = h("select", { id: "diff-target", "aria-label": "target version" }, opts(target));
    return h("form", { class: "diffform", onsubmit: (ev) => {
      ev.preventDefault(); location.hash = hrefDiff(project, b.value, t.value);
    } }, h("span", {}, "Compare"), b, h("span", {}, "→"), t, h("button", { class: "primary", type: "submit" }, "Diff"));
  }

  async function viewProject(project) {
    setCrumbs([{ text: "projects", href: "#/" }, { text: project }]);
    const versions = await api(`projects/${enc(project)}/versions`);
    const rows = versions.map((v, i) => {
      const older = versions[i + 1];
      const delta = older && v.rows !== null && older.rows !== null ? v.rows - older.rows : null;
      return h("tr", { class: "clickable", "data-version": v.version, onclick: () => { location.hash = hrefVersion(project, v.version); } },
        h("td", {}, h("a", { href: hrefVersion(project, v.version) }, v.version)),
        h("td", {}, fmtTime(v.created)),
        h("td", {}, fmtWindow(v)),
        h("td", { class: "num" }, fmtInt(v.rows),
          delta ? h("span", { class: delta > 0 ? "delta-up" : "delta-down" }, ` (${delta > 0 ? "+" : ""}${fmtInt(delta)})`) : null),
        h("td", { class: "num" }, fmtBytes(v.bytes)),
        h("td", {}, h("code", { title: v.md5 }, short(v.md5, 8))),
        h("td", {}, h("code", { title: v.commit }, short(v.commit, 8))));
    });
    show(
      h("h1", {}, project),
      versions.length ? chart(versions) : null,
      versions.length > 1 ? diffPicker(project, versions, versions[1].version, versions[0].version) : null,
      h("table", { id: "versions" },
        h("thead", {}, h("tr", {}, h("th", {}, "version"), h("th", {}, "created"), h("th", {}, "window"),
          h("th", { class: "num" }, "rows"), h("th", { class: "num" }, "bytes"), h("th", {}, "md5"), h("th", {}, "commit"))),
        h("tbody", {}, rows)),
      h("p", {}, h("a", { href: `#/experiments/${enc(project)}` }, "Experiments of this project")));
  }

  function metrics(obj) {
    if (!obj || typeof obj !== "object" || !Object.keys(obj).length) return h("span", { class: "muted" }, "–");
    return h("span", {}, Object.entries(obj).map(([k, v]) =>
      h("span", { class: "metric" }, h("b", {}, k), " ", typeof v === "number" ? (Number.isInteger(v) ? fmtInt(v) : String(Number(v.toPrecision(6)))) : fmtValue(v))));
  }
  function statusBadge(st) {
    const cls = st === "succeeded" || st === "success" ? "good" : st === "failed" ? "bad" : "warn";
    return h("span", { class: `badge ${cls}` }, st || "–");
  }
  function experimentsTable(exps, withDataset) {
    if (!exps.length) return h("p", { class: "muted" }, "No experiment in the model DB.");
    return h("table", { id: "experiments" },
      h("thead", {}, h("tr", {}, h("th", {}, "#"), h("th", {}, "model"), h("th", {}, "model version"),
        withDataset ? h("th", {}, "training dataset") : null, h("th", {}, "status"), h("th", {}, "created"),
        h("th", {}, "metrics"), h("th", {}, "parameters"))),
      h("tbody", {}, exps.map((e) => {
        const ds = e.training_dataset || "";
        const [p, v] = ds.split("/");
        return h("tr", {},
          h("td", {}, e.experiment_id), h("td", {}, e.model_name || e.model || "–"), h("td", {}, h("code", {}, e.model_version_id || "–")),
          withDataset ? h("td", {}, p && v ? h("a", { href: hrefVersion(p, v) }, ds) : ds || "–") : null,
          h("td", {}, statusBadge(e.status)), h("td", {}, fmtTime(e.created_datetime)),
          h("td", {}, metrics(e.evaluations)), h("td", {}, metrics(e.parameters)));
      })));
  }

  async function viewVersion(project, version) {
    setCrumbs([{ text: "projects", href: "#/" }, { text: project, href: hrefProject(project) }, { text: version }]);
    const v = await api(`projects/${enc(project)}/versions/${enc(version)}`);
    const profile = v.profile || {};
    const columns = v.columns || Object.keys(profile);
    const pull = v.pull || {};
    const facts = [["tag", h("code", {}, v.tag)], ["created", fmtTime(v.created)], ["window", fmtWindow(v)],
      ["rows", fmtInt(v.rows)], ["bytes", fmtBytes(v.bytes)], ["md5", h("code", {}, v.md5 || "–")],
      ["commit", h("code", {}, v.commit || "–")], ["columns", fmtInt(columns.length)]];
    show(
      h("h1", {}, `${project} / ${version}`),
      h("dl", { class: "facts" }, facts.map(([k, val]) => [h("dt", {}, k), h("dd", {}, val)])),
      h("h2", {}, "Get this version"),
      h("p", { class: "muted" }, "With git and DVC only (no Airflow): clone, check out the tag, pull."),
      (pull.clone || []).length ? command(pull.clone.join("\n")) : null,
      pull.get ? h("p", { class: "muted" }, "Or just the file:") : null,
      pull.get ? command(pull.get) : null,
      pull.python ? h("p", { class: "muted" }, "Or in Python:") : null,
      pull.python ? command(`import dvc.api\ndata = ${pull.python}`) : null,
      h("h2", {}, "Profile"),
      columns.length ? h("table", { id: "profile" },
        h("thead", {}, h("tr", {}, h("th", {}, "column"), h("th", {}, "type"), h("th", { class: "num" }, "nulls"),
          h("th", { class: "num" }, "empty"), h("th", {}, "min"), h("th", {}, "max"), h("th", { class: "num" }, "distinct"))),
        h("tbody", {}, columns.map((c) => {
          const p = profile[c] || {};
          return h("tr", { "data-column": c },
            h("td", {}, h("code", {}, c)), h("td", {}, p.type || "–"),
            h("td", { class: p.nulls ? "num nulls" : "num", title: p.nulls ? "has NULLs" : null }, fmtInt(p.nulls)),
            h("td", { class: "num" }, fmtInt(p.empty)),
            h("td", {}, h("code", {}, fmtValue(p.min))), h("td", {}, h("code", {}, fmtValue(p.max))),
            h("td", { class: "num" }, p.distinct === null || p.distinct === undefined ? "–" : "≈ " + fmtInt(p.distinct)));
        })))
        : h("p", { class: "muted" }, "No profile: this version was published before profiles were recorded."),
      h("h2", {}, "Experiments trained on it"),
      experimentsTable(v.experiments || [], false));
  }

  function changeRow(label, base, target, cls) {
    return h("tr", {}, h("td", {}, label), h("td", {}, h("code", {}, fmtValue(base))),
      h("td", {}, h("code", {}, fmtValue(target))), h("td", { class: cls || "" }, ""));
  }

  async function viewDiff(project, base, target) {
    setCrumbs([{ text: "projects", href: "#/" }, { text: project, href: hrefProject(project) }, { text: `${base} → ${target}` }]);
    const [versions, d] = await Promise.all([
      api(`projects/${enc(project)}/versions`),
      api(`projects/${enc(project)}/diff?base=${enc(base)}&target=${enc(target)}`),
    ]);
    const schema = d.schema || { added: [], removed: [], changed: {} };
    const rb = d.rows ? d.rows.base : null, rt = d.rows ? d.rows.target : null;
    const delta = rb !== null && rt !== null ? rt - rb : null;
    const schemaItems = [
      ...(schema.added || []).map((c) => h("li", { class: "added" }, "+ ", h("code", {}, c), " added")),
      ...(schema.removed || []).map((c) => h("li", { class: "removed" }, "− ", h("code", {}, c), " removed")),
      ...Object.entries(schema.changed || {}).map(([c, ch]) => h("li", { class: "changed" }, "~ ", h("code", {}, c),
        ` type ${fmtValue(ch.base)} → ${fmtValue(ch.target)}`)),
    ];
    const colEntries = Object.entries(d.columns || {});
    show(
      h("h1", {}, `${project}: ${base} → ${target}`),
      diffPicker(project, versions, base, target),
      h("section", { id: "diff" },
        h("h2", {}, "Rows"),
        h("p", { id: "diff-rows" }, `${fmtInt(rb)} → ${fmtInt(rt)}`,
          delta !== null ? h("span", { class: delta > 0 ? "delta-up" : delta < 0 ? "delta-down" : "" },
            ` (${delta > 0 ? "+" : ""}${fmtInt(delta)})`) : null),
        d.keys ? h("p", { id: "diff-keys" },
          h("span", { class: "added" }, `${fmtInt(d.keys.added)} ${d.keys.added === 1 ? "key" : "keys"} added`), " · ",
          h("span", { class: "removed" }, `${fmtInt(d.keys.removed)} removed`), " · ",
          h("span", { class: "changed" }, `${fmtInt(d.keys.changed)} changed`))
          : h("p", { class: "muted", id: "diff-keys" }, d.keys_error
            ? `No row-level counts: ${d.keys_error}`
            : "No row-level counts: the project declares no key."),
        h("h2", {}, "Schema"),
        schemaItems.length ? h("ul", { id: "diff-schema" }, schemaItems) : h("p", { class: "muted", id: "diff-schema" }, "Same columns and types."),
        h("h2", {}, "Column profiles"),
        colEntries.length ? h("table", { id: "diff-columns" },
          h("thead", {}, h("tr", {}, h("th", {}, "column / statistic"), h("th", {}, base), h("th", {}, target), h("th", {}, ""))),
          h("tbody", {}, colEntries.flatMap(([c, stats]) => [
            h("tr", {}, h("td", { colspan: 4 }, h("code", {}, c))),
            ...(stats && typeof stats === "object" ? Object.entries(stats) : []).map(([k, ch]) =>
              ch && typeof ch === "object" && ("base" in ch || "target" in ch)
                ? changeRow("  " + k, ch.base, ch.target, k === "nulls" && (ch.target || 0) > (ch.base || 0) ? "changed" : "")
                : changeRow("  " + k, "", ch)),
          ])))
          : h("p", { class: "muted" }, "No statistic changed in the columns both versions have.")));
  }

  async function viewExperiments(project) {
    setCrumbs([{ text: "projects", href: "#/" }, { text: project, href: hrefProject(project) }, { text: "experiments" }]);
    const exps = await api(`experiments?project=${enc(project)}`);
    show(h("h1", {}, `${project}: experiments`), experimentsTable(exps, true));
  }

  // ---------------------------------------------------------------- routing
  function startFromDag() {  // the DAG page tab: ?dag=version_<p> or train_<p>
    const dag = new URLSearchParams(location.search).get("dag");
    if (!dag || location.hash) return;
    const m = /^(?:version|train)_([a-z][a-z0-9_-]{0,39})$/.exec(dag);
    if (m) location.replace("#/p/" + enc(m[1]));
    else view.dataset.dag = dag;
  }
  async function route() {
    const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
    try {
      if (parts[0] === "p" && parts[1]) {
        if (parts[2] === "v" && parts[3]) return await viewVersion(parts[1], parts[3]);
        if (parts[2] === "diff" && parts[3] && parts[4]) return await viewDiff(parts[1], parts[3], parts[4]);
        return await viewProject(parts[1]);
      }
      if (parts[0] === "experiments" && parts[1]) return await viewExperiments(parts[1]);
      await viewProjects();
      if (view.dataset.dag) {
        view.prepend(h("p", { class: "note" }, `${view.dataset.dag} is not a version_<project> or train_<project> DAG: all projects are listed.`));
      }
    } catch (err) {
      showError(err);
    }
  }
  startFromDag();
  window.addEventListener("hashchange", route);
  route();
})();
