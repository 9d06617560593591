// The imagefit page: send the chosen image's bytes to POST /predict and draw the top classes
// (a multi-label model's labels and every label's probability; a regression's predicted value
// and its interval).
// Class names are data, so they are only ever set with textContent.
"use strict";

const TOP = 5;
const $ = (id) => document.getElementById(id);
let needsKey = false;

async function loadModelInfo() {
  try {
    const info = await (await fetch("/health")).json();
    const what = info.task === "regress" ? "a number per image" :
      info.task === "multilabel" ? `${info.classes.length} labels, any number per image` :
      `${info.classes.length} classes`;
    $("model").textContent = `${what} · ${info.backbone} · ${info.image_size}px`;
    needsKey = info.auth;
    $("key-row").hidden = !needsKey;
  } catch (err) {
    $("model").textContent = "The service is not answering.";
  }
}

function showStatus(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function showValue(result) {
  const fmt = (x) => Number(x.toPrecision(4)).toString();
  const interval = result.lower === null ? "" :
    ` (${Math.round(100 * result.interval)}% interval ${fmt(result.lower)} to ${fmt(result.upper)})`;
  showStatus(`${fmt(result.value)}${interval}`, false);
  $("status").dataset.value = result.value;
}

function drawBars(result) {
  const bars = $("bars");
  bars.replaceChildren();
  const tags = result.labels !== undefined;
  const ranked = Object.entries(result.probabilities).sort((a, b) => b[1] - a[1])
    .slice(0, tags ? undefined : TOP);
  for (const [name, p] of ranked) {
    const item = document.createElement("li");
    const label = document.createElement("div");
    label.className = "bar-label";
    const nameSpan = document.createElement("span");
    nameSpan.textContent = name;
    const pct = document.createElement("span");
    pct.textContent = `${(100 * p).toFixed(1)}%`;
    label.append(nameSpan, pct);
    const bar = document.createElement("div");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.style.width = `${(100 * p).toFixed(1)}%`;
    bar.append(fill);
    item.append(label, bar);
    bars.append(item);
  }
  if (tags) {
    showStatus(result.labels.length ? result.labels.join(" | ") :
      "No label reaches its threshold.", false);
    $("status").dataset.labels = result.labels.join("|");
    return;
  }
  showStatus(`${result.label} (${(100 * result.confidence).toFixed(1)}%)`, false);
  $("status").dataset.label = result.label;
}

async function predict(file) {
  if (!file) return;
  const preview = $("preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  $("bars").replaceChildren();
  showStatus("Predicting…", false);
  const headers = { "Content-Type": "application/octet-stream" };
  if (needsKey) headers["Authorization"] = `Bearer ${$("key").value}`;
  try {
    const response = await fetch("/predict", { method: "POST", headers, body: file });
    const body = await response.json();
    if (!response.ok) {
      showStatus(body.error || `Error ${response.status}`, true);
      return;
    }
    if (body.value !== undefined) showValue(body); else drawBars(body);
  } catch (err) {
    showStatus("The request failed.", true);
  }
}

const drop = $("drop");
$("file").addEventListener("change", (event) => predict(event.target.files[0]));
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  predict(event.dataTransfer.files[0]);
});
loadModelInfo();
