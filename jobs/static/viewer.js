// tda viewer: one page, no build step. Talks to /api/attribute, /api/check,
// /api/documents, /api/index and /openapi.json (the request's choices, limits and
// defaults).
"use strict";

const $ = (id) => document.getElementById(id);
let report = null; // the attribution report shown
let reportText = ""; // its JSON exactly as the server sent it (the download)
let downloadUrl = null;
let fields = {}; // POST /api/attribute body: field name -> its JSON schema
let lastHash = null; // the permalink of the request last run (or running)
let selected = null; // the output chunk shown in the detail panels

// Labels for choices the API names tersely; any other choice shows as its own name.
const CHOICE_LABELS = {
  grad: "gradient x input", ig: "integrated gradients", none: "none",
  concepts: "shared concepts", span: "shared word run", evidence: "model evidence",
  output: "the output chunk", chunk: "chunk-size window",
};

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function parseJson(text) {
  // chunk ids are int64: above 2**53 a JavaScript number would round them to another
  // chunk's id, so those are kept as strings (every use goes through String(id))
  return JSON.parse(text.replace(/("chunk_id"\s*:\s*)(\d{16,})/g, '$1"$2"'));
}

async function api(path, options) {
  const response = await fetch(path, options);
  const text = await response.text();
  let body;
  try { body = parseJson(text); } catch { body = { error: `HTTP ${response.status}` }; }
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return { body, text };
}

// --- the form, from the API's own description -------------------------------------

function schemaOf(name) {
  // a nullable field is {"anyOf": [{...}, {"type": "null"}]}: its non-null branch, with
  // the field's own default and description
  const prop = fields[name] || {};
  const branch = (prop.anyOf || []).find((b) => b.type !== "null") || {};
  return { ...branch, ...prop };
}

function setUpForm(schema, index) {
  fields = schema.properties;
  for (const control of document.querySelectorAll("[data-field]")) {
    const s = schemaOf(control.dataset.field);
    if (s.description) control.title = s.description;
    if (control.tagName === "SELECT") {
      control.replaceChildren(...(s.enum || []).map((v) =>
        el("option", { value: v, text: CHOICE_LABELS[v] || v })));
    } else {
      if (s.minimum != null) control.min = s.minimum;
      if (s.maximum != null) control.max = s.maximum;
    }
    if (s.default != null) control.value = s.default;
  }
  if (index) $("nprobe").placeholder = `index: ${index.nprobe}`;
}

function controlValue(control) {
  const s = schemaOf(control.dataset.field);
  if (control.value === "") return null;
  if (s.type === "integer") return parseInt(control.value, 10);
  if (s.type === "number") return parseFloat(control.value);
  return control.value;
}

function requestBody() {
  // the form -> the request; fields left at the API's default are left out, so the
  // permalink names only what differs (the server fills in the same defaults)
  const generate = document.querySelector("input[name=mode]:checked").value === "generate";
  const body = { prompt: $("prompt").value };
  if (generate) body.generate = controlValue($("generate"));
  else body.output = $("output").value;
  for (const control of document.querySelectorAll("[data-field]")) {
    const name = control.dataset.field;
    if (name === "generate") continue;
    if (!generate && (name === "temperature" || name === "seed")) continue;
    const value = controlValue(control);
    if (value !== null && value !== schemaOf(name).default) body[name] = value;
  }
  return body;
}

function toHash(body) {
  return "#" + new URLSearchParams(Object.entries(body).map(([k, v]) => [k, String(v)]));
}

