// The list of runs under the server's folder.
"use strict";
const fmt = (x, d) => (typeof x !== "number" || !isFinite(x)) ? "–" : x.toFixed(d);
fetch("api/runs").then(r => r.json()).then(({ runs }) => {
  const body = document.querySelector("#runs tbody");
  document.getElementById("empty").hidden = runs.length > 0;
  for (const r of runs) {
    const tr = document.createElement("tr");
    tr.dataset.name = r.name;
    const a = document.createElement("a");
    a.href = "run/" + encodeURIComponent(r.name) + "/";
    a.textContent = r.name;
    const cells = [a, r.running ? "running" : "not running", r.step ?? "–", fmt(r.epoch, 2), fmt(r.loss, 4), r.checkpoints];
    for (const c of cells) {
      const td = document.createElement("td");
      if (c instanceof Node) td.appendChild(c); else td.textContent = c;
      tr.appendChild(td);
    }
    body.appendChild(tr);
  }
});
