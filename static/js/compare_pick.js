/* Collect the ticked runs into ?runs=1,2,3 (2 to 6). */
(function () {
  "use strict";
  document.addEventListener("DOMContentLoaded", function () {
    var form = document.getElementById("compare-pick");
    if (!form) return;
    form.addEventListener("submit", function (ev) {
      var ids = Array.prototype.map.call(form.querySelectorAll("input[type=checkbox]:checked"), function (c) { return c.value; });
      if (ids.length < 2 || ids.length > 6) {
        ev.preventDefault();
        alert("Pick 2 to 6 runs to compare (" + ids.length + " ticked).");
        return;
      }
      form.querySelector("input[name=runs]").value = ids.join(",");
    });
  });
})();
