/* Multipart upload with a progress bar (XMLHttpRequest reports upload progress; fetch does not). */
(function () {
  "use strict";
  function csrf() {
    var meta = document.querySelector("meta[name=csrf-token]");
    return meta ? meta.content : "";
  }
  function detail(body) {
    if (!body || !body.detail) return "the upload failed";
    if (typeof body.detail === "string") return body.detail;
    return body.detail.map(function (e) { return (e.loc || []).join(".") + ": " + e.msg; }).join("; ");
  }
  document.addEventListener("DOMContentLoaded", function () {
    var form = document.getElementById("upload-form");
    if (!form) return;
    var bar = document.getElementById("upload-progress");
    var status = document.getElementById("upload-status");
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var data = new FormData(form);
      Array.from(data.keys()).forEach(function (k) { if (data.get(k) === "") data.delete(k); });
      var xhr = new XMLHttpRequest();
      xhr.open("POST", form.dataset.uploadUrl);
      xhr.setRequestHeader("X-CSRF-Token", csrf());
      xhr.upload.onprogress = function (e) {
        if (e.lengthComputable) { bar.value = e.loaded / e.total; status.textContent = "uploading " + Math.round(100 * e.loaded / e.total) + "%"; }
      };
      xhr.upload.onload = function () { status.textContent = "checking the file (preflight)…"; };
      xhr.onload = function () {
        var body = null;
        try { body = JSON.parse(xhr.responseText); } catch (e) { body = null; }
        if (xhr.status >= 200 && xhr.status < 300) {
          status.textContent = "accepted";
          window.location.href = form.dataset.next === "/models/" ? "/models/" + body.id : form.dataset.next;
        } else {
          status.textContent = detail(body);
          status.className = "error";
        }
      };
      xhr.onerror = function () { status.textContent = "the connection failed"; status.className = "error"; };
      bar.hidden = false;
      xhr.send(data);
    });
  });
})();
