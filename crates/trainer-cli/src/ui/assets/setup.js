// The setup page: the form built from the server's settings (defaults, or an earlier run's), Preview, Start.
"use strict";
const $ = id => document.getElementById(id);
const GROUPS = [
  ["Model", ["model", "base_weights"]],
  ["Data", ["text", "dataset", "format", "chat_template", "train_on", "train_only_after", "eliminate_long",
    "eval_dataset", "eval_split", "eval_steps", "save_best_eval", "hybrid_data_ratio", "hybrid_text_ratio"]],
  ["Slicing", ["cutoff", "hard_cut", "overlap", "mode", "min_chars", "eos", "bos"]],
  ["LoRA", ["rank", "alpha", "rslora", "dropout", "targets", "train_head", "init_adapter", "adapter_formats"]],
  ["Batches and schedule", ["batch_size", "grad_accum", "epochs", "max_steps", "learning_rate", "scheduler",
    "warmup_steps", "warmup_ratio", "optimizer", "optim_args", "weight_decay", "max_grad_norm", "neftune_alpha",
    "gradient_checkpointing", "group_by_length", "seed"]],
  ["Checkpoints and stopping", ["save_every", "save_every_below_loss", "save_under_loss", "loss_improvement",
    "absolute_improvement", "save_each_epoch", "stop_at_loss", "stop_loss_window", "stop_at_epoch", "keep_last",
    "keep_best", "report_to"]],
];
const MODEL_KEYS = ["model"];
const DATA_KEYS = ["text", "dataset", "format", "chat_template", "eval_dataset", "init_adapter"];
let kinds = {};
let busy = false;
window.trainerSetup = { ready: false, previewed: false };

function field(key, v) {
  const div = document.createElement("div");
  div.className = "field";
  const label = document.createElement("label");
  label.htmlFor = "f-" + key;
  label.textContent = key;
  if (v.help) label.title = v.help;
  const input = document.createElement("input");
  input.id = "f-" + key;
  input.name = key;
  if (v.kind === "bool") { input.type = "checkbox"; input.checked = v.value === "true"; }
  else { input.value = v.value; }
  if (MODEL_KEYS.includes(key)) input.setAttribute("list", "models");
  if (DATA_KEYS.includes(key)) input.setAttribute("list", "data");
  if (MODEL_KEYS.includes(key) || DATA_KEYS.includes(key)) input.className = "path";
  const err = document.createElement("span");
  err.className = "error";
  err.id = "err-" + key;
  div.append(label, " ", input, " ", err);
  return div;
}

function build(values) {
  const groups = $("groups");
  groups.textContent = "";
  const used = new Set(["output"]);
  const all = [...GROUPS, ["Other", Object.keys(values).filter(k => !GROUPS.some(g => g[1].includes(k)))]];
  for (const [title, keys] of all) {
    const present = keys.filter(k => values[k] && !used.has(k));
    if (!present.length) continue;
    const fs = document.createElement("fieldset");
    if (title === "Model" || title === "Data") fs.className = "wide";
    const lg = document.createElement("legend");
    lg.textContent = title;
    fs.appendChild(lg);
    for (const k of present) { used.add(k); fs.appendChild(field(k, values[k])); }
    groups.appendChild(fs);
  }
  kinds = Object.fromEntries(Object.entries(values).map(([k, v]) => [k, v.kind]));
}

function form() {
  const values = {};
  for (const k of Object.keys(kinds)) {
    const input = $("f-" + k);
    if (!input) continue;
    values[k] = kinds[k] === "bool" ? String(input.checked) : input.value;
  }
  return { name: $("f-name").value, values };
}

function showErrors(errors) {
  for (const e of document.querySelectorAll(".error")) e.textContent = "";
  for (const e of errors) {
    const target = $("err-" + e.field) || $("form-error");
    target.textContent = (target.textContent ? target.textContent + "; " : "") + e.message;
  }
}

async function post(path, body) {
  const r = await fetch(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  const text = await r.text();
  let json = null;
  try { json = JSON.parse(text); } catch (_) { json = { errors: [{ field: "", message: text.trim() }] }; }
  return [r.status, json];
}

function setBusy(what) { busy = !!what; $("busy").textContent = what || ""; $("preview").disabled = busy; $("start").disabled = busy; }

let lrPlot = null;
$("preview").addEventListener("click", async () => {
  setBusy("preparing the preview (loading the model)…");
  const [status, res] = await post("/api/setup/preview", form());
  setBusy("");
  if (status !== 200) { showErrors(res.errors || []); return; }
  showErrors([]);
  $("preview-box").hidden = false;
  $("preview-text").textContent = res.text;
  const xs = res.lr_curve.map(p => p[0]), ys = res.lr_curve.map(p => p[1]);
  if (lrPlot) lrPlot.destroy();
  lrPlot = new uPlot({ title: "Learning rate (LR preview)", width: 700, height: 220,
    scales: { x: { time: false } }, series: [{ label: "epoch" }, { label: "lr", stroke: "#2ca02c" }] },
    [xs, ys], $("chart-lr-preview"));
  window.trainerSetup.previewed = true;
});

$("start").addEventListener("click", async () => {
  setBusy("starting…");
  const [status, res] = await post("/api/setup/start", form());
  if (status !== 202) { setBusy(""); showErrors(res.errors || []); return; }
  showErrors([]);
  const name = res.name;
  setBusy("loading the model and the data…");
  // The run's page exists once the run has written its settings (just before its first step).
  for (;;) {
    await new Promise(r => setTimeout(r, 300));
    const job = await (await fetch("/api/setup/job")).json();
    if (job.name === name && job.state === "failed") { setBusy(""); showErrors([{ field: "", message: job.message }]); return; }
    const { runs } = await (await fetch("/api/runs")).json();
    if (runs.some(r => r.name === name)) { location.href = "/run/" + encodeURIComponent(name) + "/"; return; }
  }
});

(async () => {
  const copy = new URLSearchParams(location.search).get("copy");
  const url = "/api/setup/defaults" + (copy ? "?copy=" + encodeURIComponent(copy) : "");
  const [d, files] = await Promise.all([fetch(url).then(r => r.json()), fetch("/api/setup/files").then(r => r.json())]);
  if (d.errors) { showErrors(d.errors); return; }
  if (copy) $("copied").textContent = "(settings of " + copy + ")";
  build(d.values);
  for (const [id, list] of [["models", files.models], ["data", files.data]]) {
    for (const p of list) { const o = document.createElement("option"); o.value = p; $(id).appendChild(o); }
  }
  window.trainerSetup.ready = true;
})();
