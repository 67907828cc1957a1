// lungsearch page: plain JS, no framework, no external resource (the CSP allows none).
// Privacy rules kept here: the token lives in sessionStorage only; uploads go in a POST body as
// base64 without file names; nothing about a case or a query is written to the console or a URL
// (a case record link carries only the case key, a keyed hash, in the fragment, which is never sent).
"use strict";

const state = { token: sessionStorage.getItem("lungsearch-token") || "", files: [], models: [], query: null,
                timings: [], explainTimings: [] };
window.lungsearchTimings = state.timings;  // upload-to-first-cards (ms), read by the browser test
window.lungsearchExplainTimings = state.explainTimings;  // upload to every card's explanation (ms)
const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else if (k === "text") e.textContent = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

async function api(path, body) {
  const opts = { method: body === undefined ? "GET" : "POST", headers: {}, cache: "no-store",
                 credentials: "omit", referrerPolicy: "no-referrer" };
  if (state.token) opts.headers["Authorization"] = "Bearer " + state.token;
  if (body !== undefined) { opts.headers["Content-Type"] = "application/json"; opts.body = JSON.stringify(body); }
  const r = await fetch(path, opts);
  let doc = null;
  try { doc = await r.json(); } catch (e) { doc = null; }
  if (!r.ok) {
    const err = new Error((doc && doc.error && doc.error.message) || ("HTTP " + r.status));
    err.status = r.status;
    throw err;
  }
  return doc;
}

// ---------------------------------------------------------------- sign in (nothing shows without it)
function showLogin(message) {
  $("app").hidden = true; $("who").hidden = true; $("login").hidden = false;
  $("results").hidden = true; $("cards").replaceChildren();
  $("login-error").textContent = message || "";
}

async function startSession() {
  try {
    const s = await api("api/session");
    $("role").textContent = "role: " + s.role;
    $("login").hidden = true; $("app").hidden = false; $("who").hidden = false;
    await loadModels();
  } catch (e) {
    sessionStorage.removeItem("lungsearch-token"); state.token = "";
    showLogin(e.status === 401 || e.status === 403 ? (state.tokenTried ? "That token was not accepted." : "") : e.message);
  }
}

$("login-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  state.token = $("token").value.trim(); state.tokenTried = true; $("token").value = "";
  if (state.token) sessionStorage.setItem("lungsearch-token", state.token);
  startSession();
});
$("signout").addEventListener("click", () => { sessionStorage.removeItem("lungsearch-token"); state.token = "";
  state.tokenTried = false; showLogin(""); });

async function loadModels() {
  const r = await api("api/models");
  state.models = r.models.filter((m) => m.live);
  const sel = $("profile"); sel.replaceChildren();
  for (const m of state.models) sel.append(el("option", { value: m.profile, text: `${m.profile} (${m.modality}, ${m.num_cases} cases)` }));
}
const modelOf = (profile) => state.models.find((m) => m.profile === profile) || {};

// ---------------------------------------------------------------------------------------- files
function setFiles(list) {
  state.files = Array.from(list).filter((f) => !f.name.startsWith(".") && f.name.toUpperCase() !== "DICOMDIR"
                                             && !/\.(txt|json|xml|csv|md)$/i.test(f.name));
  state.files.sort((a, b) => (a.webkitRelativePath || a.name).localeCompare(b.webkitRelativePath || b.name));
  $("picked").textContent = state.files.length ? `${state.files.length} file(s) selected` : "";
  if (state.files.length > 1) pickProfileFor("ct"); else if (state.files.length === 1 && /\.(png|jpe?g)$/i.test(state.files[0].name)) pickProfileFor("cxr");
}
function pickProfileFor(modality) {
  const cur = modelOf($("profile").value);
  if (cur.modality === modality) return;
  const m = state.models.find((x) => x.modality === modality);
  if (m) $("profile").value = m.profile;
}
$("files").addEventListener("change", (ev) => setFiles(ev.target.files));
$("folder").addEventListener("change", (ev) => setFiles(ev.target.files));
const drop = $("drop");
drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (ev) => { ev.preventDefault(); drop.classList.remove("over"); setFiles(ev.dataTransfer.files); });

function b64(buf) {
  const bytes = new Uint8Array(buf); let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(s);
}
function formatOf(name) {
  if (/\.png$/i.test(name)) return "png"; if (/\.jpe?g$/i.test(name)) return "jpeg";
  if (/\.(dcm|dicom)$/i.test(name)) return "dicom"; return "";  // sniffed by the server
}
async function encodeFiles() {
  return Promise.all(state.files.map(async (f) => ({ data: b64(await f.arrayBuffer()), format: formatOf(f.name) })));
}
const labelList = (id) => $(id).value.split(",").map((s) => s.trim()).filter(Boolean);

