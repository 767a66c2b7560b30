/* Tables: click a header to sort, type in the box above a table to filter its rows. Gallery: click a thumbnail to
   enlarge it. Inline, no network, no external code; the report reads the same without it. */
(function () {
  "use strict";
  function key(cell) {
    var text = (cell ? cell.textContent : "").trim();
    if (text === "" || text === "\u2013") return { n: NaN, t: "" };
    if (text.charAt(0) === "\u221e") return { n: Infinity, t: text };
    if (text.indexOf("-\u221e") === 0) return { n: -Infinity, t: text };
    var m = text.replace("<", "").match(/^-?\d+(\.\d+)?/);
    return m ? { n: parseFloat(m[0]), t: text } : { n: NaN, t: text.toLowerCase() };
  }
  function compare(a, b) {
    var an = isNaN(a.n), bn = isNaN(b.n);
    if (!an && !bn) return a.n - b.n;
    if (an !== bn) return an ? 1 : -1;
    return a.t < b.t ? -1 : a.t > b.t ? 1 : 0;
  }
  function sortable(table) {
    var body = table.tBodies[0];
    if (!table.tHead || !body) return;
    var headers = table.tHead.rows[table.tHead.rows.length - 1].cells;
    Array.prototype.forEach.call(headers, function (th, col) {
      th.classList.add("sortable");
      th.setAttribute("tabindex", "0");
      function go() {
        var dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
        Array.prototype.forEach.call(headers, function (h) { h.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (r1, r2) { return dir * compare(key(r1.cells[col]), key(r2.cells[col])); });
        rows.forEach(function (r) { body.appendChild(r); });
      }
      th.addEventListener("click", go);
      th.addEventListener("keydown", function (e) { if (e.key === "Enter") go(); });
    });
    if (body.rows.length > 8) {
      var box = document.createElement("input");
      box.type = "search";
      box.className = "filter";
      box.placeholder = "filter rows";
      box.setAttribute("aria-label", "filter the rows of the table below");
      box.addEventListener("input", function () {
        var q = box.value.toLowerCase();
        Array.prototype.forEach.call(body.rows, function (r) { r.hidden = q !== "" && r.textContent.toLowerCase().indexOf(q) < 0; });
      });
      var holder = table.parentNode.classList.contains("scroll") ? table.parentNode : table;
      holder.parentNode.insertBefore(box, holder);
    }
  }
  document.querySelectorAll("table.data").forEach(sortable);
  document.querySelectorAll(".gallery figure img").forEach(function (img) {
    img.setAttribute("tabindex", "0");
    img.setAttribute("role", "button");
    img.setAttribute("aria-label", "enlarge " + img.alt);
    function toggle() { img.parentNode.classList.toggle("zoom"); }
    img.addEventListener("click", toggle);
    img.addEventListener("keydown", function (e) { if (e.key === "Enter") toggle(); });
  });
  window.addEventListener("beforeprint", function () { document.querySelectorAll("details").forEach(function (d) { d.open = true; }); });
})();
