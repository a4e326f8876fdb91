// ccad page: upload files to /api/v1/predict and show the results. No external scripts.
"use strict";
const $ = (id) => document.getElementById(id);
const state = { key: sessionStorage.getItem("ccad-key") || "" };

function headers() {
  return state.key ? { "X-API-Key": state.key } : {};
}

async function loadModelCard() {
  const response = await fetch("/api/v1/model", { headers: headers() });
  if (response.status === 401) {
    $("key-row").hidden = false;
    $("model-card").textContent = "Enter the API key to see the model card.";
    return;
  }
  const card = await response.json();
  const metrics = card.evaluation || {};
  const names = ["accuracy", "sensitivity", "specificity", "auc"].filter((m) => metrics[m] && metrics[m].value !== null);
  const data = card.training_data || {};
  const el = $("model-card");
  el.replaceChildren();
  const p = document.createElement("p");
  p.textContent = `Classes: ${card.classes.join(", ")} (positive: ${card.positive_class}). Backbone: ${card.backbone}, ` +
    `weights: ${card.weights}. Trained on: ${(data.names && data.names.length ? data.names.join(", ") : data.source) || "unknown"}.`;
  el.appendChild(p);
  if (names.length) {  // every value goes in with textContent: a crafted card cannot inject markup
    const intro = document.createElement("p");
    const evaluated = metrics.names && metrics.names.length ? metrics.names.join(", ") : metrics.data;
    intro.textContent = `Evaluated on ${metrics.n} images (${metrics.split} split of ${evaluated}):`;
    el.appendChild(intro);
    const table = document.createElement("table");
    const head = table.createTHead().insertRow();
    for (const title of ["metric", "value", "95% CI"]) {
      const th = document.createElement("th");
      th.textContent = title;
      head.appendChild(th);
    }
    const body = table.createTBody();
    for (const m of names) {
      const ci = metrics[m].ci95 ? `${Number(metrics[m].ci95[0]).toFixed(3)} – ${Number(metrics[m].ci95[1]).toFixed(3)}` : "n/a";
      const row = body.insertRow();
      for (const text of [m, Number(metrics[m].value).toFixed(3), ci]) {
        row.insertCell().textContent = text;
      }
    }
    el.appendChild(table);
  }
  const c = document.createElement("p");
  c.className = "caveat";
  c.textContent = card.caveat;
  el.appendChild(c);
}

