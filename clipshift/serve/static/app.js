// clipshift serve: the front end. Plain JavaScript and canvas, no library, no network beyond
// this server. Every view's state lives in the URL's fragment (#/view?run=...&...), so a view
// can be shared; changing a control rewrites the fragment and the view renders from it.
"use strict";

const METRIC_LABELS = {
  cosine: "cosine", l2: "L2", attention_similarity: "attention sim.",
  patch_similarity: "patch", edge_preservation: "edge", detail_preservation: "detail",
};
const PALETTE = ["#444444", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
  "#e377c2", "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173",
  "#3182bd", "#e6550d", "#31a354", "#756bb1", "#636363"];

let config = null;
let renderToken = 0;
// the runs list of the view being rendered: its fetch starts with the render, alongside the
// config's and the summary's, rather than after them (the first page waited for three answers
// in a row)
let runsPromise = null;

// -- plumbing --------------------------------------------------------------------------------

function parseHash() {
  const hash = location.hash.replace(/^#\/?/, "");
  const [path, query] = hash.split("?");
  const parts = (path || "runs").split("/").map(decodeURIComponent);
  return { view: parts[0] || "runs", arg: parts[1] || null, params: new URLSearchParams(query || "") };
}

function go(view, params, arg) {
  const clean = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== null && v !== undefined && v !== "") clean.set(k, v);
  }
  const query = clean.toString();
  location.hash = `#/${view}${arg ? "/" + encodeURIComponent(arg) : ""}${query ? "?" + query : ""}`;
}

function paramsObject(params) {
  return Object.fromEntries(params.entries());
}