// ------------------------------------------------------------------------------------- search
$("query-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const t0 = performance.now();
  $("query-error").textContent = "";
  if (!state.files.length && !$("report").value.trim()) { $("query-error").textContent = "Give an image, a report, or both."; return; }
  $("go").disabled = true;
  try {
    const q = { profile: $("profile").value, images: await encodeFiles(), report: $("report").value };
    state.query = q;
    const body = Object.assign({ top_k: parseInt($("topk").value, 10) || 5,
      filter: { modality: $("f-modality").value, view: $("f-view").value, labels_any: labelList("f-any"),
                labels_all: labelList("f-all"), labels_none: labelList("f-none") } }, q);
    const classified = api("api/classify", q).then(renderClassification, () => renderClassification(null));
    const res = await api("api/search", body);
    renderQuery(res.query);
    renderCards(res, q);
    state.timings.push(performance.now() - t0);
    document.body.dataset.cards = String(res.hits.length);
    await classified;
    await explainAll(res, q);
    state.explainTimings.push(performance.now() - t0);
  } catch (e) {
    if (e.status === 401) { showLogin("Your token was not accepted."); return; }
    $("query-error").textContent = e.message;
  } finally { $("go").disabled = false; }
});

function renderQuery(query) {
  $("results").hidden = false;
  const slices = (query && query.slices) || [];
  const img = $("query-img"), slider = $("slice");
  const show = (i) => { img.src = "data:image/png;base64," + slices[i]; $("slice-label").textContent = `slice ${i + 1} / ${slices.length}`; };
  $("query-slider").hidden = slices.length < 2;
  if (!slices.length) { img.removeAttribute("src"); return; }
  slider.max = String(slices.length - 1); slider.value = String(query.middle || 0);
  slider.oninput = () => show(parseInt(slider.value, 10));
  show(query.middle || 0);
}

function renderClassification(c) {
  const tbody = $("classification").querySelector("tbody"); tbody.replaceChildren();
  if (!c) { $("top-label").textContent = "classification unavailable"; return; }
  const vote = Object.fromEntries(c.knn_vote.map((v) => [v.label, v.score]));
  const probs = Object.fromEntries(c.probabilities.map((v) => [v.label, v.score]));
  const labels = [...new Set([...c.probabilities.map((p) => p.label), ...c.knn_vote.map((p) => p.label)])];
  for (const lab of labels) {
    tbody.append(el("tr", {}, el("td", { text: lab }),
      el("td", { class: "num", text: lab in probs ? probs[lab].toFixed(3) : "-" }),
      el("td", { class: "num", text: lab in vote ? vote[lab].toFixed(2) : "-" })));
  }
  $("top-label").textContent = c.top_label ? "top label: " + c.top_label : "";
  $("synthetic-note").hidden = !modelOf(c.model.profile).synthetic_data;
  // radiomics read the whole thorax: the query's lung mask failed its checks (docs/masks.md)
  $("roi-note").textContent = c.radiomics_roi ? c.radiomics_roi.message : "";
  $("roi-note").hidden = !c.radiomics_roi;
}

function chips(labels, shared = []) {
  const d = el("div", { class: "chips" });
  for (const l of labels) d.append(el("span", { class: shared.includes(l) ? "shared" : "", text: l }));
  return d;
}

function renderCards(res, q) {
  const cards = $("cards"); cards.replaceChildren();
  if (!res.hits.length) { cards.append(el("p", { text: "No stored case matches these filters." })); return; }
  for (const h of res.hits) {
    const c = h.case;
    const card = el("article", { class: "card", "data-key": c.case_key });
    const link = el("a", { href: `#case=${encodeURIComponent(c.case_key)}&profile=${encodeURIComponent(res.model.profile)}`,
                           class: "record", text: "case record" });
    card.append(
      el("div", { class: "head" }, el("span", { class: "sim", text: `#${h.rank}  ${h.score.toFixed(3)}` }),
         el("span", { class: "meta", text: h.hamming_distance >= 0 ? `Hamming ${h.hamming_distance}` : "" })),
      chips(c.labels),
      el("div", { class: "pair" },
         el("figure", {}, el("img", { class: "query-heat", alt: "heat map on the query" }), el("figcaption", { text: "query" })),
         el("figure", {}, el("img", { class: "case-heat", alt: "heat map on this case" }), el("figcaption", { class: "case-cap", text: "this case" }))),
      el("div", { class: "why meta", text: "why it matches: computing ..." }),
      el("div", { class: "excerpt case-excerpt", text: c.report_excerpt || "(no report)" }),
      el("div", { class: "excerpt query-excerpt", hidden: "" }),
      el("div", { class: "meta", text: `model ${c.model.profile}@${c.model.version} · ${c.modality}${c.view ? " " + c.view : ""} · ${c.num_images} image(s) ` }, link));
    cards.append(card);
  }
}