function showResult(result, decision) {
  const node = $("result-template").content.firstElementChild.cloneNode(true);
  node.querySelector(".name").textContent = result.name;
  const xray = node.querySelector(".xray");
  const heat = node.querySelector(".heat");
  const views = {
    original: [result.original || result.image, result.original_heatmap || result.heatmap,
      `Chest X-ray ${result.name} with the lung outline the model found`],
    model: [result.image, result.heatmap, `Chest X-ray ${result.name} as the model saw it`],
  };
  const show = (which) => {
    const [image, heatmap, alt] = views[which];
    xray.src = "data:image/png;base64," + image;
    xray.alt = alt;
    heat.src = "data:image/png;base64," + heatmap;
  };
  show("original");
  heat.alt = `Heatmap of the regions that drove the ${result.predicted_class} score`;
  heat.style.opacity = 0.55;
  node.querySelector(".toggle").addEventListener("change", (e) => { heat.hidden = !e.target.checked; });
  node.querySelector(".model-view").addEventListener("change", (e) => show(e.target.checked ? "model" : "original"));
  if (result.in_distribution === false) {
    const ood = node.querySelector(".ood");
    ood.hidden = false;
    ood.textContent = `Outside what the model is for: ${result.warning}`;
    node.classList.add("flagged");
  }
  const qc = node.querySelector(".qc");
  const checks = [];
  if (result.in_distribution === true) checks.push(`a frontal chest X-ray to the guard (score ${result.ood_distance} ≤ ${result.ood_cutoff})`);
  if (result.lung_qc && result.lung_qc.length) checks.push(`lung check: ${result.lung_qc.join(", ").replaceAll("_", " ")}`);
  qc.textContent = checks.join("; ");
  node.querySelector(".opacity").addEventListener("input", (e) => { heat.style.opacity = e.target.value / 100; });
  node.querySelector(".verdict").textContent = `Model output: ${result.predicted_class}`;
  if (decision && decision.threshold !== null) {
    const pos = decision.positive_class, pct = (decision.threshold * 100).toFixed(1);
    const where = decision.fitted_on ? ` (${decision.rule}, chosen on ${decision.fitted_on})` : "";
    node.querySelector(".rule").textContent = `Decision rule: ${pos} if p(${pos}) ≥ ${pct}% (the mark on its bar), ` +
      `else the most likely other class${where}.`;
  } else if (decision) {
    node.querySelector(".rule").textContent = `Decision rule: ${decision.text}.`;
  }
  const bars = node.querySelector(".bars");
  for (const [name, p] of Object.entries(result.probabilities)) {
    const row = document.createElement("div");
    row.className = "bar";
    const track = document.createElement("span");
    track.className = "track";
    track.setAttribute("role", "meter");
    track.setAttribute("aria-valuemin", "0");
    track.setAttribute("aria-valuemax", "100");
    const fill = document.createElement("span");
    fill.className = "fill";
    track.appendChild(fill);
    row.append(document.createElement("span"), track, document.createElement("span"));
    row.children[0].textContent = name;
    row.children[1].setAttribute("aria-valuenow", Math.round(p * 100));
    row.children[1].setAttribute("aria-label", `probability of ${name}`);
    row.children[1].firstChild.style.width = `${(p * 100).toFixed(1)}%`;
    row.children[2].textContent = `${(p * 100).toFixed(1)}%`;
    if (decision && decision.threshold !== null && name === decision.positive_class) {
      const mark = document.createElement("span");  // where the bar must reach for the model to say positive
      mark.className = "threshold";
      mark.style.left = `${(decision.threshold * 100).toFixed(1)}%`;
      mark.title = `threshold ${(decision.threshold * 100).toFixed(1)}%`;
      track.appendChild(mark);
    }
    bars.appendChild(row);
  }
  if (result.severity) {
    const s = result.severity;
    const extent = s.geographic_extent, opacity = s.opacity;
    const severity = node.querySelector(".severity");
    severity.hidden = false;
    severity.textContent = `X-ray involvement: ${s.band} — geographic extent ${extent.value} (95% interval ` +
      `${extent.interval95[0]}–${extent.interval95[1]}, scale 0–8), opacity ${opacity.value} ` +
      `(${opacity.interval95[0]}–${opacity.interval95[1]}, scale 0–6). ${s.note}.`;
  }
  if (result.result_id) readerVerdict(node.querySelector(".reader"), result.result_id);
  $("results").prepend(node);
}

function readerVerdict(box, resultId) {
  // a reader's verdict on this result: counted into the live sensitivity and specificity (/metrics)
  box.hidden = false;
  const status = box.querySelector(".reader-status");
  for (const verdict of ["agree", "disagree"]) {
    box.querySelector(`.${verdict}`).addEventListener("click", async () => {
      const response = await fetch("/api/v1/verdicts", {
        method: "POST",
        headers: { ...headers(), "Content-Type": "application/json" },
        body: JSON.stringify({ result_id: resultId, verdict }),
      });
      const body = await response.json().catch(() => ({}));
      status.textContent = response.ok
        ? `Recorded (${body.outcome.replace("_", " ")}).`
        : `Not recorded (${response.status}).`;
    });
  }
}

async function analyse(files) {
  $("error").textContent = "";
  if (!files.length) { $("error").textContent = "Choose at least one file."; return; }
  if ($("key-row").hidden === false) { state.key = $("api-key").value; sessionStorage.setItem("ccad-key", state.key); }
  const form = new FormData();
  for (const f of files) form.append("files", f, f.name);
  form.append("heatmap", "true");
  $("submit").disabled = true;
  $("status").textContent = `Analysing ${files.length} file(s)…`;
  try {
    const response = await fetch("/api/v1/predict", { method: "POST", body: form, headers: headers() });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      if (response.status === 401) $("key-row").hidden = false;
      const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail || body);
      throw new Error(`Upload failed (${response.status}): ${detail}`);
    }
    body.results.forEach((result) => showResult(result, body.model && body.model.decision));
    $("status").textContent = `Done: ${body.results.length} result(s). ${body.note}`;
    if (!$("key-row").hidden) loadModelCard();
  } catch (err) {
    $("error").textContent = err.message;
    $("status").textContent = "";
  } finally {
    $("submit").disabled = false;
  }
}

$("upload-form").addEventListener("submit", (e) => { e.preventDefault(); analyse([...$("files").files]); });
const drop = $("drop");
["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
["dragleave", "drop"].forEach((t) => drop.addEventListener(t, () => drop.classList.remove("over")));
drop.addEventListener("drop", (e) => { e.preventDefault(); analyse([...e.dataTransfer.files]); });
loadModelCard();
