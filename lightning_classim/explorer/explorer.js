// The class-similarity explorer (lightning_classim). Self-contained: no network, no framework.
// Data: the JSON in #classim-data (see lightning_classim/explorer/__init__.py); blobs are base64 of zlib-deflated
// bytes, inflated with the browser's DecompressionStream. Values are one byte: r = q / 127 - 1, 255 = NaN.
(function () {
  "use strict";
  const DATA = JSON.parse(document.getElementById("classim-data").textContent);
  const M = DATA.m;
  const NAMES = DATA.names;
  const E = DATA.epochs.length;
  const LUT = DATA.lut;
  const NAN = 255;
  const cache = new Map();

  // base64 to bytes without fetch (the page's Content-Security-Policy allows no connection, data: URLs included)
  function fromBase64(b64) {
    if (typeof Uint8Array.fromBase64 === "function") return Uint8Array.fromBase64(b64);
    const text = atob(b64);
    const out = new Uint8Array(text.length);
    for (let i = 0; i < text.length; i++) out[i] = text.charCodeAt(i);
    return out;
  }

  async function inflate(b64) {
    if (cache.has(b64)) return cache.get(b64);
    const bytes = fromBase64(b64);
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
    const out = new Uint8Array(await new Response(stream).arrayBuffer());
    cache.set(b64, out);
    return out;
  }
  const r = (q) => (q === NAN ? NaN : q / 127 - 1);
  const fmt = (v) => (Number.isFinite(v) ? v.toFixed(3) : "n/a");
  const el = (tag, attrs, ...kids) => {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v);
    }
    for (const kid of kids) node.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
    return node;
  };

  // ------------------------------------------------------------------ state
  const S = { epoch: E - 1, order: "tree", view: "run", scale: 1, x0: 0, y0: 0, sel: -1, gutter: 0,
              show: { levels: true, pairs: true, split: true, failed: true } };
  let ord = null; // class index at each position
  let pos = null; // position of each class
  let cur = null; // {full | overview} of the current epoch, decoded
  let detail = null; // last epoch's band and neighbours (large runs)
  let compareFull = null;

  function setOrder(name) {
    const base = name === "this epoch's tree" ? epochData().order : DATA.orders[name];
    ord = Int32Array.from(base);
    pos = new Int32Array(M);
    for (let p = 0; p < M; p++) pos[ord[p]] = p;
    S.order = name;
  }
  const epochData = () => DATA.epochs[S.epoch];

  async function loadEpoch(k) {
    S.epoch = k;
    const e = DATA.epochs[k];
    if (DATA.full) cur = { full: await inflate(e.full) };
    else cur = { overview: await inflate(e.overview.data), blocks: e.overview.blocks, starts: e.overview.starts };
    if (!DATA.full && !cur.blockOf) {
      const b = new Int32Array(M);
      const st = e.overview.starts;
      for (let i = 0, blk = 0; i < M; i++) { while (blk + 1 < st.length && st[blk + 1] <= i) blk++; b[i] = blk; }
      cur.blockOf = b;
    }
    setOrder(DATA.full ? S.order : "tree");
  }

  // value at display positions (p, q): {value, approximate}
  function valueAt(p, q, coarse) {
    const i = ord[p], j = ord[q];
    if (DATA.full) {
      const a = r(cur.full[i * M + j]);
      if (S.view === "run" || !compareFull) return { value: a, approximate: false };
      const b = r(compareFull[i * M + j]);
      return { value: S.view === "other" ? b : b - a, approximate: false };
    }
    if (S.epoch === E - 1 && detail && !coarse) {
      const w = detail.band, d = q - p;
      if (d >= -w && d <= w) return { value: r(detail.cells[p * (2 * w + 1) + d + w]), approximate: false };
      const k = detail.k;
      for (let t = 0; t < k; t++) {
        if (detail.index[i * k + t] === j) return { value: r(detail.values[i * k + t]), approximate: false };
        if (detail.index[j * k + t] === i) return { value: r(detail.values[j * k + t]), approximate: false };
      }
    }
    const bp = cur.blockOf[p], bq = cur.blockOf[q];
    return { value: r(cur.overview[bp * cur.blocks + bq]), approximate: true, block: [bp, bq] };
  }

  // ------------------------------------------------------------------ layout
  const root = el("div", { id: "classim" });
  const epochLabel = el("span", {});
  const slider = el("input", { type: "range", min: "0", max: String(E - 1), value: String(E - 1), id: "classim-epoch" });
  const orderSelect = el("select", { id: "classim-order" });
  for (const name of Object.keys(DATA.orders)) orderSelect.append(el("option", { value: name }, name === "tree" ? "tree (last epoch)" : name));
  if (DATA.full && E > 1) orderSelect.append(el("option", { value: "this epoch's tree" }, "tree (this epoch)"));
  const header = el("header", {}, el("h1", { title: DATA.title }, DATA.title),
    el("label", {}, "epoch ", slider, epochLabel), el("label", {}, "order ", orderSelect));
  if (DATA.compare) {
    const viewSelect = el("select", { id: "classim-compare" },
      el("option", { value: "run" }, "this run"), el("option", { value: "other" }, "compared run"),
      el("option", { value: "diff" }, "difference (compared - this)"));
    viewSelect.addEventListener("change", () => { S.view = viewSelect.value; draw(); });
    header.append(el("label", {}, "view ", viewSelect));
  }
  for (const key of Object.keys(S.show)) {
    const box = el("input", { type: "checkbox", id: "classim-show-" + key });
    box.checked = true;
    box.addEventListener("change", () => { S.show[key] = box.checked; draw(); });
    header.append(el("label", {}, box, key === "split" ? "split groups" : key === "failed" ? "failed groups" : key));
  }
  header.append(el("button", { onclick: () => zoom(1.5) }, "+"), el("button", { onclick: () => zoom(1 / 1.5) }, "\u2212"),
    el("button", { onclick: () => { fit(); draw(); } }, "fit"));
  const view = el("div", { id: "classim-view" });
  const canvas = el("canvas", { id: "classim-canvas" });
  const tip = el("div", { id: "classim-tip" });
  const bar = el("span", { id: "classim-bar" });
  view.append(canvas, tip);
  const search = el("input", { type: "search", id: "classim-search", placeholder: "find a class (part of its name)" });
  const found = el("ul", { id: "classim-found" });
  const selBox = el("div", { id: "classim-selection" }, el("p", { class: "note" }, "Click a row to select its class."));
  const groupBox = el("div", { id: "classim-groups" });
  const pairBox = el("div", { id: "classim-pairs" });
  const aside = el("aside", {}, search, found, el("h2", {}, "Selection"), selBox, el("h2", {}, "Levels and groups"),
    groupBox, el("h2", {}, "Worth a look"), pairBox);
  root.append(header, el("main", {}, view, aside));
  document.body.append(root);
  const ctx = canvas.getContext("2d");
  // the colour scale, in the header: -1 on the left, 1 on the right
  bar.style.background = "linear-gradient(to right," + [0, 64, 128, 191, 255].map((t) => `rgb(${LUT[t].join(",")})`).join(",") + ")";
  header.append(el("span", { class: "scale" }, "r: \u22121 ", bar, " 1"));

  // ------------------------------------------------------------------ drawing
  function size() {
    const w = Math.max(50, view.clientWidth), h = Math.max(50, view.clientHeight);
    if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
  }
  function fitScale() { // the whole matrix in view, beside the names' gutter when they show
    const plain = Math.min(canvas.width, canvas.height) / M;
    return plain < 10 ? plain : Math.max(10, Math.min((canvas.width - nameGutter()) / M, canvas.height / M));
  }
  function fit() {
    size();
    S.scale = fitScale();
    S.x0 = 0; S.y0 = 0;
  }
  let nameWidth = 0;
  function gutter() { // room for the row names on the left once they can be read
    if (S.scale < 10) return 0;
    return nameGutter();
  }
  function nameGutter() {
    if (!nameWidth) {
      ctx.font = "12px system-ui, sans-serif";
      for (let i = 0; i < M; i++) nameWidth = Math.max(nameWidth, ctx.measureText(NAMES[i]).width);
      nameWidth = Math.min(260, nameWidth + 10);
    }
    return nameWidth;
  }
  function clampView() {
    S.scale = Math.min(Math.max(S.scale, fitScale()), 48);
    S.gutter = gutter();
    const spanX = (canvas.width - S.gutter) / S.scale, spanY = canvas.height / S.scale;
    S.x0 = Math.min(Math.max(S.x0, 0), Math.max(0, M - spanX));
    S.y0 = Math.min(Math.max(S.y0, 0), Math.max(0, M - spanY));
  }
  function colour(v, data, o) {
    if (!Number.isFinite(v)) { data[o] = data[o + 1] = data[o + 2] = 200; data[o + 3] = 255; return; }
    const t = Math.max(0, Math.min(255, Math.round((v + 1) * 127.5)));
    const c = LUT[t];
    data[o] = c[0]; data[o + 1] = c[1]; data[o + 2] = c[2]; data[o + 3] = 255;
  }
  function draw() {
    epochLabel.textContent = ` ${epochData().epoch} (step ${epochData().step})` +
      (!DATA.full && S.epoch !== E - 1 ? ": block means only" : "");
    size();
    clampView();
    const w = canvas.width, h = canvas.height, sc = S.scale, g = Math.round(S.gutter);
    const img = ctx.createImageData(w, h);
    const data = img.data;
    for (let o = 0; o < data.length; o += 4) { data[o] = data[o + 1] = data[o + 2] = 255; data[o + 3] = 255; }
    const cols = Math.min(w - g, Math.ceil((M - S.x0) * sc)), rows = Math.min(h, Math.ceil((M - S.y0) * sc));
    const step = sc >= 1 ? 1 : Math.ceil(1 / sc);
    const avg = DATA.full && sc < 1;
    for (let y = 0; y < rows; y++) {
      const p0 = Math.floor(S.y0 + y / sc);
      if (p0 >= M) break;
      for (let x = 0; x < cols; x++) {
        const q0 = Math.floor(S.x0 + x / sc);
        if (q0 >= M) break;
        let v;
        if (avg) {
          let sum = 0, n = 0;
          for (let p = p0; p < Math.min(M, p0 + step); p++) {
            for (let q = q0; q < Math.min(M, q0 + step); q++) {
              const val = valueAt(p, q).value;
              if (Number.isFinite(val)) { sum += val; n++; }
            }
          }
          v = n ? sum / n : NaN;
        } else v = valueAt(p0, q0, sc < 1).value;
        colour(v, data, 4 * (y * w + x + g));
      }
    }
    ctx.putImageData(img, 0, 0);
    overlays();
  }
  const X = (q) => S.gutter + (q - S.x0) * S.scale;
  const Y = (p) => (p - S.y0) * S.scale;
  function runs(labels) {
    const out = [];
    let start = 0;
    for (let p = 1; p <= M; p++) {
      if (p === M || labels[ord[p]] !== labels[ord[start]]) { out.push([start, p]); start = p; }
    }
    return out;
  }
  function outline(labels, width, colour_) {
    const spans = runs(labels);
    if (spans.length > 2000) return;
    ctx.lineWidth = width; ctx.strokeStyle = colour_;
    for (const [a, b] of spans) {
      const x0 = Math.round(X(a)), y0 = Math.round(Y(a)), x1 = Math.round(X(b)), y1 = Math.round(Y(b));
      if (x1 - x0 < 3) continue;
      ctx.strokeRect(x0 + width / 2, y0 + width / 2, x1 - x0 - width, y1 - y0 - width);
    }
  }
  function cuts() { // [coarse labels or null, fine labels], as StructureResult.outlined_cuts
    const e = epochData();
    const coarser = e.levels.filter((l) => l.n_groups < e.n_groups);
    if (coarser.length) return [coarser[0].groups, e.groups];
    const finer = e.levels.filter((l) => l.n_groups > e.n_groups);
    if (finer.length) return [e.groups, finer[0].groups];
    return [null, e.groups];
  }
  function overlays() {
    const e = epochData();
    if (S.show.levels) {
      const [coarse, fine] = cuts();
      outline(fine, 1, coarse ? "#555" : "#111");
      if (coarse) outline(coarse, 3, "#111");
    }
    const mark = (p, q, colour_, radius) => {
      ctx.beginPath(); ctx.arc(X(q + 0.5), Y(p + 0.5), radius, 0, 2 * Math.PI); ctx.stroke();
    };
    if (S.show.pairs) {
      ctx.lineWidth = 2;
      for (const pair of e.pairs) {
        const c = pair.kind === "near_duplicate" ? "#7b3294" : pair.kind === "outlier" ? "#d95f02" : "#1b7837";
        ctx.strokeStyle = c;
        const rad = Math.max(5, S.scale * 0.8);
        if (pair.j >= 0) { mark(pos[pair.i], pos[pair.j], c, rad); mark(pos[pair.j], pos[pair.i], c, rad); }
        else { const p = pos[pair.i]; ctx.strokeRect(X(0), Y(p), M * S.scale, Math.max(1, S.scale)); }
      }
    }
    const box = (members) => {
      let lo = M, hi = -1;
      for (const i of members) { lo = Math.min(lo, pos[i]); hi = Math.max(hi, pos[i]); }
      return [lo, hi + 1];
    };
    if (S.show.split) {
      ctx.lineWidth = 2; ctx.setLineDash([5, 3]); ctx.strokeStyle = "#e7298a";
      for (const s of e.split) {
        const [a0, a1] = box(s.a), [b0, b1] = box(s.b);
        ctx.strokeRect(X(b0), Y(a0), (b1 - b0) * S.scale, (a1 - a0) * S.scale);
        ctx.strokeRect(X(a0), Y(b0), (a1 - a0) * S.scale, (b1 - b0) * S.scale);
      }
      ctx.setLineDash([]);
    }
    if (S.show.failed) {
      ctx.fillStyle = "#ffb000";
      for (const f of e.failed) {
        for (const i of f.members) {
          const p = pos[i], s = Math.max(4, S.scale);
          ctx.fillRect(X(p + 0.5) - s / 2, Y(p + 0.5) - s / 2, s, s);
        }
      }
    }
    if (S.gutter > 0) { // names of the rows in view, in the gutter on the left
      ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, S.gutter, canvas.height);
      ctx.font = `${Math.min(12, Math.floor(S.scale * 0.8))}px system-ui, sans-serif`;
      ctx.textBaseline = "middle"; ctx.textAlign = "right";
      const first = Math.max(0, Math.floor(S.y0)), last = Math.min(M, Math.ceil(S.y0 + canvas.height / S.scale));
      for (let p = first; p < last; p++) {
        ctx.fillStyle = ord[p] === S.sel ? "#0057b7" : "#111";
        ctx.fillText(NAMES[ord[p]], S.gutter - 4, Y(p + 0.5), S.gutter - 6);
      }
      ctx.textAlign = "left";
    }
    if (S.sel >= 0) {
      const p = pos[S.sel];
      ctx.strokeStyle = "#0057b7"; ctx.lineWidth = 1.5;
      ctx.strokeRect(X(0), Y(p), M * S.scale, Math.max(2, S.scale));
      ctx.strokeRect(X(p), Y(0), Math.max(2, S.scale), M * S.scale);
    }
  }

  // ------------------------------------------------------------------ interaction
  function zoom(factor, cx, cy) {
    cx = cx === undefined ? canvas.width / 2 : cx; cy = cy === undefined ? canvas.height / 2 : cy;
    const qx = S.x0 + (cx - S.gutter) / S.scale, py = S.y0 + cy / S.scale;
    S.scale *= factor;
    clampView();
    S.x0 = qx - (cx - S.gutter) / S.scale; S.y0 = py - cy / S.scale;
    draw();
  }
  function at(ev) {
    const rect = canvas.getBoundingClientRect();
    const x = ev.clientX - rect.left, y = ev.clientY - rect.top;
    const q = x < S.gutter ? -1 : Math.floor(S.x0 + (x - S.gutter) / S.scale);
    return { x, y, p: Math.floor(S.y0 + y / S.scale), q };
  }
  canvas.addEventListener("wheel", (ev) => { ev.preventDefault(); const a = at(ev); zoom(ev.deltaY < 0 ? 1.25 : 0.8, a.x, a.y); },
    { passive: false });
  let drag = null;
  canvas.addEventListener("mousedown", (ev) => { drag = { x: ev.clientX, y: ev.clientY, x0: S.x0, y0: S.y0, moved: false }; });
  window.addEventListener("mouseup", (ev) => {
    if (drag && !drag.moved && ev.target === canvas) { const a = at(ev); if (a.p >= 0 && a.p < M && a.y / S.scale + S.y0 < M) selectIndex(ord[a.p]); }
    drag = null;
  });
  canvas.addEventListener("mousemove", (ev) => {
    if (drag && (Math.abs(ev.clientX - drag.x) + Math.abs(ev.clientY - drag.y) > 3)) {
      drag.moved = true;
      S.x0 = drag.x0 - (ev.clientX - drag.x) / S.scale; S.y0 = drag.y0 - (ev.clientY - drag.y) / S.scale;
      draw();
      return;
    }
    const a = at(ev);
    if (a.p < 0 || a.q < 0 || a.p >= M || a.q >= M) { tip.style.display = "none"; return; }
    const c = api.cell(a.p, a.q);
    tip.textContent = `${c.row}  \u00d7  ${c.col}:  r = ${fmt(c.value)}` + (c.approximate ? " (block mean)" : "");
    tip.style.display = "block";
    tip.style.left = Math.min(a.x + 14, view.clientWidth - tip.offsetWidth - 4) + "px";
    tip.style.top = Math.min(a.y + 14, view.clientHeight - tip.offsetHeight - 4) + "px";
  });
  canvas.addEventListener("mouseleave", () => { tip.style.display = "none"; });
  canvas.addEventListener("dblclick", () => { fit(); draw(); });
  let fitted = true; // keep the whole matrix in view when the layout changes, until the user zooms or pans
  new ResizeObserver(() => { if (api.ready) { if (fitted) fit(); draw(); } }).observe(view);
  canvas.addEventListener("wheel", () => { fitted = false; });
  canvas.addEventListener("mousedown", () => { fitted = false; });
  slider.addEventListener("input", async () => { await loadEpoch(Number(slider.value)); sidebar(); draw(); });
  orderSelect.addEventListener("change", () => { setOrder(orderSelect.value); sidebar(); draw(); });
  search.addEventListener("input", () => {
    found.replaceChildren();
    const text = search.value.trim().toLowerCase();
    if (!text) return;
    let n = 0;
    for (let i = 0; i < M && n < 30; i++) {
      if (NAMES[i].toLowerCase().includes(text)) {
        found.append(el("li", { onclick: () => api.select(NAMES[i]) }, NAMES[i])); n++;
      }
    }
    if (!n) found.append(el("li", { class: "note" }, "no class matches"));
  });
  search.addEventListener("keydown", (ev) => {
    const first = found.firstChild;
    if (ev.key === "Enter" && first && !first.classList.contains("note")) first.click();
  });

  function focus(p0, p1) { // show positions p0..p1 (exclusive) filling the view
    size();
    const span = Math.max(1, p1 - p0);
    S.scale = Math.min(canvas.width, canvas.height) / Math.max(span * 1.2, 12);
    clampView();
    const mid = (p0 + p1) / 2;
    clampView();
    S.x0 = mid - (canvas.width - S.gutter) / S.scale / 2; S.y0 = mid - canvas.height / S.scale / 2;
    draw();
  }
  function nearest(i, k) {
    if (DATA.full) {
      const row = [];
      for (let j = 0; j < M; j++) if (j !== i) row.push([j, r(cur.full[i * M + j])]);
      row.sort((a, b) => (Number.isFinite(b[1]) ? b[1] : -9) - (Number.isFinite(a[1]) ? a[1] : -9));
      return row.slice(0, k);
    }
    if (S.epoch !== E - 1 || !detail) return null;
    const out = [];
    for (let t = 0; t < Math.min(k, detail.k); t++) out.push([detail.index[i * detail.k + t], r(detail.values[i * detail.k + t])]);
    return out;
  }
  function groupsOf(i) {
    const e = epochData();
    const out = e.levels.map((l, n) => ({ level: `level ${n + 1} (${l.n_groups} groups)`, group: l.groups[i], labels: l.groups }));
    out.push({ level: `groups (${e.n_groups})`, group: e.groups[i], labels: e.groups });
    return out;
  }
  function selectIndex(i) {
    S.sel = i;
    const near = nearest(i, 10);
    const rows = groupsOf(i).map((g) => {
      const members = [];
      for (let j = 0; j < M && members.length < 6; j++) if (g.labels[j] === g.group && j !== i) members.push(NAMES[j]);
      return el("tr", {}, el("td", {}, g.level), el("td", {}, `${g.group}: ${members.join(", ")}`));
    });
    const list = near ? near.map(([j, v]) => el("tr", { onclick: () => selectIndex(j) }, el("td", {}, NAMES[j]), el("td", { class: "r" }, fmt(v))))
      : [el("tr", {}, el("td", { class: "note" }, "The nearest classes of other epochs are not kept at this size."))];
    selBox.replaceChildren(el("p", {}, el("b", {}, NAMES[i])), el("table", {}, ...rows),
      el("p", { class: "note" }, "10 nearest classes:"), el("table", { id: "classim-nearest" }, ...list));
    draw();
    return { name: NAMES[i], index: i, position: pos[i], nearest: near ? near.map(([j, v]) => ({ name: NAMES[j], value: v })) : null,
             groups: groupsOf(i).map((g) => ({ level: g.level, group: g.group })) };
  }
  function sidebar() {
    const e = epochData();
    const [coarse, fine] = cuts();
    groupBox.replaceChildren();
    if (e.levels.length) groupBox.append(el("p", { class: "note" }, "Levels: " + e.levels.map((l) => l.n_groups).join(" > ") + ` groups; the groups are the cut into ${e.n_groups}.`));
    const list = el("ul", {});
    const spans = (labels) => runs(labels).map(([a, b]) => ({ label: labels[ord[a]], a, b }));
    const fineSpans = spans(fine);
    const describe = (s) => `${s.label} (${s.b - s.a}): ` + Array.from(ord.slice(s.a, Math.min(s.b, s.a + 4)), (i) => NAMES[i]).join(", ");
    if (coarse) {
      for (const c of spans(coarse)) {
        list.append(el("li", { class: "coarse", onclick: () => focus(c.a, c.b) }, describe(c)));
        for (const f of fineSpans) if (f.a >= c.a && f.b <= c.b) list.append(el("li", { class: "fine", onclick: () => focus(f.a, f.b) }, describe(f)));
      }
    } else for (const f of fineSpans) list.append(el("li", { onclick: () => focus(f.a, f.b) }, describe(f)));
    groupBox.append(list);
    pairBox.replaceChildren();
    const items = el("ul", {});
    for (const p of e.pairs) {
      const label = p.j >= 0 ? `${NAMES[p.i]} \u2194 ${NAMES[p.j]}` : `${NAMES[p.i]} (hub)`;
      items.append(el("li", { class: "kind-" + p.kind, onclick: () => { selectIndex(p.i); focus(Math.min(pos[p.i], p.j >= 0 ? pos[p.j] : pos[p.i]), Math.max(pos[p.i], p.j >= 0 ? pos[p.j] : pos[p.i]) + 1); } },
        `${p.kind.replace("_", " ")}: ${label} (r ${fmt(p.similarity)})`));
    }
    for (const s of e.split) items.append(el("li", { onclick: () => selectIndex(s.a[0]) }, `split group ${s.groups.join("/")}: ${s.a.map((i) => NAMES[i]).slice(0, 3).join(", ")} \u2194 ${s.b.map((i) => NAMES[i]).slice(0, 3).join(", ")}`));
    for (const f of e.failed) items.append(el("li", { onclick: () => selectIndex(f.members[0]) }, `failed group over ${f.groups.join(", ")}: ${f.members.map((i) => NAMES[i]).slice(0, 5).join(", ")}`));
    if (!items.childNodes.length) items.append(el("li", { class: "note" }, "Nothing stands out in this epoch."));
    pairBox.append(items);
  }

  // ------------------------------------------------------------------ API (for scripts and tests)
  const api = {
    ready: false,
    /** The cell at display positions (i, j): {row, col, value, approximate}. */
    cell(i, j) {
      if (!(i >= 0 && j >= 0 && i < M && j < M)) throw new RangeError(`classim.cell: positions must be in 0..${M - 1}, got (${i}, ${j})`);
      const v = valueAt(i, j);
      return { row: NAMES[ord[i]], col: NAMES[ord[j]], value: v.value, approximate: v.approximate };
    },
    /** Select a class by its name: shows its groups and nearest classes; returns them. */
    select(name) {
      const i = NAMES.indexOf(name);
      if (i < 0) throw new Error(`classim.select: no class named ${JSON.stringify(name)}`);
      const out = selectIndex(i);
      focus(pos[i] - 10, pos[i] + 10);
      return out;
    },
    /** The run's epochs: [{epoch, step}], oldest first. */
    epochs() { return DATA.epochs.map((e) => ({ epoch: e.epoch, step: e.step })); },
    /** Show epoch number k (an index into epochs()). */
    async setEpoch(k) { slider.value = String(k); await loadEpoch(k); sidebar(); draw(); },
    /** Use an ordering: "tree", and "taxonomy" or "reference" when the page has them. */
    order(name) {
      if (!(name in DATA.orders) && name !== "this epoch's tree") throw new Error(`classim.order: no ordering ${JSON.stringify(name)}`);
      orderSelect.value = name; setOrder(name); sidebar(); draw();
    },
    /** The display order: the class name at each position. */
    names() { return Array.from(ord, (i) => NAMES[i]); },
    view: S,
  };
  window.classim = api;

  (async function start() {
    if (!DATA.full && DATA.detail) {
      detail = { band: DATA.detail.band, k: DATA.detail.k, cells: await inflate(DATA.detail.cells),
                 values: await inflate(DATA.detail.values) };
      const raw = await inflate(DATA.detail.index);
      detail.index = new Uint32Array(raw.buffer, raw.byteOffset, raw.byteLength / 4);
    }
    if (DATA.compare) compareFull = await inflate(DATA.compare.full);
    await loadEpoch(E - 1);
    fit();
    sidebar();
    draw();
    api.ready = true;
    document.body.setAttribute("data-classim-ready", "1");
  })().catch((err) => {
    document.body.append(el("pre", { id: "classim-error" }, "The explorer could not start: " + err));
    throw err;
  });
})();
