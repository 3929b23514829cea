// The page of one training run: replays the run's events from the server's stream (the whole history on
// every (re)connection, then live), draws the charts and sends controls as POSTs.
"use strict";

const $ = (id) => document.getElementById(id);
const SMOOTHING = 0.9; // the PNG graph's debiased EMA weight

const run = {
  lastSeq: -1, ended: false, total: 0, startStep: 0,
  steps: [], epochs: [], loss: [], smooth: [], evalLoss: [], lr: [], grad: [],
  ema: 0, debias: 1, lossAt: new Map(), checkpoints: new Map(),
};

// For tests and curious users: how many steps the charts hold.
window.trainerUi = { points: () => run.steps.length, steps: () => run.steps.slice(), ended: () => run.ended };

function fmtTime(s) {
  if (!isFinite(s) || s < 0) return "–";
  s = Math.round(s);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  return (h ? h + "h " : "") + (h || m ? m + "m " : "") + sec + "s";
}
const fmt = (x, d) => (x === null || x === undefined || !isFinite(x)) ? "–" : Number(x).toFixed(d);

function li(list, text, cls) {
  const e = document.createElement("li");
  e.textContent = text;
  if (cls) e.className = cls;
  $(list).appendChild(e);
  return e;
}

// ---- charts ----
const charts = [];
function makeChart(el, title, series, exponent) {
  const yAxis = { size: 70 };
  if (exponent) yAxis.values = (u, splits) => splits.map(v => v.toExponential(1));
  const opts = {
    title, width: Math.min(1060, window.innerWidth - 40), height: 240,
    scales: { x: { time: false } },
    series: [{ label: "step" }, ...series.map(s => ({ spanGaps: true, width: 1.5, ...s }))],
    axes: [{}, yAxis],
  };
  const u = new uPlot(opts, [[], ...series.map(() => [])], $(el));
  charts.push(u);
  return u;
}
const lossChart = makeChart("chart-loss", "Loss", [
  { label: "loss", stroke: "rgba(31,119,180,0.45)" },
  { label: "smoothed", stroke: "#1f77b4", width: 2 },
  { label: "eval loss", stroke: "#d62728", width: 2, points: { show: true, size: 6 } },
]);
const lrChart = makeChart("chart-lr", "Learning rate", [{ label: "lr", stroke: "#2ca02c", value: (u, v) => v == null ? "–" : v.toExponential(3) }], true);
const gradChart = makeChart("chart-grad", "Gradient norm (before clipping)", [{ label: "grad norm", stroke: "#9467bd" }]);

let drawPending = false;
function redraw() {
  if (drawPending) return;
  drawPending = true;
  requestAnimationFrame(() => {
    drawPending = false;
    const x = $("x-axis").value === "epoch" ? run.epochs : run.steps;
    lossChart.setData([x, run.loss, run.smooth, run.evalLoss]);
    lrChart.setData([x, run.lr]);
    gradChart.setData([x, run.grad]);
  });
}
$("x-axis").onchange = () => {
  for (const u of charts) u.series[0].label = $("x-axis").value;
  redraw();
};

// ---- events ----
function onInfo(e) {
  $("output").textContent = e.output;
  $("settings").textContent = e.settings_toml;
  $("data-summary").textContent = e.data_summary;
  $("plan").textContent = e.plan;
  for (const w of e.warnings) li("warnings", w);
  const form = $("set-form");
  for (const key of e.changeable) {
    const label = document.createElement("label");
    label.textContent = key + " ";
    const input = document.createElement("input");
    input.id = "set-" + key; input.name = key; input.inputMode = "decimal";
    const button = document.createElement("button");
    button.type = "button"; button.id = "set-" + key + "-button"; button.textContent = "Set";
    button.onclick = () => send({ command: "set", assignment: key + "=" + input.value.trim() });
    label.append(input, " ", button);
    form.appendChild(label);
  }
}

function onStart(e) {
  run.total = e.total_steps; run.startStep = e.step;
  $("total").textContent = e.total_steps;
  $("step").textContent = e.step;
  $("bar").max = Math.max(1, e.total_steps); $("bar").value = e.step;
  if (e.resumed_from) li("control-log", "resumed from " + e.resumed_from);
}

