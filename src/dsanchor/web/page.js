// The page of `dsanchor serve`: a text search and an image query over the JSON API, kept in step with the g
// controls. "auto" sends no g (the controller chooses, and the slider moves to its g); moving the slider unticks
// "auto" and, after a short pause, re-runs the last text query and the uploaded image at the slider's g.
"use strict";
const $ = id => document.getElementById(id);
const DEBOUNCE_MS = 250;  // the pause after the last slider move before the queries re-run
const WHY = {controller: "chosen by the controller", given: "set by the slider", fixed: "the pipeline's fixed g"};
const state = {query: null, file: null, searchSeq: 0, imageSeq: 0, timer: null};

function el(tag, cls, text) {
  const e = document.createElement(tag); if (cls) e.className = cls; if (text !== undefined) e.textContent = text;
  return e;
}
function line(id, msg) { const e = $(id); e.textContent = msg; e.title = msg; e.hidden = !msg; }
function showError(msg) { line("error", msg); }
function typeLabel(t) { return t === null || t === undefined ? "" : ", query type " + t; }
// "g = 0.30 (set by the slider)", "g = 0.72 (chosen by the controller, query type 3)"
function gLabel(out) {
  const type = out.source === "given" ? "" : typeLabel(out.query_type);
  return "g = " + out.g.toFixed(2) + " (" + (WHY[out.source] || out.source) + type + ")";
}
function shorten(text, n) { return text.length > n ? text.slice(0, n - 1) + "\u2026" : text; }

async function api(url, opts) {
  let res;
  try { res = await fetch(url, opts); } catch (err) { throw new Error("the server did not answer (" + err + ")"); }
  let body = null;
  try { body = await res.json(); } catch (err) { body = null; }
  if (!res.ok) throw new Error((body && body.error) || (res.status + " " + res.statusText));
  return body;
}

// ---- g: the slider, "auto" and the re-runs -------------------------------------------------------------------
function auto() { return $("use-controller").checked; }
function gParam() { return auto() ? "" : "g=" + Number($("g").value).toFixed(2); }
function setSlider(g) { $("g").value = g; $("g-value").textContent = g.toFixed(2); }
function rerun() {
  clearTimeout(state.timer); state.timer = null;
  if (state.query !== null) runSearch();
  if (state.file) sendImage();
}
$("g").addEventListener("input", () => {
  $("g-value").textContent = Number($("g").value).toFixed(2);
  $("use-controller").checked = false;
  clearTimeout(state.timer); state.timer = setTimeout(rerun, DEBOUNCE_MS);
});
$("use-controller").addEventListener("change", rerun);

// ---- text search ----------------------------------------------------------------------------------------------
function hitCard(r) {
  const card = el("div", "hit"); card.title = r.path;
  const img = el("img"); img.src = r.url; img.alt = r.path; img.loading = "lazy";
  const meta = el("div", "meta");
  meta.append(el("span", "rank", "#" + r.rank), el("span", "score", r.score.toFixed(3)),
              el("span", "g", "g " + r.g.toFixed(2)));
  card.append(img, meta); return card;
}
function clearSearchResult() {
  $("g-used").textContent = ""; $("result-count").textContent = ""; line("note", ""); line("domain-note", "");
  $("results").replaceChildren();
}
function showSearch(out) {
  $("g-used").textContent = gLabel(out);
  $("result-count").textContent = " \u00b7 " + out.results.length + " results for \u201c" + shorten(out.query, 80)
    + "\u201d";
  $("result-count").title = out.query;
  line("note", out.cut || "");
  line("domain-note", out.domain_note ? "note: " + out.domain_note : "");  // out of the training domain
  $("results").replaceChildren(...out.results.map(hitCard));
  if (out.source !== "given" && auto()) setSlider(out.g);
}
async function runSearch() {
  const seq = ++state.searchSeq;
  showError("");
  const url = "/api/search?q=" + encodeURIComponent(state.query) + "&k=" + encodeURIComponent($("k").value)
    + (gParam() ? "&" + gParam() : "");
  try {
    const out = await api(url);
    if (seq === state.searchSeq) showSearch(out);  // an answer to an older request is dropped
  } catch (err) {
    if (seq !== state.searchSeq) return;
    clearSearchResult(); showError("search: " + err.message);  // no results stay on screen under a failed query
  }
}
$("search-form").addEventListener("submit", ev => {
  ev.preventDefault(); state.query = $("q").value; runSearch();
});

// ---- image query ----------------------------------------------------------------------------------------------
function list(id, items) {
  $(id).replaceChildren(...items.map(t => el("li", "", t)));
  $(id + "-box").hidden = items.length === 0;
}
function clearImageResult(status) {
  $("image-g").textContent = status; line("image-error", ""); line("image-note", ""); list("captions", []); list("index-captions", []);
}
function showImage(out) {
  let text = gLabel(out);
  if (out.source === "given") text += "; the controller would pick " + out.controller.g.toFixed(2);
  $("image-g").textContent = text;
  line("image-note", out.domain_note ? "note: " + out.domain_note : "");  // out of the training domain
  list("captions", out.captions ? Object.entries(out.captions).map(([k, v]) => k + ": " + v) : []);
  list("index-captions",
       out.index_captions ? out.index_captions.map(c => c.score.toFixed(3) + "  " + c.caption) : []);
  if (state.query === null && out.source !== "given" && auto()) setSlider(out.g);
}
async function sendImage() {
  const file = state.file; if (!file) return;
  const seq = ++state.imageSeq;
  clearImageResult("reading the image...");
  try {
    const out = await api("/api/image" + (gParam() ? "?" + gParam() : ""), {method: "POST", body: file,
      headers: {"Content-Type": file.type || "application/octet-stream"}});
    if (seq === state.imageSeq) showImage(out);
  } catch (err) {
    if (seq !== state.imageSeq) return;
    clearImageResult(""); line("image-error", file.name + ": " + err.message);
    state.file = null;  // a failed file is not re-sent when the slider moves
  }
}
$("file").addEventListener("change", () => {
  const file = $("file").files[0];
  state.file = file || null; ++state.imageSeq; clearImageResult("");
  const p = $("preview");
  if (!file) { p.hidden = true; p.removeAttribute("src"); return; }
  p.src = URL.createObjectURL(file); p.hidden = false; sendImage();
});
$("preview").addEventListener("error", () => { $("preview").hidden = true; });

// ---- start ----------------------------------------------------------------------------------------------------
window.addEventListener("error", ev => showError("page: " + ev.message));
api("/api/info").then(i => {
  $("info").textContent = i.images + " images" + (i.has_captions ? ", with captions" : "")
    + (i.has_decoder ? ", caption decoder" : "") + (i.has_controller ? ", PPO controller" : ", fixed g " + i.fixed_g)
    + (i.trained_on ? "; trained on " + i.trained_on : "");
  $("k").value = i.default_k;
  if (!i.has_controller) $("auto-label").textContent = "auto: the pipeline's g";
}).catch(err => { $("info").textContent = ""; showError("info: " + err.message); });
