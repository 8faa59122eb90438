/* Live run page: SSE from /api/runs/{id}/events moves the progress bar and extends the curves in
   place; step and status events re-fetch the row-based charts (Plotly.react, no reload). */
(function () {
  "use strict";
  var FINISHED = ["succeeded", "failed", "cancelled"];
  var root, runId, source, pollTimer, refreshTimer;

  function setStatus(status) {
    root.dataset.status = status;
    var badge = root.querySelector("[data-status]");
    if (badge) { badge.textContent = status; badge.className = "badge status-" + status; }
  }

  function setProgress(fraction, message) {
    var bar = document.getElementById("run-progress");
    if (bar && typeof fraction === "number") {
      bar.value = fraction;
      document.getElementById("run-percent").textContent = Math.round(fraction * 100) + "%";
    }
    if (message) document.getElementById("run-message").textContent = message;
  }

  function extendCurve(point) {
    var div = document.getElementById("chart-curve");
    if (!div || !div.data) return;
    if (div.data.length < 2) { scheduleRefresh(); return; }  // was the empty state: redraw whole
    var n = (div.data[0].x || []).length + 1;
    Plotly.extendTraces(div, {
      x: [[n], [n]], y: [[point.loss], [point.accuracy]], customdata: [[point.step || 0], [point.step || 0]]
    }, [0, 1]);
  }

  function refresh() {
    return window.PruneLab.fetchJSON("/runs/" + runId + "/figures.json").then(function (body) {
      Object.keys(body.figures).forEach(function (name) {
        window.PruneLab.draw(document.getElementById("chart-" + name), body.figures[name]);
      });
      setStatus(body.status);
      setProgress(body.progress, body.message);
      var err = document.getElementById("run-error");
      if (body.error) { err.textContent = body.error; err.hidden = false; }
      var select = document.getElementById("layer-select");
      if (select && !select.options.length && body.layers && body.layers.length) {
        body.layers.forEach(function (n) { select.add(new Option(n, n)); });
        select.closest("label").hidden = false;
      }
      if (FINISHED.indexOf(body.status) >= 0) {
        stop();
        if (select && select.options.length) window.PruneLab.loadLayerCharts(select);
      }
      return body;
    });
  }

  function scheduleRefresh() {
    clearTimeout(refreshTimer);
    refreshTimer = setTimeout(refresh, 300);
  }

  function stop() {
    if (source) { source.close(); source = null; }
    clearInterval(pollTimer);
  }

  function onEvent(type, ev) {
    var data = {};
    try { data = JSON.parse(ev.data || "{}"); } catch (e) { return; }
    root.dataset.lastEvent = ev.lastEventId || root.dataset.lastEvent;
    if (type === "progress") setProgress(data.fraction, data.message);
    else if (type === "metric" && data.step !== null && typeof data.step === "object") scheduleRefresh();
    else if (type === "metric") extendCurve(data);
    else if (type === "step") scheduleRefresh();
    else if (type === "status") {
      setStatus(data.status);
      if (FINISHED.indexOf(data.status) >= 0 || data.status === "interrupted") { stop(); refresh(); }
    }
  }

  function poll() {  // fallback when the event stream is unavailable
    clearInterval(pollTimer);
    pollTimer = setInterval(function () { refresh().catch(function () {}); }, 2000);
  }

  function start() {
    root = document.getElementById("run");
    if (!root || root.dataset.finished === "true") return;
    runId = root.dataset.runId;
    if (!window.EventSource) { poll(); return; }
    source = new EventSource("/api/runs/" + runId + "/events?last_event_id=" + (root.dataset.lastEvent || 0));
    ["progress", "metric", "step", "status"].forEach(function (type) {
      source.addEventListener(type, function (ev) { onEvent(type, ev); });
    });
    source.onerror = function () {
      // The stream closes when the run ends; find out why, then either stop or poll.
      if (source) { source.close(); source = null; }
      refresh().then(function (body) {
        if (FINISHED.indexOf(body.status) < 0) poll();
      }).catch(poll);
    };
  }

  document.addEventListener("DOMContentLoaded", start);
})();