function fromHash(hash) {
  // a permalink -> the request it encodes (null when it encodes none); values typed by the
  // API's schema, names the API does not know are ignored
  const params = new URLSearchParams(hash.replace(/^#/, ""));
  if (!params.has("prompt")) return null;
  const body = {};
  for (const [name, raw] of params) {
    if (!(name in fields)) continue;
    const type = schemaOf(name).type;
    body[name] = type === "integer" ? parseInt(raw, 10) : type === "number" ? parseFloat(raw) : raw;
  }
  return body;
}

function fillForm(body) {
  $("prompt").value = body.prompt || "";
  const generate = body.generate != null;
  document.querySelector(`input[name=mode][value=${generate ? "generate" : "output"}]`).checked = true;
  if (!generate) $("output").value = body.output || "";
  for (const control of document.querySelectorAll("[data-field]")) {
    const name = control.dataset.field;
    const value = name in body ? body[name] : schemaOf(name).default;
    control.value = value == null ? (name === "generate" ? control.value : "") : value;
  }
}

// --- running an attribution ----------------------------------------------------------

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function submit(event) {
  event.preventDefault();
  const body = requestBody();
  const hash = toHash(body);
  if (hash !== location.hash) history.pushState(null, "", hash);
  await run(body, hash);
}

async function run(body, hash) {
  lastHash = hash;
  setStatus(body.generate != null ? "generating and attributing…" : "attributing…");
  $("run").disabled = true;
  try {
    const { body: data, text } = await api("/api/attribute", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    if (hash !== lastHash) return; // a newer request was started meanwhile
    report = data;
    reportText = text;
    const t = report.timings;
    let note = "";
    if (body.generate != null) {
      // the generated text goes into the output box so it can be edited and attributed
      // again as a given output
      $("output").value = report.output;
      document.querySelector("input[name=mode][value=output]").checked = true;
      note = ` · the ${report.output_token_count} generated tokens are in the Output box: ` +
        "edit them and Attribute again";
    }
    const n = report.chunks.length;
    setStatus(`${n} chunk${n === 1 ? "" : "s"} · ${t.total.toFixed(0)} ms ` +
      `(generate ${t.generate.toFixed(0)}, forward ${t.forward.toFixed(0)}, ` +
      `backward ${t.backward.toFixed(0)}, search ${t.search.toFixed(1)}, ` +
      `metadata ${t.metadata.toFixed(1)})` + note +
      (report.warnings.length ? ` · ${report.warnings.join("; ")}` : ""));
    renderReport(hash);
  } catch (error) {
    if (hash === lastHash) setStatus(error.message, true);
  } finally {
    $("run").disabled = false;
  }
}

function runFromHash() {
  if (location.hash === lastHash) return;
  const body = fromHash(location.hash);
  if (!body) return;
  fillForm(body);
  run(body, location.hash);
}

// --- whitespace made visible -----------------------------------------------------------

function edgeSpaces(text) {
  // (len,) booleans: spaces and tabs in a run that touches the text's start or end or a
  // line break are shown (they are invisible otherwise); spaces between words are not
  const shown = new Uint8Array(text.length);
  for (const m of text.matchAll(/[ \t]+/g)) {
    const a = m.index, b = m.index + m[0].length;
    if (a === 0 || b === text.length || text[a - 1] === "\n" || text[b] === "\n") shown.fill(1, a, b);
  }
  return shown;
}

function visible(text, from, to, shown) {
  // text[from, to) with its whitespace marked; the DOM keeps the exact characters (its
  // textContent is the text): the marks are CSS-generated, so copying gives the text.
  // A run of 3 or more line breaks shows as one "↵×N" and one break.
  const out = document.createDocumentFragment();
  let plain = "";
  const flush = () => { if (plain) out.append(plain); plain = ""; };
  for (let i = from; i < to; i++) {
    const c = text[i];
    if (c === "\n") {
      let j = i;
      while (j < to && text[j] === "\n") j++;
      flush();
      if (j - i >= 3) {
        out.append(el("span", { class: "ws nl", "data-count": `×${j - i}`, text: "\n" }),
          el("span", { class: "ws folded", text: "\n".repeat(j - i - 1) }));
      } else {
        for (let n = i; n < j; n++) out.append(el("span", { class: "ws nl", text: "\n" }));
      }
      i = j - 1;
    } else if (c === "\t") {
      flush();
      out.append(el("span", { class: "ws tab", text: "\t" }));
    } else if (c === " " && shown[i]) {
      flush();
      out.append(el("span", { class: "ws sp", text: " " }));
    } else {
      plain += c;
    }
  }
  flush();
  return out;
}

// --- the report ------------------------------------------------------------------------

function renderReport(hash) {
  $("permalink").href = hash;
  if (downloadUrl) URL.revokeObjectURL(downloadUrl);
  downloadUrl = URL.createObjectURL(new Blob([reportText], { type: "application/json" }));
  $("download").href = downloadUrl;
  renderSettings();
  renderOutput();
}

function renderSettings() {
  const s = report.settings;
  const items = [
    ["k", `k ${s.k}`],
    ["rerank", `re-rank ${s.rerank}`],
    ["candidates", `candidates ${s.candidates ?? "-"}`],
    ["query_span", `query span ${s.query_span}`],
    ["nprobe", `nprobe ${s.nprobe}`],
    ["channels", `channels ${s.channels.join(", ")}`],
    ["input_attribution", `prompt tokens ${s.input_attribution}`],
    ["chunk_size", `chunks of ${s.chunk_size} tokens`],
  ];
  if (s.generate) {
    items.push(["generate", `generated ${s.generate.tokens} tokens ` +
      `(temperature ${s.generate.temperature}, seed ${s.generate.seed})`]);
  }
  $("settings").replaceChildren(...items.map(([name, text]) =>
    el("span", { "data-setting": name, "data-value": JSON.stringify(s[name]), text })));
}

function renderOutput() {
  const view = $("output-view");
  view.replaceChildren(el("span", { class: "prompt" },
    visible(report.prompt, 0, report.prompt.length, edgeSpaces(report.prompt))));
  report.chunks.forEach((chunk, i) => {
    const span = el("span", {
      class: "chunk", role: "button", tabindex: "0", "aria-pressed": "false",
      "data-chunk": String(i),
      "aria-label": `output chunk ${i}: ${chunk.text.slice(0, 60)}`,
    });
    span.addEventListener("click", () => select(i));
    span.addEventListener("keydown", (e) => {
      if (e.key === "Enter" || e.key === " ") { e.preventDefault(); select(i); }
      if (e.key === "ArrowRight" && i + 1 < report.chunks.length) focusChunk(i + 1);
      if (e.key === "ArrowLeft" && i > 0) focusChunk(i - 1);
    });
    view.append(span);
  });
  $("result").hidden = false;
  $("chunk-detail").hidden = true;
  markChunk(-1);
  if (report.chunks.length) select(0);
}

function focusChunk(i) {
  document.querySelector(`.chunk[data-chunk="${i}"]`).focus();
}

function markedText(text, start, end) {
  // only the words the training chunk shares with the output chunk are marked (as
  // OLMoTrace does): the rest of the hit is context
  if (start == null || end == null || start >= end) return document.createTextNode(text);
  const out = document.createDocumentFragment();
  out.append(text.slice(0, start), el("mark", { text: text.slice(start, end) }), text.slice(end));
  return out;
}

function markChunk(i) {
  // every output chunk with its whitespace shown; the selected one also shows the words
  // its first hit shares with it. Whitespace is judged on the whole output (a chunk's
  // first space is not an edge of the output)
  const whole = report.output;
  const shown = edgeSpaces(whole);
  document.querySelectorAll(".chunk").forEach((node) => {
    const chunk = report.chunks[Number(node.dataset.chunk)];
    const inWhole = whole.slice(chunk.char_start, chunk.char_end) === chunk.text;
    const [src, base, marks] = inWhole
      ? [whole, chunk.char_start, shown] : [chunk.text, 0, edgeSpaces(chunk.text)];
    const n = chunk.text.length;
    const match = node.dataset.chunk === String(i) && chunk.hits.length ? chunk.hits[0].match : null;
    const a = match && match.output_start != null ? Math.max(0, Math.min(n, match.output_start)) : n;
    const b = match && match.output_end != null ? Math.max(a, Math.min(n, match.output_end)) : n;
    const parts = [el("span", { class: "tag", text: node.dataset.chunk }),
      visible(src, base, base + a, marks)];
    if (b > a) parts.push(el("mark", {}, visible(src, base + a, base + b, marks)));
    parts.push(visible(src, base + b, base + n, marks));
    node.replaceChildren(...parts);
  });
}

function foundBy(hit) {
  const names = Object.entries(hit.channels || {});
  if (!names.length) return "dense";
  return names.map(([name, c]) => `${name} #${c.rank}`).join(", ");
}

function select(i) {
  document.querySelectorAll(".chunk").forEach((node) =>
    node.setAttribute("aria-pressed", String(node.dataset.chunk === String(i))));
  const chunk = report.chunks[i];
  selected = i;
  $("chunk-detail").hidden = false;
  renderCheck(chunk.check);
  markChunk(i);
  const conf = chunk.confidence;
  $("confidence").replaceChildren(...(conf ? [
    el("span", { class: `level ${conf.level}`, text: conf.level }),
    ` ${conf.score.toFixed(2)}: ${conf.reason}`] : []));

  const hits = $("hits");
  hits.replaceChildren();
  for (const hit of chunk.hits) {
    const open = el("button", { type: "button", class: "link open-document",
                                "data-chunk-id": String(hit.chunk_id), text: "open document" });
    open.addEventListener("click", () => openDocument(hit, chunk));
    const text = el("p", { class: "hit-text", title: "open the whole document" },
      markedText(hit.text || "(text not stored)",
        hit.match && hit.match.chunk_start, hit.match && hit.match.chunk_end));
    text.addEventListener("click", () => {
      if (!String(window.getSelection())) openDocument(hit, chunk); // not when selecting text
    });
    const shared = hit.shared_concepts.slice(0, 6).map((c) => c.name).join(", ");
    hits.append(el("li", { class: "hit", "data-doc-id": hit.doc_id, "data-source": hit.source,
                           "data-chunk-id": String(hit.chunk_id) },
      el("div", { class: "meta" },
        el("span", { class: "source", text: hit.source }),
        el("span", { class: "doc", text: hit.doc_id }),
        // the fused score ranks the hits; the dense cosine alone can be low for a verbatim source
        el("span", { text: hit.fused_score == null ? `score ${hit.score.toFixed(3)}`
          : `fused ${hit.fused_score.toFixed(4)} · cos ${hit.score.toFixed(3)}` }),
        el("span", { class: "found-by", text: `found by ${foundBy(hit)}` }),
        ...(hit.match ? [el("span", { text: `${hit.match.words} shared words` +
          (hit.match.tokens ? `, ${hit.match.tokens}-token exact span` : "") })] : []),
        el("span", { text: `chars ${hit.char_start}..${hit.char_end}` }),
        open),
      text,
      el("div", { class: "shared", text: shared ? `shared concepts: ${shared}` : "" })));
  }

  const largest = Math.max(1e-9, ...chunk.concepts.map((c) => Math.abs(c.contribution)));
  $("concepts").replaceChildren(...chunk.concepts.map((c) => el("div", { class: "bar-row" },
    el("span", {
      text: c.label ? `${c.name} “${c.label}”` : c.name,
      title: `${c.kind} concept ${c.concept_id}, ${c.tokens} tokens` +
        (c.label ? ` (automatic label: the tokens where it fires most)` : ""),
    }),
    el("div", { class: c.contribution < 0 ? "bar neg" : "bar",
                style: `width:${(100 * Math.abs(c.contribution) / largest).toFixed(1)}%` }),
    el("span", { class: "value", text: c.contribution.toFixed(2) }))));
  const tot = chunk.totals;
  $("logit-identity").textContent =
    `logit ${tot.logit.toFixed(2)} = known ${tot.known_total.toFixed(2)} + unknown ` +
    `${tot.unknown_total.toFixed(2)} + residual ${tot.residual.toFixed(2)}`;

  const scores = chunk.prompt_tokens.map((t) => Math.abs(t.score));
  const top = Math.max(1e-12, ...scores);
  $("prompt-tokens").replaceChildren(...chunk.prompt_tokens.map((t) => {
    const alpha = Math.min(1, Math.abs(t.score) / top) * 0.75;
    const color = t.score >= 0 ? `rgba(46,125,50,${alpha})` : `rgba(181,64,58,${alpha})`;
    return el("span", { style: `background:${color}`, title: `${t.score.toExponential(2)}`,
                        text: t.token });
  }));
  if (!chunk.prompt_tokens.length) $("prompt-tokens").textContent = "(none requested)";

  $("sources").replaceChildren(...Object.entries(chunk.sources).map(([source, share]) =>
    el("div", { class: "bar-row" },
      el("span", { text: source }),
      el("div", { class: "bar", style: `width:${(100 * share).toFixed(1)}%` }),
      el("span", { class: "value", text: `${(100 * share).toFixed(0)}%` }))));
}

// --- the whole training document of a hit ------------------------------------------------

function highlighted(doc, ranges) {
  // doc.text with ranges [{start, end, cls}] (document offsets) as <mark>s; where ranges
  // overlap a segment carries every class that covers it
  const text = doc.text;
  const cuts = new Set([0, text.length]);
  for (const r of ranges) { cuts.add(r.start); cuts.add(r.end); }
  const sorted = [...cuts].sort((x, y) => x - y);
  const out = document.createDocumentFragment();
  for (let n = 0; n + 1 < sorted.length; n++) {
    const [a, b] = [sorted[n], sorted[n + 1]];
    const classes = ranges.filter((r) => r.start <= a && b <= r.end).map((r) => r.cls);
    const piece = text.slice(a, b);
    out.append(classes.length ? el("mark", { class: [...new Set(classes)].join(" "), text: piece })
                              : piece);
  }
  return out;
}

async function openDocument(hit, chunk) {
  const dialog = $("document-dialog");
  $("document-title").textContent = `${hit.source} · ${hit.doc_id}`;
  $("document-meta").textContent = "loading…";
  $("document-body").replaceChildren();
  if (!dialog.open) dialog.showModal();
  try {
    const { body: doc } = await api(`/api/documents/${String(hit.chunk_id)}`);
    const first = doc.chunks[0], last = doc.chunks[doc.chunks.length - 1];
    $("document-meta").textContent =
      `record ${doc.record_index} of ${doc.url} · chunks ${first.chunk_index}..` +
      `${last.chunk_index} · characters ${doc.text_start}..${doc.text_end}` +
      (doc.truncated ? " · truncated: the document goes on beyond these chunks" : "");
    if (doc.text == null) {
      $("document-body").replaceChildren(el("p", { text: "(the index stores no text)" }));
      return;
    }
    // the hit's chunk; the other hits of the selected output chunk in this document; in
    // the hit, the words it shares with the output chunk
    const at = (c) => ({ start: c.char_start - doc.text_start, end: c.char_end - doc.text_start });
    const byId = new Map(doc.chunks.map((c) => [String(c.chunk_id), c]));
    const ranges = [];
    for (const other of chunk.hits) {
      const c = byId.get(String(other.chunk_id));
      if (c && String(other.chunk_id) !== String(hit.chunk_id)) ranges.push({ ...at(c), cls: "other" });
    }
    const own = byId.get(String(hit.chunk_id));
    if (own) {
      ranges.push({ ...at(own), cls: "current" });
      const m = hit.match;
      if (m && m.chunk_start != null && m.chunk_end > m.chunk_start) {
        const base = at(own).start;
        ranges.push({ start: base + m.chunk_start, end: base + m.chunk_end, cls: "shared-span" });
      }
    }
    $("document-body").replaceChildren(highlighted(doc, ranges));
    const target = $("document-body").querySelector("mark.current");
    if (target) target.scrollIntoView({ block: "center" });
  } catch (error) {
    $("document-meta").textContent = error.message;
  }
}

// --- start ---------------------------------------------------------------------------------

// --- the counterfactual check (POST /api/check) ------------------------------------

function renderCheck(check) {
  // one line per output chunk: its hits' drop against BM25's and the random draws'
  if (!check) { $("check-result").replaceChildren(); return; }
  const f = (x) => (x == null ? "-" : x.toFixed(3));
  $("check-result").replaceChildren(
    el("span", { class: `verdict ${check.verdict.replace(" ", "-")}`, text: check.verdict }),
    ` unlearning the ${check.chunks} hits lowers the chunk's log p by ${f(check.attributed_drop)}` +
    ` · BM25's ${check.chunks}: ${f(check.bm25_drop)} · random: ${f(check.random_mean)} ± ` +
    `${f(check.random_std)} (${check.random_drops.length} draws) · z ${check.z == null ? "-" :
      check.z.toFixed(1)}, p ${check.p_value.toFixed(3)}`);
}

async function checkHits() {
  const shown = report;
  setStatus("checking the hits (unlearning them on a copy of the model)…");
  $("check").disabled = true;
  try {
    // the report goes back as the text the server sent: int64 chunk ids stay exact
    const { body: data, text } = await api("/api/check", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ report: reportText }),
    });
    if (report !== shown) return; // another attribution replaced it meanwhile
    report = data;
    reportText = text;
    const supported = report.chunks.filter((c) => c.check && c.check.verdict === "supported");
    setStatus(`checked in ${report.check.seconds.toFixed(1)} s: ${supported.length} of ` +
      `${report.chunks.length} chunks' hits lower its log-probability more than every ` +
      `random draw`);
    renderReport(lastHash);
    if (selected != null && selected < report.chunks.length) select(selected);
  } catch (error) {
    setStatus(error.message, true);
  } finally {
    $("check").disabled = false;
  }
}

async function start() {
  let index = null;
  try {
    index = (await api("/api/index")).body;
    $("index-info").textContent =
      `${index.root} · ${index.vectors.toLocaleString()} chunks · ${index.factory} · ` +
      `${index.encoder.name} (${index.encoder.fingerprint.slice(0, 19)}) · pooling ${index.pooling}`;
  } catch (error) {
    $("index-info").textContent = `index unavailable: ${error.message}`;
  }
  try {
    const spec = (await api("/openapi.json")).body;
    setUpForm(spec.components.schemas.AttributeRequest, index);
  } catch (error) {
    setStatus(`request description unavailable: ${error.message}`, true);
    return;
  }
  $("ask").addEventListener("submit", submit);
  window.addEventListener("popstate", runFromHash);
  window.addEventListener("hashchange", runFromHash);
  $("ask").dataset.ready = "true"; // the form has its choices: a test may drive it
  runFromHash();
}

$("document-close").addEventListener("click", () => $("document-dialog").close());
$("check").addEventListener("click", checkHits);
start();