async function api(path, options) {
  const response = await fetch(path, options);
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try { message = (await response.json()).error || message; } catch (e) { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

async function getJSON(path) {
  return (await api(path)).json();
}

function showError(message) {
  const box = document.getElementById("error");
  box.textContent = message;
  box.hidden = !message;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined && v !== false) node.setAttribute(k, v);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

// numbers as the commands' tables print them: 6 significant digits
function fmt(value) {
  if (value === null || value === undefined) return "";
  if (typeof value === "number") {
    if (Number.isInteger(value)) return String(value);
    return Number(value.toPrecision(6)).toString();
  }
  if (Array.isArray(value)) return `[${value.length}]`;
  return String(value);
}

function pixelsURL(run, imageId, variant) {
  return `api/pixels/${encodeURIComponent(run)}/${encodeURIComponent(imageId)}/${encodeURIComponent(variant)}.png`;
}

function baseName(path) {
  return path ? path.split(/[\\/]/).pop() : "";
}

function thumb(run, imageId, variant, hasPixels, path) {
  if (hasPixels) {
    return el("img", { class: "thumb", src: pixelsURL(run, imageId, variant), alt: variant,
      loading: "lazy", "data-variant": variant });
  }
  return el("div", { class: "thumb", title: path || imageId }, baseName(path) || imageId.slice(0, 12));
}

function table(columns, rows, opts = {}) {
  const head = el("tr", {}, columns.map((c) => {
    const th = el("th", { "data-column": c }, c);
    if (opts.sort) {
      th.classList.add("sortable");
      if (opts.sort.column === c) th.classList.add(`sorted-${opts.sort.dir}`);
      th.addEventListener("click", () => opts.onSort(c));
    }
    return th;
  }));
  const body = rows.map((row, i) => {
    const tr = el("tr", opts.onRow ? { class: "clickable" } : {},
      columns.map((c) => el("td", { class: typeof row[c] === "number" ? "num" : "", "data-column": c },
        fmt(row[c]))));
    if (opts.onRow) tr.addEventListener("click", () => opts.onRow(row, i));
    if (opts.selected && opts.selected(row)) tr.classList.add("selected");
    return tr;
  });
  return el("div", { class: "scroll" }, el("table", { id: opts.id }, el("thead", {}, head), el("tbody", {}, body)));
}

function runsList() {
  if (!runsPromise) {
    runsPromise = getJSON("api/runs");
    runsPromise.catch(() => {}); // its view awaits it and shows the error
  }
  return runsPromise;
}

function runLabel(run) {
  document.getElementById("run-label").textContent = run ? `run ${run}` : "";
}

// -- views -----------------------------------------------------------------------------------

async function viewRuns(root, params) {
  const asked = params.get("run");
  const statsPromise = asked ? getJSON(`api/stats?run=${encodeURIComponent(asked)}`) : null;
  if (statsPromise) statsPromise.catch(() => {}); // awaited below, after the runs
  const runs = await runsList();
  const run = asked || (runs[0] && runs[0].run_id);
  root.append(el("h2", {}, "Runs"));
  if (!runs.length) {
    root.append(el("p", { class: "muted" }, "The store holds no runs yet: run clipshift ingest first."));
    return;
  }
  const columns = ["run_id", "model", "family", "suite", "seed", "precision", "images", "variants", "created_at"];
  root.append(table(columns, runs, {
    id: "runs",
    onRow: (r) => go("runs", { ...paramsObject(params), run: r.run_id }),
    selected: (r) => r.run_id === run,
  }));
  runLabel(run);
  const stats = await (statsPromise || getJSON(`api/stats?run=${encodeURIComponent(run)}`));
  const summary = stats.summary.slice();
  const sort = { column: params.get("sort") || "rank", dir: params.get("dir") || "asc" };
  const sign = sort.dir === "desc" ? -1 : 1;
  summary.sort((a, b) => {
    const x = a[sort.column], y = b[sort.column];
    if (x === y) return 0;
    if (x === null) return 1;
    if (y === null) return -1;
    return (x < y ? -1 : 1) * sign;
  });
  // severity is shown where some row has one, as clipshift stats does
  const columns2 = stats.summary.length ? Object.keys(stats.summary[0]).filter((c) => c !== "run_id" && c !== "model"
    && (c !== "severity" || stats.summary.some((r) => r.severity !== null))) : [];
  root.append(
    el("h2", {}, `Summary of run ${run.slice(0, 12)} (${stats.run.model})`),
    el("p", { class: "muted" }, "Per (augmentation, severity), as clipshift stats gives it; click a column to sort, a row to see its images."),
    table(columns2, summary, {
      id: "summary",
      sort,
      onSort: (c) => go("runs", { ...paramsObject(params), run, sort: c,
        dir: sort.column === c && sort.dir === "asc" ? "desc" : "asc" }),
      onRow: (r) => go("gallery", { run, augmentation: r.augmentation, severity: r.severity }),
    }),
  );
  if (config.report_figures.length) {
    root.append(el("h2", {}, "Report figures"), el("p", { class: "muted" }, "From the clipshift report folder the server was started with."),
      el("div", { class: "figures", id: "report-figures" }, config.report_figures.map((name) =>
        el("figure", {}, el("img", { src: `api/report/${encodeURIComponent(name)}`, alt: name, loading: "lazy" }), el("figcaption", {}, name)))));
  }
  if (stats.severity && stats.severity.length) {
    root.append(el("h2", {}, "Severity curves (mean cosine, 95% interval)"));
    const canvas = el("canvas", { id: "severity-canvas", width: 720, height: 360 });
    root.append(canvas);
    drawSeverity(canvas, stats.severity);
  }
}

function drawSeverity(canvas, rows) {
  const ctx = canvas.getContext("2d");
  const pad = 40, w = canvas.width - pad * 2 - 160, h = canvas.height - pad * 2;
  const severities = rows.map((r) => r.severity);
  const lows = rows.map((r) => r.cosine_mean - (r.cosine_ci95 || 0));
  const highs = rows.map((r) => r.cosine_mean + (r.cosine_ci95 || 0));
  const sMin = Math.min(...severities), sMax = Math.max(...severities);
  const yMin = Math.min(...lows), yMax = Math.max(...highs);
  const x = (s) => pad + (sMax === sMin ? w / 2 : ((s - sMin) / (sMax - sMin)) * w);
  const y = (v) => pad + h - (yMax === yMin ? h / 2 : ((v - yMin) / (yMax - yMin)) * h);
  ctx.strokeStyle = "#999";
  ctx.strokeRect(pad, pad, w, h);
  ctx.fillStyle = "#333";
  ctx.font = "11px sans-serif";
  for (let s = sMin; s <= sMax; s++) ctx.fillText(String(s), x(s) - 3, pad + h + 14);
  ctx.fillText(yMax.toFixed(3), 2, pad + 4);
  ctx.fillText(yMin.toFixed(3), 2, pad + h);
  const names = [...new Set(rows.map((r) => r.augmentation))];
  names.forEach((name, i) => {
    const mine = rows.filter((r) => r.augmentation === name);
    ctx.strokeStyle = ctx.fillStyle = PALETTE[(i + 1) % PALETTE.length];
    ctx.beginPath();
    mine.forEach((r, j) => (j ? ctx.lineTo : ctx.moveTo).call(ctx, x(r.severity), y(r.cosine_mean)));
    ctx.stroke();
    for (const r of mine) {
      ctx.beginPath();
      ctx.moveTo(x(r.severity), y(r.cosine_mean - (r.cosine_ci95 || 0)));
      ctx.lineTo(x(r.severity), y(r.cosine_mean + (r.cosine_ci95 || 0)));
      ctx.stroke();
    }
    ctx.fillText(name, pad + w + 10, pad + 12 + i * 14);
  });
}

async function viewGallery(root, params) {
  const runs = await runsList();
  const run = params.get("run") || (runs[0] && runs[0].run_id);
  if (!run) throw new Error("the store holds no runs yet: run clipshift ingest first");
  runLabel(run);
  const metric = params.get("metric") || "cosine";
  const page = Math.max(0, parseInt(params.get("page") || "0", 10) || 0);
  const limit = config.page_size;
  const query = new URLSearchParams({ run, metric, offset: page * limit, limit });
  for (const key of ["augmentation", "severity", "order", "min", "max", "name", "flip", "label"]) {
    if (params.get(key)) query.set(key, params.get(key));
  }
  const data = await getJSON(`api/images?${query}`);
  const state = paramsObject(params);
  state.run = data.run_id;
  const set = (key) => (event) => go("gallery", { ...state, [key]: event.target.value, page: 0 });
  const augmentations = [...new Set(data.augmentations.map((a) => a.augmentation))];
  const severities = [...new Set(data.augmentations.map((a) => a.severity).filter((s) => s !== null))];
  const select = (name, options, value) => el("select", { name, onchange: set(name) },
    options.map(([v, label]) => el("option", { value: v, selected: String(v) === String(value ?? "") }, label)));
  root.append(el("div", { class: "controls" },
    el("label", {}, "run", select("run", runs.map((r) => [r.run_id, `${r.run_id.slice(0, 12)} ${baseName(r.model)}`]), data.run_id)),
    el("label", {}, "augmentation", select("augmentation", [["", "all"], ...augmentations.map((a) => [a, a])], params.get("augmentation"))),
    severities.length ? el("label", {}, "severity", select("severity", [["", "all"], ...severities.map((s) => [s, s])], params.get("severity"))) : null,
    el("label", {}, "metric", select("metric", config.metrics.map((m) => [m, m]), metric)),
    el("label", {}, "order", select("order", [["", "most moved first"], ["asc", "ascending"], ["desc", "descending"]], params.get("order"))),
    el("label", {}, "min", el("input", { name: "min", type: "number", step: "any", size: 6, value: params.get("min") || "", onchange: set("min") })),
    el("label", {}, "max", el("input", { name: "max", type: "number", step: "any", size: 6, value: params.get("max") || "", onchange: set("max") })),
    el("label", {}, "file name", el("input", { name: "name", type: "search", value: params.get("name") || "", onchange: set("name") })),
    el("label", {}, "zero-shot flip", select("flip", [["", "any"], ["true", "flipped"], ["false", "kept"]], params.get("flip"))),
    data.labels.length ? el("label", {}, "label", select("label", [["", "any"], ...data.labels.map((l) => [l, l])], params.get("label"))) : null,
  ));
  const pages = Math.max(1, Math.ceil(data.total / limit));
  const pager = () => el("div", { class: "pager" },
    el("button", { disabled: page === 0, onclick: () => go("gallery", { ...state, page: page - 1 }) }, "previous"),
    el("span", { id: "page-info" }, `page ${page + 1} of ${pages} (${data.total} images, ${metric} ${data.order})`),
    el("button", { disabled: page + 1 >= pages, onclick: () => go("gallery", { ...state, page: page + 1 }) }, "next"));
  root.append(pager());
  const grid = el("div", { class: "grid", id: "gallery" });
  for (const row of data.images) {
    grid.append(el("div", {
      class: "card", "data-image-id": row.image_id, "data-variant": row.variant, "data-value": row.value,
      onclick: () => go("image", { run: data.run_id, variant: row.variant }, row.image_id),
    },
    el("div", { class: "pair" },
      thumb(data.run_id, row.image_id, "original", row.original_pixels, row.path),
      thumb(data.run_id, row.image_id, row.variant, row.variant_pixels, row.path)),
    el("div", { class: "values" },
      el("div", {}, `${row.variant}  ${baseName(row.path)}`),
      el("div", {}, `${metric} `, el("b", { class: "value" }, fmt(row.value))),
      el("div", { class: "muted" }, `cosine ${fmt(row.cosine)} · L2 ${fmt(row.l2)}`),
      row.label ? el("div", { class: "muted" }, `${row.label} → ${row.variant_label}${row.flipped ? " (flip)" : ""}`) : null)));
  }
  root.append(grid);
  if (!data.images.length) root.append(el("p", { class: "muted" }, "No images match these filters."));
  root.append(pager());
}

function normalised(values) {
  let lo = Infinity, hi = -Infinity;
  for (const v of values) { if (v < lo) lo = v; if (v > hi) hi = v; }
  const span = hi - lo;
  return values.map((v) => (span > 0 ? (v - lo) / span : 0));
}

// an overlay map of one variant: an attention layer, or a stored token-drift column
function overlayValues(variant, mode, layer, cells) {
  if (mode === "none") return null;
  if (mode === "attention") {
    const all = variant.attention_layers;
    if (all && all.length >= (layer + 1) * cells) return all.slice(layer * cells, (layer + 1) * cells);
    return variant.attention;
  }
  const drift = variant[mode];
  if (!Array.isArray(drift) || !drift.length) return null;
  if (drift.length >= (layer + 1) * cells && drift.length > cells) return drift.slice(layer * cells, (layer + 1) * cells);
  return drift.length === cells ? drift : null;
}

function drawVariant(canvas, image, values, grid, label) {
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (image) {
    ctx.drawImage(image, 0, 0, canvas.width, canvas.height);
  } else {
    ctx.fillStyle = "#e8e8e8";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.fillStyle = "#555";
    ctx.font = "12px sans-serif";
    ctx.fillText(label, 8, canvas.height / 2);
  }
  if (!values || !grid) return;
  const norm = normalised(values);
  const size = canvas.width / grid;
  for (let i = 0; i < norm.length && i < grid * grid; i++) {
    ctx.fillStyle = `rgba(255, 40, 0, ${(0.65 * norm[i]).toFixed(3)})`;
    ctx.fillRect((i % grid) * size, Math.floor(i / grid) * size, size, size);
  }
}

function loadImage(src) {
  return new Promise((resolve) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => resolve(null);
    image.src = src;
  });
}

async function viewImage(root, params, imageId) {
  if (!imageId) throw new Error("no image given: pick one in the gallery");
  const runs = await runsList();
  const run = params.get("run") || (runs[0] && runs[0].run_id);
  const data = await getJSON(`api/images/${encodeURIComponent(imageId)}?run=${encodeURIComponent(run)}`);
  runLabel(data.run_id);
  const state = { ...paramsObject(params), run: data.run_id };
  const lastLayer = Math.max(0, (data.num_layers || 1) - 1);
  const layer = Math.min(lastLayer, parseInt(params.get("layer") ?? String(lastLayer), 10));
  const overlays = ["attention", ...data.token_drift_columns.filter((c) => Array.isArray(data.variants[0][c])), "none"];
  const mode = overlays.includes(params.get("overlay")) ? params.get("overlay") : "attention";
  const picked = params.get("variant") || (data.variants[1] || data.variants[0]).variant;
  const cells = (data.patch_grid || 0) ** 2;
  root.append(
    el("h2", {}, `Image ${data.image_id.slice(0, 12)} `, el("span", { class: "muted", id: "image-path" }, data.path || "")),
    el("div", { class: "controls" },
      el("label", {}, "overlay", el("select", { name: "overlay", onchange: (e) => go("image", { ...state, overlay: e.target.value }, imageId) },
        overlays.map((o) => el("option", { value: o, selected: o === mode }, o)))),
      el("label", {}, `layer `, el("output", { id: "layer-value" }, String(layer)),
        el("input", { id: "layer", type: "range", min: 0, max: lastLayer, value: layer,
          oninput: (e) => { document.getElementById("layer-value").textContent = e.target.value; redraw(parseInt(e.target.value, 10)); },
          onchange: (e) => history.replaceState(null, "", hashWith({ ...state, layer: e.target.value }, imageId)) }))));
  const holder = el("div", { class: "variants", id: "variants" });
  root.append(holder);
  const drawn = [];
  for (const variant of data.variants) {
    const canvas = el("canvas", { width: 224, height: 224, "data-variant": variant.variant });
    holder.append(el("div", {
      class: `variant${variant.variant === picked ? " picked" : ""}`, "data-variant": variant.variant,
      onclick: () => go("image", { ...state, variant: variant.variant }, imageId),
    }, el("div", { class: "name" }, variant.variant), canvas,
    el("div", { class: "values" }, variant.variant === "original" ? "" : `cosine ${fmt(variant.cosine)}`)));
    drawn.push({ canvas, variant, image: null });
  }
  const label = baseName(data.path) || data.image_id.slice(0, 12);
  function redraw(l) {
    for (const d of drawn) drawVariant(d.canvas, d.image, overlayValues(d.variant, mode, l, cells), data.patch_grid, label);
  }
  redraw(layer);
  await Promise.all(drawn.map(async (d) => {
    if (d.variant.pixels) d.image = await loadImage(pixelsURL(data.run_id, data.image_id, d.variant.variant));
  }));
  redraw(layer);
  const scalarDrift = data.token_drift_columns.filter((c) => !Array.isArray(data.variants[0][c]));
  root.append(el("h2", {}, "Metrics"), table(["variant", ...config.metrics, ...scalarDrift], data.variants, {
    id: "image-metrics", onRow: (r) => go("image", { ...state, variant: r.variant }, imageId),
    selected: (r) => r.variant === picked,
  }));
  const original = data.variants[0];
  const chosen = data.variants.find((v) => v.variant === picked) || original;
  if (original.zeroshot_top5 || chosen.zeroshot_top5) {
    const rows = [0, 1, 2, 3, 4].map((i) => ({
      rank: i + 1,
      original: original.zeroshot_top5 ? original.zeroshot_top5[i]?.label : "",
      original_probability: original.zeroshot_top5 ? original.zeroshot_top5[i]?.probability : null,
      [chosen.variant]: chosen.zeroshot_top5 ? chosen.zeroshot_top5[i]?.label : "",
      [`${chosen.variant}_probability`]: chosen.zeroshot_top5 ? chosen.zeroshot_top5[i]?.probability : null,
    }));
    root.append(el("h2", {}, "Zero-shot top-5"), table(Object.keys(rows[0]), rows, { id: "zeroshot" }));
  }
  root.append(el("h2", {}, `Nearest stored originals, before and after ${chosen.variant}`));
  for (const v of [original, chosen]) {
    root.append(el("div", { class: "neighbors", "data-variant": v.variant }, el("b", {}, `${v.variant}: `),
      v.neighbors.map((n) => el("a", { href: hashWith({ run: data.run_id }, n.image_id, "image"), "data-image-id": n.image_id },
        `${n.image_id.slice(0, 10)} (${n.distance.toFixed(4)})`))));
  }
}

function hashWith(params, arg, view) {
  const clean = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined && v !== "") clean.set(k, v);
  return `#/${view || "image"}/${encodeURIComponent(arg)}?${clean}`;
}

