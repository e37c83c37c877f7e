// tda viewer: one page, no build step. Talks to /api/attribute, /api/chunks, /api/index.
"use strict";

const $ = (id) => document.getElementById(id);
let report = null;

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

async function api(path, options) {
  const response = await fetch(path, options);
  const body = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

async function loadIndex() {
  try {
    const info = await api("/api/index");
    $("index-info").textContent =
      `${info.root} · ${info.vectors.toLocaleString()} chunks · ${info.factory} · ` +
      `${info.encoder.name} (${info.encoder.fingerprint.slice(0, 19)}) · pooling ${info.pooling}`;
  } catch (error) {
    $("index-info").textContent = `index unavailable: ${error.message}`;
  }
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function attribute(event) {
  event.preventDefault();
  const generate = document.querySelector("input[name=mode]:checked").value === "generate";
  const body = {
    prompt: $("prompt").value,
    k: Number($("k").value),
    input_attribution: $("input-attribution").value,
  };
  if (generate) body.generate = Number($("generate").value);
  else body.output = $("output").value;
  setStatus("attributing…");
  $("run").disabled = true;
  try {
    report = await api("/api/attribute", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    const t = report.timings;
    setStatus(`${report.chunks.length} chunks · ${t.total.toFixed(0)} ms ` +
      `(forward ${t.forward.toFixed(0)}, backward ${t.backward.toFixed(0)}, ` +
      `search ${t.search.toFixed(1)}, metadata ${t.metadata.toFixed(1)})` +
      (report.warnings.length ? ` · ${report.warnings.join("; ")}` : ""));
    renderOutput();
  } catch (error) {
    setStatus(error.message, true);
  } finally {
    $("run").disabled = false;
  }
}

function renderOutput() {
  const view = $("output-view");
  view.replaceChildren(el("span", { class: "prompt", text: report.prompt }));
  report.chunks.forEach((chunk, i) => {
    const span = el("span", {
      class: "chunk", role: "button", tabindex: "0", "aria-pressed": "false",
      "data-chunk": String(i),
      "aria-label": `output chunk ${i}: ${chunk.text.slice(0, 60)}`,
    }, el("span", { class: "tag", text: String(i) }), chunk.text);
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
  // the selected output chunk shows the words its first hit shares with it
  document.querySelectorAll(".chunk").forEach((node) => {
    const chunk = report.chunks[Number(node.dataset.chunk)];
    const match = node.dataset.chunk === String(i) && chunk.hits.length ? chunk.hits[0].match : null;
    node.replaceChildren(el("span", { class: "tag", text: node.dataset.chunk }),
      markedText(chunk.text, match && match.output_start, match && match.output_end));
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
  $("chunk-detail").hidden = false;
  markChunk(i);
  const conf = chunk.confidence;
  $("confidence").replaceChildren(...(conf ? [
    el("span", { class: `level ${conf.level}`, text: conf.level }),
    ` ${conf.score.toFixed(2)}: ${conf.reason}`] : []));

  const hits = $("hits");
  hits.replaceChildren();
  for (const hit of chunk.hits) {
    const link = el("a", { href: `#chunk-${hit.chunk_id}`, "data-chunk-id": String(hit.chunk_id),
                           text: "document context" });
    link.addEventListener("click", (e) => { e.preventDefault(); openContext(hit.chunk_id); });
    const shared = hit.shared_concepts.slice(0, 6).map((c) => c.name).join(", ");
    hits.append(el("li", { class: "hit", "data-doc-id": hit.doc_id, "data-source": hit.source },
      el("div", { class: "meta" },
        el("span", { class: "source", text: hit.source }),
        el("span", { class: "doc", text: hit.doc_id }),
        el("span", { text: `score ${hit.score.toFixed(3)}` }),
        el("span", { class: "found-by", text: `found by ${foundBy(hit)}` }),
        ...(hit.match ? [el("span", { text: `${hit.match.words} shared words` +
          (hit.match.tokens ? `, ${hit.match.tokens}-token exact span` : "") })] : []),
        el("span", { text: `chars ${hit.char_start}..${hit.char_end}` }),
        link),
      el("p", { class: "hit-text" }, markedText(hit.text || "(text not stored)",
        hit.match && hit.match.chunk_start, hit.match && hit.match.chunk_end)),
      el("div", { class: "shared", text: shared ? `shared concepts: ${shared}` : "" })));
  }

  const largest = Math.max(1e-9, ...chunk.concepts.map((c) => Math.abs(c.contribution)));
  $("concepts").replaceChildren(...chunk.concepts.map((c) => el("div", { class: "bar-row" },
    el("span", { text: c.name, title: `${c.kind} concept ${c.concept_id}, ${c.tokens} tokens` }),
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

async function openContext(chunkId) {
  const dialog = $("context-dialog");
  $("context-body").replaceChildren(el("p", { text: "loading…" }));
  dialog.showModal();
  try {
    const data = await api(`/api/chunks/${chunkId}?context=2`);
    const c = data.chunk;
    $("context-title").textContent = `${c.source} · ${c.doc_id} · chars ${c.char_start}..${c.char_end}`;
    $("context-body").replaceChildren(el("p", {},
      ...data.previous.map((p) => p.text || ""),
      el("mark", { text: c.text || "" }),
      ...data.next.map((n) => n.text || "")),
      el("p", { class: "hint", text: c.url }));
  } catch (error) {
    $("context-body").replaceChildren(el("p", { text: error.message }));
  }
}

$("ask").addEventListener("submit", attribute);
$("context-close").addEventListener("click", () => $("context-dialog").close());
loadIndex();
