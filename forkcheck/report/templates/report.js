(function () {
  "use strict";
  var items = Array.prototype.slice.call(document.querySelectorAll("details.item"));

  // Filters: by verdict (checkboxes) and by finding kind (one select); the page reads fine without them.
  var filters = document.getElementById("filters");
  if (filters) {
    filters.hidden = false;
    var boxes = Array.prototype.slice.call(filters.querySelectorAll("input[name=verdict]"));
    var kindSelect = filters.querySelector("select[name=kind]");
    var shown = filters.querySelector(".shown");
    var apply = function () {
      var verdicts = {};
      boxes.forEach(function (box) { verdicts[box.value] = box.checked; });
      var kind = kindSelect ? kindSelect.value : "";
      var count = 0;
      items.forEach(function (item) {
        var visible = !!verdicts[item.getAttribute("data-verdict")];
        if (visible && kind) {
          visible = (" " + item.getAttribute("data-kinds") + " ").indexOf(" " + kind + " ") >= 0;
        }
        item.hidden = !visible;
        if (visible) {
          count += 1;
          var findings = item.querySelectorAll("article.finding");
          for (var i = 0; i < findings.length; i++) {
            findings[i].hidden = !!kind && findings[i].getAttribute("data-kind") !== kind;
          }
        }
      });
      if (shown) { shown.textContent = "showing " + count + " of " + items.length; }
    };
    boxes.forEach(function (box) { box.addEventListener("change", apply); });
    if (kindSelect) { kindSelect.addEventListener("change", apply); }
    filters.addEventListener("click", function (event) {
      var action = event.target.getAttribute && event.target.getAttribute("data-action");
      if (!action) { return; }
      items.forEach(function (item) { item.open = action === "expand"; });
    });
    apply();
  }

  // Copy buttons for replay commands.
  Array.prototype.forEach.call(document.querySelectorAll("button.copy"), function (button) {
    button.hidden = false;
    button.addEventListener("click", function () {
      var text = button.getAttribute("data-copy");
      var done = function () {
        button.textContent = "Copied";
        button.classList.add("done");
        setTimeout(function () { button.textContent = "Copy"; button.classList.remove("done"); }, 1500);
      };
      var fallback = function () {
        var area = document.createElement("textarea");
        area.value = text;
        area.setAttribute("readonly", "");
        area.className = "visually-hidden";
        document.body.appendChild(area);
        area.select();
        try { document.execCommand("copy"); done(); } catch (e) { /* the command stays selectable */ }
        document.body.removeChild(area);
      };
      if (navigator.clipboard && navigator.clipboard.writeText) {
        navigator.clipboard.writeText(text).then(done, fallback);
      } else {
        fallback();
      }
    });
  });

  // A shared link to a finding opens the sections around it, and shows it even if a filter hid it.
  var reveal = function () {
    var id = decodeURIComponent(location.hash.slice(1));
    var node = id && document.getElementById(id);
    if (!node) { return; }
    for (var el = node; el; el = el.parentElement) {
      if (el.tagName === "DETAILS") { el.open = true; }
      if (el.hidden) { el.hidden = false; }
    }
    node.scrollIntoView();
  };
  window.addEventListener("hashchange", reveal);
  reveal();
})();