async function viewMap(root, params) {
  const runs = await runsList();
  const run = params.get("run") || (runs[0] && runs[0].run_id);
  if (!run) throw new Error("the store holds no runs yet: run clipshift ingest first");
  const method = params.get("method") || "pca";
  const lines = params.get("lines") !== "0";
  runLabel(run);
  const state = { ...paramsObject(params), run };
  root.append(el("div", { class: "controls" },
    el("label", {}, "run", el("select", { name: "run", onchange: (e) => go("map", { ...state, run: e.target.value }) },
      runs.map((r) => el("option", { value: r.run_id, selected: r.run_id === run }, `${r.run_id.slice(0, 12)} ${baseName(r.model)}`)))),
    el("label", {}, "projection", el("select", { name: "method", onchange: (e) => go("map", { ...state, method: e.target.value }) },
      config.projection_methods.map((m) => el("option", { value: m, selected: m === method }, m)))),
    el("label", {}, "lines", el("input", { type: "checkbox", name: "lines", checked: lines,
      onchange: (e) => go("map", { ...state, lines: e.target.checked ? "" : "0" }) })),
    el("span", { id: "map-info", class: "muted" }, "projecting…")));
  const canvas = el("canvas", { id: "map-canvas", width: 900, height: 640 });
  const legend = el("div", { class: "legend", id: "map-legend" });
  const tip = el("div", { id: "map-tip", hidden: true });
  root.append(canvas, legend, tip);
  const started = performance.now();
  const data = await (await api(`api/map?run=${encodeURIComponent(run)}&method=${method}`)).json();
  const fetched = performance.now();
  const n = data.x.length;
  const pad = 12;
  let xMin = Infinity, xMax = -Infinity, yMin = Infinity, yMax = -Infinity;
  for (let i = 0; i < n; i++) {
    const x = data.x[i], y = data.y[i];
    if (x < xMin) xMin = x; if (x > xMax) xMax = x; if (y < yMin) yMin = y; if (y > yMax) yMax = y;
  }
  const sx = (canvas.width - 2 * pad) / ((xMax - xMin) || 1), sy = (canvas.height - 2 * pad) / ((yMax - yMin) || 1);
  const px = new Float32Array(n), py = new Float32Array(n);
  for (let i = 0; i < n; i++) { px[i] = pad + (data.x[i] - xMin) * sx; py[i] = canvas.height - pad - (data.y[i] - yMin) * sy; }
  const originalOf = new Int32Array(data.images.length).fill(-1);
  for (let i = 0; i < n; i++) if (data.variant[i] === 0) originalOf[data.image[i]] = i;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  if (lines) {
    ctx.strokeStyle = `rgba(120, 120, 120, ${n > 5000 ? 0.12 : 0.5})`;
    ctx.lineWidth = 0.5;
    ctx.beginPath();
    for (let i = 0; i < n; i++) {
      const o = originalOf[data.image[i]];
      if (data.variant[i] === 0 || o < 0) continue;
      ctx.moveTo(px[o], py[o]);
      ctx.lineTo(px[i], py[i]);
    }
    ctx.stroke();
  }
  // one path per colour: a fill call per point would take seconds at 133k points
  const size = n > 20000 ? 1.5 : n > 2000 ? 3 : 5;
  data.variants.forEach((name, v) => {
    ctx.fillStyle = PALETTE[v % PALETTE.length];
    ctx.beginPath();
    for (let i = 0; i < n; i++) if (data.variant[i] === v) ctx.rect(px[i] - size / 2, py[i] - size / 2, size, size);
    ctx.fill();
    legend.append(el("span", {}, el("i", { style: `background:${PALETTE[v % PALETTE.length]}` }), name));
  });
  const drawn = performance.now();
  window.clipshiftMap = { points: n, fetchMs: fetched - started, drawMs: drawn - fetched, px, py };
  document.getElementById("map-info").textContent =
    `${n} points (${data.images.length} images), ${method}; drawn in ${Math.round(drawn - fetched)} ms`;
  // a coarse grid of the points, so hovering finds the nearest without a scan of all
  const cell = 8, cols = Math.ceil(canvas.width / cell), buckets = new Map();
  for (let i = 0; i < n; i++) {
    const key = Math.floor(py[i] / cell) * cols + Math.floor(px[i] / cell);
    if (!buckets.has(key)) buckets.set(key, []);
    buckets.get(key).push(i);
  }
  function nearest(event) {
    const r = canvas.getBoundingClientRect();
    const x = (event.clientX - r.left) * (canvas.width / r.width), y = (event.clientY - r.top) * (canvas.height / r.height);
    let best = -1, bestD = 100;
    const cx = Math.floor(x / cell), cy = Math.floor(y / cell);
    for (let dy = -1; dy <= 1; dy++) for (let dx = -1; dx <= 1; dx++) {
      for (const i of buckets.get((cy + dy) * cols + cx + dx) || []) {
        const d = (px[i] - x) ** 2 + (py[i] - y) ** 2;
        if (d < bestD) { bestD = d; best = i; }
      }
    }
    return best;
  }
  let shown = -1;
  canvas.addEventListener("mousemove", (event) => {
    const i = nearest(event);
    if (i < 0) { tip.hidden = true; shown = -1; return; }
    tip.style.left = `${event.clientX + 14}px`;
    tip.style.top = `${event.clientY + 14}px`;
    tip.hidden = false;
    if (i === shown) return;
    shown = i;
    const imageId = data.images[data.image[i]], variant = data.variants[data.variant[i]];
    const img = data.pixels[i] ? el("img", { src: pixelsURL(run, imageId, variant), alt: "" }) : null;
    tip.replaceChildren(...[img, el("div", {}, `${imageId.slice(0, 12)} · ${variant}`)].filter(Boolean));
  });
  canvas.addEventListener("mouseleave", () => { tip.hidden = true; shown = -1; });
  canvas.addEventListener("click", (event) => {
    const i = nearest(event);
    if (i >= 0) go("image", { run, variant: data.variants[data.variant[i]] }, data.images[data.image[i]]);
  });
}

