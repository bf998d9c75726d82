// Copy buttons for code snippets: <button data-copy="element-id">. Hidden until JavaScript runs.
(function () {
  function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) return navigator.clipboard.writeText(text);
    // http on a LAN: the clipboard API is missing; fall back to a selected textarea
    return new Promise(function (resolve, reject) {
      var area = document.createElement("textarea");
      area.value = text;
      area.setAttribute("readonly", "");
      area.style.position = "fixed";
      area.style.opacity = "0";
      document.body.appendChild(area);
      area.select();
      var ok = document.execCommand("copy");
      document.body.removeChild(area);
      ok ? resolve() : reject(new Error("copy refused"));
    });
  }
  document.querySelectorAll("button[data-copy]").forEach(function (button) {
    var source = document.getElementById(button.dataset.copy);
    if (!source) return;
    var note = button.nextElementSibling;
    button.hidden = false;
    button.addEventListener("click", function () {
      copyText(source.textContent).then(function () {
        if (note) note.textContent = "Copied";
        setTimeout(function () { if (note) note.textContent = ""; }, 2000);
      }, function () {
        if (note) note.textContent = "Copy failed: select the text instead";
      });
    });
  });
})();
