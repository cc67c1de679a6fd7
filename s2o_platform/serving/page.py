"""`GET /`: one HTML page to try the served model by hand. No build step, no external scripts, fonts or styles:
it works offline. It reads GET /v1/model for the allowed step counts, posts the chosen SAR file to
/v1/translate exactly as a client would, and shows the SAR beside the translation with the latency measured in
the browser and the replica's Server-Timing breakdown; a refused request shows the API's JSON error."""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>s2o: try the model</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; background: #fafafa; }
form { display: flex; gap: 1rem; align-items: end; flex-wrap: wrap; margin-bottom: 1rem; }
label { display: flex; flex-direction: column; font-size: 0.85rem; gap: 0.2rem; }
button { padding: 0.4rem 1rem; }
.row { display: flex; gap: 1rem; flex-wrap: wrap; }
figure { margin: 0; background: #fff; border: 1px solid #ddd; padding: 0.5rem; border-radius: 6px; }
figure img { max-width: 512px; min-width: 128px; image-rendering: pixelated; display: block; }
figcaption { font-size: 0.8rem; color: #555; margin-top: 0.3rem; }
#status { margin: 0.8rem 0; min-height: 1.2rem; }
#error { color: #a00; white-space: pre-wrap; }
table { border-collapse: collapse; font-size: 0.85rem; }
td { border-bottom: 1px solid #eee; padding: 0.15rem 0.6rem 0.15rem 0; }
</style></head>
<body>
<h1>SAR to optical: try the model</h1>
<p id="model">Reading the model&hellip;</p>
<form id="form">
  <label>SAR image (PNG or GeoTIFF)<input type="file" id="file" accept=".png,.tif,.tiff,image/png,image/tiff" required></label>
  <label>Steps<select id="steps"></select></label>
  <label>Uncertainty samples<select id="uncertainty"><option value="0">none</option></select></label>
  <button type="submit" id="go">Translate</button>
</form>
<div id="status"></div>
<div id="error"></div>
<div class="row">
  <figure><img id="sar" alt="SAR input"><figcaption id="sar-caption">SAR input</figcaption></figure>
  <figure><img id="result" alt="translation"><figcaption>translation</figcaption></figure>
</div>
<h2>Timing</h2>
<table id="timing"><tr><td>no request yet</td></tr></table>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
function option(select, value, text) {
  const o = document.createElement("option"); o.value = String(value); o.textContent = text; select.appendChild(o);
}
fetch("v1/model").then((r) => r.json()).then((m) => {
  const steps = Array.isArray(m.allowed_steps) ? m.allowed_steps : [1, 2, 4, 8, 20, 50];
  for (const n of steps) option($("steps"), n, String(n));
  $("steps").value = String(m.default_steps);
  for (let k = 2; k <= (m.max_uncertainty_samples || 0); k *= 2) option($("uncertainty"), k, String(k));
  $("model").textContent = `Model: ${m.stage}, ${m.tile_size} px tiles, ${m.sar_channels} SAR channel(s), ` +
    `sampler ${m.sampler}, images up to ${m.max_image_side} px a side.`;
}).catch((e) => { $("model").textContent = "The model did not answer: " + e; });
function mediaType(file) {
  if (file.type) return file.type;
  return /\\.tiff?$/i.test(file.name) ? "image/tiff" : "image/png";
}
function showTiming(rows) {
  const table = $("timing"); table.replaceChildren();
  for (const [name, value] of rows) {
    const tr = document.createElement("tr");
    for (const text of [name, value]) { const td = document.createElement("td"); td.textContent = text; tr.appendChild(td); }
    table.appendChild(tr);
  }
}
$("file").addEventListener("change", () => {
  const file = $("file").files[0];
  if (!file) return;
  if (mediaType(file) === "image/tiff") {  // browsers do not draw GeoTIFFs
    $("sar").removeAttribute("src"); $("sar-caption").textContent = `SAR input: ${file.name} (GeoTIFF: no preview here)`;
  } else {
    if ($("sar").src) URL.revokeObjectURL($("sar").src);
    $("sar").src = URL.createObjectURL(file); $("sar-caption").textContent = `SAR input: ${file.name}`;
  }
});
$("form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const file = $("file").files[0];
  if (!file) return;
  $("error").textContent = ""; $("status").textContent = "Translating\\u2026"; $("go").disabled = true;
  delete $("result").dataset.loaded;
  const query = new URLSearchParams({ steps: $("steps").value });
  if ($("uncertainty").value !== "0") query.set("uncertainty", $("uncertainty").value);
  const started = performance.now();
  try {
    const response = await fetch("v1/translate?" + query, {
      method: "POST", body: file, headers: { "Content-Type": mediaType(file) } });
    const seconds = (performance.now() - started) / 1000;
    if (!response.ok) {
      let detail = response.statusText;
      try { const body = await response.json(); detail = `${body.error}: ${body.detail}`; } catch (e) {}
      $("status").textContent = `HTTP ${response.status} after ${seconds.toFixed(2)} s`;
      $("error").textContent = detail;
      $("result").removeAttribute("src");
      return;
    }
    const blob = await response.blob();
    const result = $("result");
    if (result.src) URL.revokeObjectURL(result.src);
    result.onload = () => { result.dataset.loaded = "true"; };
    result.src = URL.createObjectURL(blob);
    const h = (name) => response.headers.get(name);
    $("status").textContent = `HTTP 200 in ${seconds.toFixed(2)} s: ${h("X-S2O-Tiles")} tile(s), ` +
      `${h("X-S2O-Steps")} step(s), SAR scale ${h("X-S2O-SAR-Scale")}`;
    const rows = [["latency in the browser", `${(seconds * 1000).toFixed(0)} ms`]];
    for (const part of (h("Server-Timing") || "").split(",")) {
      const [name, ...params] = part.trim().split(";");
      const dur = params.find((p) => p.startsWith("dur="));
      if (name && dur) rows.push([`server: ${name}`, `${dur.slice(4)} ms`]);
    }
    rows.push(["requests in the forward pass", h("X-S2O-Batch-Requests") || "-"]);
    if (h("X-S2O-Uncertainty-Mean")) rows.push(["mean uncertainty (8-bit levels)", h("X-S2O-Uncertainty-Mean")]);
    showTiming(rows);
  } catch (e) {
    $("status").textContent = "The request failed"; $("error").textContent = String(e);
  } finally {
    $("go").disabled = false;
  }
});
</script>
</body></html>
"""