async function viewSQL(root, params) {
  const query = params.get("q") || "SELECT augmentation, severity, n, cosine_mean FROM summary ORDER BY cosine_mean LIMIT 20";
  const box = el("textarea", { id: "sql-query", spellcheck: "false" });
  box.value = query;
  const run = () => go("sql", { q: box.value });
  box.addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) run(); });
  const download = async () => {
    try {
      const response = await api("api/sql", { method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ query: box.value, format: "csv" }) });
      const link = el("a", { href: URL.createObjectURL(await response.blob()), download: "clipshift-sql.csv" });
      document.body.append(link);
      link.click();
      link.remove();
    } catch (error) { showError(error.message); }
  };
  root.append(el("p", { class: "muted" }, `Read-only SQL over the store's views, as clipshift sql runs it (at most ${config.sql_max_rows} rows shown; Ctrl-Enter runs).`),
    box, el("div", { class: "controls" }, el("button", { id: "sql-run", onclick: run }, "Run"),
      el("button", { id: "sql-csv", onclick: download }, "Download CSV")));
  if (!params.get("q")) return;
  const response = await api("api/sql", { method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ query }) });
  const result = await response.json();
  root.append(el("p", { id: "sql-info", class: "muted" },
    result.truncated ? `first ${result.rows.length} of ${result.total_rows} rows` : `${result.total_rows} rows`),
  table(result.columns, result.rows, { id: "sql-result" }));
}

