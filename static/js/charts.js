/* PruneLab charts: draw every [data-figure] from its JSON block; layer pickers fetch figures. */
(function () {
  "use strict";
  var CONFIG = { responsive: true, displaylogo: false, modeBarButtonsToRemove: ["lasso2d", "select2d"] };

  function readJSON(id) {
    var el = document.getElementById(id);
    return el ? JSON.parse(el.textContent) : null;
  }

  function draw(div, fig) {
    if (!div || !fig) return Promise.resolve();
    var layout = Object.assign({ autosize: true }, fig.layout || {});
    var p = Plotly.react(div, fig.data || [], layout, CONFIG);
    div.dataset.drawn = "true";
    return p;
  }

  function fetchJSON(url) {
    return fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) {
        if (!r.ok) throw new Error(url + " answered " + r.status);
        return r.json();
      });
  }

  function openRunOnClick(div) {
    div.on("plotly_click", function (ev) {
      var pt = ev.points && ev.points[0];
      if (pt && typeof pt.customdata === "number") window.location.href = "/runs/" + pt.customdata;
    });
  }

  function drawAll() {
    document.querySelectorAll("[data-figure]").forEach(function (div) {
      draw(div, readJSON(div.dataset.figure)).then(function () {
        if (div.id === "chart-overview" || div.dataset.click === "run") openRunOnClick(div);
      });
    });
  }

  function loadLayerCharts(select) {
    var layer = encodeURIComponent(select.value);
    var extra = select.dataset.runs ? "&runs=" + encodeURIComponent(select.dataset.runs) : "";
    var targets = (select.dataset.targets || "chart-histogram,chart-mask").split(",");
    return Promise.all(targets.map(function (id) {
      var div = document.getElementById(id);
      if (!div) return null;
      return fetchJSON(div.dataset.url + "?layer=" + layer + extra).then(function (fig) { return draw(div, fig); });
    }));
  }

  function wireLayerSelects() {
    document.querySelectorAll("[data-layer-select]").forEach(function (select) {
      select.addEventListener("change", function () { loadLayerCharts(select); });
      if (select.options.length) loadLayerCharts(select);
    });
  }

  window.PruneLab = { draw: draw, fetchJSON: fetchJSON, readJSON: readJSON, loadLayerCharts: loadLayerCharts };
  document.addEventListener("DOMContentLoaded", function () { drawAll(); wireLayerSelects(); });
})();
