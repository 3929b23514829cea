// The list of runs under the server's folder; with the setup page, New run, Copy settings and Resume.
"use strict";
const fmt = (x, d) => (typeof x !== "number" || !isFinite(x)) ? "–" : x.toFixed(d);
fetch("api/runs").then(r => r.json()).then(({ runs, setup }) => {
  const body = document.querySelector("#runs tbody");
  document.getElementById("empty").hidden = runs.length > 0;
  document.getElementById("new-run").hidden = !setup;
  for (const r of runs) {
    const tr = document.createElement("tr");
    tr.dataset.name = r.name;
    const a = document.createElement("a");
    a.href = "run/" + encodeURIComponent(r.name) + "/";
    a.textContent = r.name;
    const actions = document.createElement("span");
    if (setup) {
      const copy = document.createElement("a");
      copy.href = "setup?copy=" + encodeURIComponent(r.name);
      copy.className = "copy";
      copy.textContent = "Copy settings";
      actions.appendChild(copy);
      if (r.resumable) {
        const b = document.createElement("button");
        b.className = "resume";
        b.textContent = "Resume";
        b.onclick = async () => {
          b.disabled = true;
          const res = await fetch("api/setup/resume", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ name: r.name }) });
          if (res.status === 202) {
            // The run's page follows the folder while the run holds it: wait for that, or for its failure.
            for (;;) {
              await new Promise(ok => setTimeout(ok, 300));
              const job = await (await fetch("api/setup/job")).json();
              if (job.name === r.name && job.state === "failed") { document.getElementById("message").textContent = job.message; b.disabled = false; return; }
              const { runs } = await (await fetch("api/runs")).json();
              if (job.name === r.name && job.state !== "running" || runs.some(x => x.name === r.name && x.running)) { location.href = a.href; return; }
            }
          }
          b.disabled = false;
          const t = await res.text();
          let msg = t; try { msg = JSON.parse(t).errors.map(e => e.message).join("; "); } catch (_) {}
          document.getElementById("message").textContent = msg;
        };
        actions.append(" ", b);
      }
    }
    const state = r.running ? "running" : (r.resumable ? "not running (unfinished)" : "not running");
    const cells = [a, state, r.step ?? "–", fmt(r.epoch, 2), fmt(r.loss, 4), r.checkpoints, actions];
    for (const c of cells) {
      const td = document.createElement("td");
      if (c instanceof Node) td.appendChild(c); else td.textContent = c;
      tr.appendChild(td);
    }
    body.appendChild(tr);
  }
});