// Overlapping spans merged, then the text split into plain runs and <mark> runs (textContent only).
function highlight(node, text, spans) {
  const sorted = spans.map((s) => [s[0], s[1]]).sort((a, b) => a[0] - b[0]);
  const merged = [];
  for (const s of sorted) { if (merged.length && s[0] <= merged[merged.length - 1][1]) merged[merged.length - 1][1] = Math.max(merged[merged.length - 1][1], s[1]); else merged.push(s); }
  node.replaceChildren(); let pos = 0;
  for (const [a, b] of merged) { if (a > pos) node.append(text.slice(pos, a)); node.append(el("mark", { text: text.slice(a, b) })); pos = b; }
  if (pos < text.length) node.append(text.slice(pos));
}

async function explainAll(res, q) {
  // Two at a time: the cards are already on screen; the heat maps fill in as they come.
  const hits = res.hits.slice(); const workers = [];
  for (let w = 0; w < 2; w++) workers.push((async () => { while (hits.length) await explainOne(hits.shift(), res, q); })());
  await Promise.all(workers);
  document.body.dataset.explained = "1";
}

async function explainOne(h, res, q) {
  const card = document.querySelector(`.card[data-key="${CSS.escape(h.case.case_key)}"]`);
  if (!card) return;
  try {
    const r = await api("api/explain_match", Object.assign({ case_key: h.case.case_key }, q));
    if (r.query_overlay_png) card.querySelector(".query-heat").src = "data:image/png;base64," + r.query_overlay_png;
    if (r.case_overlay_png) card.querySelector(".case-heat").src = "data:image/png;base64," + r.case_overlay_png;
    else card.querySelector(".case-cap").textContent = "no image kept for this case";
    const why = card.querySelector(".why"); why.replaceChildren();
    why.append(r.label ? `heat maps for ${r.label}` : "heat maps of the retrieval embedding");
    if (r.shared_labels.length) why.append(" · shared labels: ", chips(r.shared_labels, r.shared_labels));
    why.append(` · ${r.shared_phrases.length} shared phrase(s)`);
    if (r.case.report_excerpt) highlight(card.querySelector(".case-excerpt"), r.case.report_excerpt,
                                         r.shared_phrases.flatMap((p) => p.case_spans));
    const qx = card.querySelector(".query-excerpt");
    if (r.query_excerpt) { qx.hidden = false; highlight(qx, r.query_excerpt, r.shared_phrases.flatMap((p) => p.query_spans)); }
    card.dataset.explained = "1";
  } catch (e) {
    card.querySelector(".why").textContent = "why it matches: unavailable (" + e.message + ")";
    card.dataset.explained = "error";
  }
}

// ------------------------------------------------------------------------------- case record
async function showRecord() {
  const m = /^#case=([^&]+)&profile=(.*)$/.exec(location.hash);
  if (!m || !state.token && $("app").hidden) return;
  const body = $("record-body"); body.replaceChildren(el("p", { text: "loading ..." }));
  if (!$("record").open) $("record").showModal();
  try {
    const c = await api(`api/case/${m[1]}?profile=${m[2]}`);
    const img = el("img", { alt: "stored thumbnail" });
    const rows = [["case key", c.case_key], ["modality", c.modality], ["view", c.view], ["labels", c.labels.join(", ")],
                  ["model", `${c.model.profile}@${c.model.version}`], ["images", String(c.num_images)], ["ingested", c.ingested_at]];
    const table = el("table", {}); for (const [k, v] of rows) table.append(el("tr", {}, el("th", { text: k }), el("td", { text: v })));
    body.replaceChildren(table, el("div", { class: "excerpt", text: c.report_excerpt || "(no report)" }));
    if (c.slices.length) {
      const slider = el("input", { type: "range", min: "0", max: String(c.slices.length - 1), value: String(c.middle || 0) });
      const show = () => { img.src = "data:image/png;base64," + c.slices[parseInt(slider.value, 10)]; };
      slider.oninput = show; show(); body.append(img); if (c.slices.length > 1) body.append(slider);
    }
  } catch (e) { body.replaceChildren(el("p", { class: "error", text: e.message })); }
}
window.addEventListener("hashchange", showRecord);
$("record").addEventListener("close", () => { history.replaceState(null, "", location.pathname); });

startSession().then(showRecord);