const VIEWS = { runs: viewRuns, gallery: viewGallery, image: viewImage, map: viewMap, sql: viewSQL };

async function render() {
  const mine = ++renderToken;
  const hash = location.hash;
  const { view, arg, params } = parseHash();
  showError("");
  for (const name of ["runs", "gallery", "map", "sql"]) {
    document.getElementById(`nav-${name}`).classList.toggle("active", name === view || (name === "gallery" && view === "image"));
    // the other views keep the run the page is on
    const run = params.get("run");
    document.getElementById(`nav-${name}`).setAttribute("href", `#/${name}${run && name !== "sql" ? "?run=" + encodeURIComponent(run) : ""}`);
  }
  const root = document.getElementById("view");
  const fresh = el("div", { "data-view": view });
  root.replaceChildren(fresh);
  document.body.dataset.ready = "false";
  runsPromise = null;
  if (view !== "sql") runsList();
  try {
    if (!config) config = await getJSON("api/config");
    const handler = VIEWS[view];
    if (!handler) throw new Error(`no view ${view}: one of ${Object.keys(VIEWS).join(", ")}`);
    await handler(fresh, params, arg);
  } catch (error) {
    if (mine === renderToken) showError(error.message);
  } finally {
    // which URL the ready view shows: a test (or a script) waits for the view of the URL it
    // set, not the previous one, still marked ready until the hashchange event arrives
    if (mine === renderToken) Object.assign(document.body.dataset, { ready: "true", rendered: hash });
  }
}

window.addEventListener("hashchange", render);
window.addEventListener("DOMContentLoaded", render);
