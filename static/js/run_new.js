/* New-run form: valid criterion/granularity pairs only, a live schedule preview, the recipe
   posted as JSON to /api/runs (or /api/sweeps), 422 messages shown next to their fields. */
(function () {
  "use strict";
  var spec, form;

  function $(name) { return form.elements[name]; }
  function csrf() { var m = document.querySelector("meta[name=csrf-token]"); return m ? m.content : ""; }
  function num(name) { var v = $(name).value; return v === "" ? null : Number(v); }
  // "auto" or a number; anything else goes as typed so the server's 422 names it
  function numOrAuto(name) { var v = $(name).value.trim(); if (v === "" || v === "auto") return "auto"; return isNaN(Number(v)) ? v : Number(v); }

  function fillGranularities() {
    var sel = $("granularity"), keep = sel.value;
    var allowed = spec.pairs[$("criterion").value] || [];
    sel.innerHTML = "";
    allowed.forEach(function (g) { sel.add(new Option(g, g, false, g === keep)); });
    if (allowed.indexOf(keep) < 0 && allowed.length) sel.value = allowed.indexOf("element") >= 0 ? "element" : allowed[0];
    toggleTargets();
  }

  // Nothing is excluded until the user picks layers: the list sits folded in a <details>
  // whose summary says how many are left dense (an open list box read as pre-filled).
  function fillLayers() {
    var sel = $("exclude");
    sel.innerHTML = "";
    (spec.layers[$("model_id").value] || []).forEach(function (n) { sel.add(new Option(n, n)); });
    countExcluded();
    fitDatasets();
    // an ONNX upload is most likely deployed in ONNX Runtime: shape its widths for it
    $("deploy_runtime").value = (spec.formats || {})[$("model_id").value] === "onnx" ? "onnxruntime" : "pytorch";
  }

  function countExcluded() {
    var picked = Array.from($("exclude").selectedOptions).map(function (o) { return o.value; });
    document.getElementById("exclude-count").textContent = picked.length ?
      picked.length + " of " + $("exclude").options.length + ": " + picked.join(", ") : "none, every prunable layer is pruned";
  }

  // Datasets that cannot feed the chosen model (shape, classes, vocabulary) are greyed out
  // with the server's reason; the first one that fits is chosen if the current one does not.
  function fitDatasets() {
    var sel = $("dataset_id"), unfit = (spec.unfit || {})[$("model_id").value] || {}, n = 0;
    Array.from(sel.options).forEach(function (o) {
      var why = unfit[o.value];
      o.disabled = !!why;
      o.title = why || "";
      o.textContent = o.dataset.label + (why ? " (does not fit this model)" : "");
      if (why) n += 1;
    });
    if (sel.selectedOptions.length && sel.selectedOptions[0].disabled) {
      var ok = Array.from(sel.options).filter(function (o) { return !o.disabled; })[0];
      if (ok) sel.value = ok.value;
    }
    var hint = document.getElementById("dataset-fit");
    hint.hidden = n === 0;
    hint.textContent = n ? n + " dataset" + (n > 1 ? "s do" : " does") + " not fit this model (input shape, classes or vocabulary); hover one for why" : "";
  }

  function toggleTargets() {
    var mode = $("target_mode").value, nm = $("granularity").value === "nm";
    form.querySelector("[data-show=sparsity]").hidden = nm || mode !== "sparsity";
    form.querySelector("[data-show=threshold]").hidden = nm || mode !== "threshold";
    form.querySelector("[data-show=nm]").hidden = !nm;
    var crit = $("criterion").value, info = spec.catalogue.criteria.filter(function (c) { return c.name === crit; })[0];
    form.querySelector("[data-show=wanda_group]").hidden = !(crit === "wanda" && $("granularity").value === "element");
    form.querySelector("[data-show=calibration]").hidden = !(info && info.needs_data);
    var g = $("granularity").value;
    form.querySelector("[data-show=deploy_runtime]").hidden = !($("physical").checked && (g === "filter" || g === "channel"));
    var prune = $("kind").value !== "train";
    form.querySelector("[data-section=pruning]").disabled = !prune;
    form.querySelector("[data-section=schedule]").disabled = $("kind").value !== "prune";
    // one prune step whatever "steps" says: the field is hidden and not sent
    form.querySelector("[data-show=steps]").hidden = ONE_STEP.indexOf($("schedule_kind").value) >= 0;
  }
  var ONE_STEP = ["oneshot", "at_init", "retrain"];

  // The targets come from the server (GET /api/schedule/preview, the engine's
  // schedule_targets), so the preview is exactly what the run will do.
  var previewSeq = 0;
  function drawSchedule() {
    var s = num("sparsity"), steps = Math.max(1, Math.min(50, num("steps") || 1));
    if (s === null || !(s >= 0 && s < 1)) s = 0;
    var seq = ++previewSeq;
    var query = new URLSearchParams({ kind: $("schedule_kind").value, steps: steps, sparsity: s });
    fetch("/api/schedule/preview?" + query, { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (body) { if (body && seq === previewSeq) plotSchedule(body.targets); })
      .catch(function () {});
  }

  function plotSchedule(t) {
    var x = t.map(function (_, i) { return i + 1; });
    Plotly.react("chart-schedule", [{
      type: "scatter", mode: "lines+markers", x: [0].concat(x), y: [0].concat(t), line: { shape: "hv", color: "#0072B2" },
      hovertemplate: "step %{x}: %{y:.1%}<extra></extra>"
    }], {
      title: { text: "Sparsity schedule preview", font: { size: 13 } }, height: 200,
      margin: { l: 50, r: 10, t: 30, b: 40 }, xaxis: { title: { text: "pruning step" }, dtick: 1 },
      yaxis: { title: { text: "target sparsity" }, tickformat: ".0%", range: [0, 1] }
    }, { displayModeBar: false, responsive: true });
    document.getElementById("chart-schedule").dataset.drawn = "true";
  }

  function recipe() {
    var kind = $("kind").value, g = $("granularity").value;
    var pruning = { granularity: g, criterion: $("criterion").value, scope: $("scope").value,
      exclude: Array.from($("exclude").selectedOptions).map(function (o) { return o.value; }),
      physical: $("physical").checked };
    if (!form.querySelector("[data-show=wanda_group]").hidden) pruning.wanda_group = $("wanda_group").value;
    if (!form.querySelector("[data-show=calibration]").hidden) pruning.calibration_batches = num("calibration_batches");
    if (!form.querySelector("[data-show=deploy_runtime]").hidden) pruning.deploy_runtime = $("deploy_runtime").value;
    if (g === "nm") pruning.nm = $("nm").value.split(":").map(Number);
    else if ($("target_mode").value === "threshold") pruning.threshold = num("threshold");
    else pruning.sparsity = num("sparsity");
    var body = { kind: kind, name: $("name").value || (g + " " + pruning.criterion + " " + (pruning.sparsity || "")).trim(),
      model_id: Number($("model_id").value), dataset_id: $("dataset_id").value, pruning: pruning,
      schedule: { kind: $("schedule_kind").value },
      finetune: { epochs: num("epochs"), lr: numOrAuto("lr"), optimizer: $("optimizer").value, batch_size: numOrAuto("batch_size") },
      seed: num("seed") || 0 };
    if (!form.querySelector("[data-show=steps]").hidden) body.schedule.steps = num("steps");
    if (num("max_accuracy_drop") !== null) body.schedule.max_accuracy_drop = num("max_accuracy_drop");
    if (kind === "sensitivity") delete body.schedule;
    return body;
  }

  function clearErrors(root) {
    root.querySelectorAll(".field-error").forEach(function (e) { e.textContent = ""; });
    root.querySelectorAll("[aria-invalid]").forEach(function (e) { e.removeAttribute("aria-invalid"); });
  }

  function showError(root, boxId, detail) {
    var items = typeof detail === "string" ? [{ msg: detail }] : (detail || [{ msg: "the server refused the request" }]);
    var box = document.getElementById(boxId), loose = [];
    items.forEach(function (e) {
      var loc = (e.loc || []).filter(function (p) { return p !== "body"; }).join(".");
      var text = e.msg || String(e);
      var fields = Array.from(root.querySelectorAll("[data-error-for]")).map(function (f) { return f.dataset.errorFor; });
      var target = fields.indexOf(loc) >= 0 ? loc : fields.filter(function (f) { return text.indexOf(f) >= 0 || text.indexOf(f.split(".").pop() + " ") === 0; })
        .sort(function (a, b) { return b.length - a.length; })[0];
      var slot = target && root.querySelector("[data-error-for='" + target + "']");
      if (slot) {
        slot.textContent = text;
        var input = root.querySelector("[data-field='" + target + "']");
        if (input) input.setAttribute("aria-invalid", "true");
      } else loose.push(text);
    });
    box.textContent = loose.join(" ");
    box.hidden = loose.length === 0;
  }

  function post(url, body) {
    return fetch(url, { method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", Accept: "application/json", "X-CSRF-Token": csrf() },
      body: JSON.stringify(body) }).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (b) { return { ok: r.ok, status: r.status, body: b }; });
    });
  }

  function clientCheck(body) {
    var p = body.pruning;
    if (p.sparsity !== undefined && !(p.sparsity >= 0 && p.sparsity < 1)) return [{ loc: ["pruning", "sparsity"], msg: "pruning.sparsity must be a number in [0, 1)." }];
    if (p.threshold !== undefined && !(p.threshold >= 0)) return [{ loc: ["pruning", "threshold"], msg: "pruning.threshold must be a number >= 0." }];
    if (body.schedule && body.schedule.steps !== undefined && !(body.schedule.steps >= 1)) return [{ loc: ["schedule", "steps"], msg: "schedule.steps must be an integer >= 1." }];
    return null;
  }

  function submitRun(ev) {
    ev.preventDefault();
    clearErrors(form);
    var body = recipe(), bad = clientCheck(body), status = document.getElementById("run-submit-status");
    if (bad) { showError(form, "form-error", bad); return; }
    status.textContent = "submitting…";
    post("/api/runs", body).then(function (r) {
      if (r.ok) { status.textContent = "run #" + r.body.id + " queued"; window.location.href = "/runs/" + r.body.id; return; }
      status.textContent = "";
      showError(form, "form-error", r.body.detail);
    }).catch(function () { status.textContent = "the connection failed"; });
  }

  function submitSweep(ev) {
    ev.preventDefault();
    var sf = ev.target;
    clearErrors(sf);
    var sparsities = sf.elements.sparsities.value.split(",").map(function (s) { return Number(s.trim()); });
    var criteria = Array.from(sf.querySelectorAll("input[name=criteria]:checked")).map(function (c) { return c.value; });
    if (sparsities.some(function (s) { return !(s >= 0 && s < 1); })) { showError(sf, "sweep-error", [{ loc: ["sparsities"], msg: "sparsities must be numbers in [0, 1), separated by commas." }]); return; }
    if (!criteria.length) { showError(sf, "sweep-error", [{ loc: ["criteria"], msg: "criteria: tick at least one." }]); return; }
    var r = recipe();
    var body = { name: sf.elements.sweep_name.value || r.name + " sweep", recipe: r, sparsities: sparsities,
      criteria: criteria, baseline: sf.elements.baseline.checked };
    post("/api/sweeps", body).then(function (res) {
      if (res.ok) { window.location.href = "/sweeps/" + res.body.id; return; }
      showError(sf, "sweep-error", res.body.detail);
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    form = document.getElementById("run-form");
    if (!form) return;
    spec = JSON.parse(document.getElementById("form-spec").textContent);
    fillGranularities();
    fillLayers();
    $("criterion").addEventListener("change", fillGranularities);
    $("granularity").addEventListener("change", toggleTargets);
    $("target_mode").addEventListener("change", toggleTargets);
    $("kind").addEventListener("change", toggleTargets);
    $("schedule_kind").addEventListener("change", toggleTargets);
    $("physical").addEventListener("change", toggleTargets);
    $("model_id").addEventListener("change", fillLayers);
    $("exclude").addEventListener("change", countExcluded);
    ["sparsity", "steps", "schedule_kind"].forEach(function (n) { $(n).addEventListener("input", drawSchedule); $(n).addEventListener("change", drawSchedule); });
    drawSchedule();
    form.addEventListener("submit", submitRun);
    var sweep = document.getElementById("sweep-form");
    if (sweep) sweep.addEventListener("submit", submitSweep);
  });
})();
