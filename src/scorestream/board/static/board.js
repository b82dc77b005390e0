"use strict";
// The board's front page: hottest contacts per model, crossings as they arrive.
(function () {
  var el = Board.el;
  var crossings = document.getElementById("crossings");
  var showAnonymous = document.getElementById("show-anonymous");
  var MAX_SHOWN = 100;

  function renderTop(doc) {
    var models = document.getElementById("models");
    var note = document.getElementById("top-note");
    var names = Object.keys(doc.models);
    note.textContent = doc.loaded ? "" : "Reading the latest scores…";
    if (!names.length) {
      models.replaceChildren(el("p", { className: "note", text: doc.loaded ? "No scored contacts yet." : "" }));
      return;
    }
    models.replaceChildren.apply(models, names.map(function (name) {
      var rows = doc.models[name].map(function (e, i) {
        return el("tr", { "data-contact-id": e.contact_id }, [
          el("td", { className: "rank", text: String(i + 1) }),
          el("td", {}, [Board.contactLink(e.contact_id)]),
          el("td", { className: "num", text: Board.score(e.score) }),
          el("td", {}, [e.tier ? el("span", { className: "tier", text: e.tier }) : ""]),
          el("td", { className: "time", text: Board.when(e.updated_at) }),
        ]);
      });
      var caption = name + (doc.exact[name] ? "" : " (refreshing)");
      return el("table", { className: "grid top", "data-model": name }, [
        el("caption", { text: caption }),
        el("thead", {}, [el("tr", {}, ["#", "contact", "score", "tier", "updated"].map(function (h) {
          return el("th", { text: h });
        }))]),
        el("tbody", {}, rows),
      ]);
    }));
  }

  function addCrossing(c, fresh) {
    if (c.anonymous && !showAnonymous.checked) return;
    if (c.crossing_id && crossings.querySelector('[data-crossing-id="' + CSS.escape(c.crossing_id) + '"]')) return;
    var item = Board.crossingItem(c);
    if (fresh) item.classList.add("fresh");
    crossings.insertBefore(item, crossings.firstChild);
    while (crossings.children.length > MAX_SHOWN) crossings.removeChild(crossings.lastChild);
  }

  function loadTop() {
    return Board.api("/api/top").then(renderTop).catch(function () {});
  }

  function loadCrossings() {
    return Board.api("/api/crossings").then(function (doc) {
      crossings.replaceChildren();
      doc.crossings.slice().reverse().forEach(function (c) { addCrossing(c, false); });
    }).catch(function () {});
  }

  var topPending = false;
  function topChanged() {
    // At most one reload of the lists in flight; a notice while one runs is folded in.
    if (topPending) return;
    topPending = true;
    loadTop().then(function () { topPending = false; });
  }

  showAnonymous.addEventListener("change", loadCrossings);
  Board.search();
  loadTop();
  loadCrossings();
  Board.stream({
    open: function () { loadTop(); loadCrossings(); },  // after a reconnect: catch up
    crossing: function (c) { addCrossing(c, true); },
    top: topChanged,
  });
})();