function onStep(e) {
  run.steps.push(e.step); run.epochs.push(e.epoch);
  run.loss.push(e.loss); run.lr.push(e.lr); run.grad.push(e.grad_norm); run.evalLoss.push(e.eval_loss);
  if (e.loss !== null) {
    run.ema = SMOOTHING * run.ema + (1 - SMOOTHING) * e.loss;
    run.debias *= SMOOTHING;
    run.smooth.push(run.ema / (1 - run.debias));
    run.lossAt.set(e.step, e.loss);
  } else {
    run.smooth.push(null);
  }
  $("step").textContent = e.step;
  if (run.total > 0) $("bar").value = e.step; // a run shown from its folder has no known total
  $("epoch").textContent = fmt(e.epoch, 2);
  $("loss").textContent = fmt(e.loss, 4);
  $("tps").textContent = fmt(e.tokens_per_s, 0);
  if (e.time_s !== null) {
    $("elapsed").textContent = fmtTime(e.time_s);
    const done = e.step - run.startStep;
    if (run.total > 0) $("left").textContent = fmtTime(done > 0 ? e.time_s / done * Math.max(0, run.total - e.step) : NaN);
  }
  redraw();
}

function onCheckpoint(e) {
  const tr = document.createElement("tr");
  tr.dataset.name = e.name;
  for (const v of [e.name, e.step, fmt(run.lossAt.get(e.step), 4), e.reason]) {
    const td = document.createElement("td"); td.textContent = v; tr.appendChild(td);
  }
  $("checkpoints").tBodies[0].appendChild(tr);
  run.checkpoints.set(e.name, tr);
}

function onDeleted(e) {
  const tr = run.checkpoints.get(e.name);
  if (tr) { tr.className = "deleted"; tr.title = "deleted by the retention rules"; }
}

function commandText(c) {
  if (!c) return "?";
  return c.command === "set" ? "set " + c.assignment : c.command;
}

function onControl(e) {
  if (e.outcome === "applied") li("control-log", "applied: " + commandText(e.command), "applied");
  else if (e.outcome === "rejected") li("control-log", "refused: " + commandText(e.command) + ": " + e.reason, "rejected");
  else li("control-log", "unreadable command: " + e.reason, "rejected");
}

function onFinish(e) {
  run.ended = true;
  $("end").textContent = e.step === null ? e.end :
    e.end + " after " + e.step + " of " + e.total_steps + " steps, loss " + fmt(e.loss, 4) + ". Adapter: " + e.adapter;
  $("state").textContent = "ended";
  $("state").className = "state ended";
  for (const b of document.querySelectorAll("#controls button")) b.disabled = true;
}

const handlers = {
  info: onInfo, start: onStart, step: onStep, checkpoint: onCheckpoint,
  checkpoint_deleted: onDeleted, control: onControl, finish: onFinish, eval: () => {},
};

const source = new EventSource("api/events");
source.onopen = () => { if (!run.ended) { $("state").textContent = "running"; $("state").className = "state"; } };
source.onmessage = (m) => {
  const e = JSON.parse(m.data);
  if (e.seq <= run.lastSeq) return; // already shown (a reconnection replays the history)
  run.lastSeq = e.seq;
  const h = handlers[e.type];
  if (h) h(e);
};
source.onerror = () => {
  if (run.ended) { source.close(); return; }
  $("state").textContent = "connection lost, retrying… (the run goes on without the page)";
  $("state").className = "state lost";
};

// ---- controls ----
async function send(command) {
  try {
    const r = await fetch("api/control", {
      method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(command),
    });
    const text = (await r.text()).trim();
    li("control-log", (r.ok ? "sent: " : "not sent: ") + commandText(command) + (r.ok ? "" : ": " + text),
      r.ok ? "" : "error");
  } catch (err) {
    li("control-log", "not sent: " + commandText(command) + ": " + err, "error");
  }
}
$("save-now").onclick = () => send({ command: "save-now" });
$("stop").onclick = () => send({ command: "stop" });
window.addEventListener("resize", () => {
  for (const u of charts) u.setSize({ width: Math.min(1060, window.innerWidth - 40), height: 240 });
});
