/* Collect the ticked runs into ?runs=1,2,3 (2 to the server's compare limit, data-max-compare). */
(function () {
  "use strict";
  document.addEventListener("DOMContentLoaded", function () {
    var form = document.getElementById("compare-pick");
    if (!form) return;
    form.addEventListener("submit", function (ev) {
      var ids = Array.prototype.map.call(form.querySelectorAll("input[type=checkbox]:checked"), function (c) { return c.value; });
      var max = Number(form.dataset.maxCompare);
      if (ids.length < 2 || ids.length > max) {
        ev.preventDefault();
        alert("Pick 2 to " + max + " runs to compare (" + ids.length + " ticked).");
        return;
      }
      form.querySelector("input[name=runs]").value = ids.join(",");
    });
  });
})();
