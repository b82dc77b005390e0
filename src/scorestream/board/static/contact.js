"use strict";
// One contact: scores, a chart of the score history the board has seen, the rules behind
// the points (from a worker's GET /contacts/{id}), attributes, crossings and the ledger.
(function () {
  var el = Board.el;
  var SVG = "http://www.w3.org/2000/svg";
  var COLORS = ["#1f6feb", "#d9480f", "#2b8a3e", "#862e9c", "#e67700", "#0b7285"];
  var id = decodeURIComponent(window.location.pathname.replace(/^\/contact\//, ""));

  function svg(tag, attrs, text) {
    var node = document.createElementNS(SVG, tag);
    Object.keys(attrs).forEach(function (key) { node.setAttribute(key, attrs[key]); });
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // Points per model: what the board saw, then the score now as the worker reports it.
  function series(doc) {
    var byModel = {};
    doc.history.forEach(function (p) {
      (byModel[p.model] = byModel[p.model] || []).push(p);
    });
    var contact = doc.contact;
    if (contact && contact.scores) {
      Object.keys(contact.scores).forEach(function (model) {
        (byModel[model] = byModel[model] || []).push({
          at: contact.at, model: model, score: contact.scores[model], kind: "now",
        });
      });
    }
    Object.keys(byModel).forEach(function (model) {
      byModel[model] = byModel[model]
        .map(function (p) { return Object.assign({ t: new Date(p.at).getTime() }, p); })
        .filter(function (p) { return !isNaN(p.t) && typeof p.score === "number"; })
        .sort(function (a, b) { return a.t - b.t; });
    });
    return byModel;
  }

  function drawChart(doc) {
    var box = document.getElementById("chart");
    var legend = document.getElementById("legend");
    var data = series(doc);
    var models = Object.keys(data).filter(function (m) { return data[m].length; }).sort();
    if (!models.length) {
      box.replaceChildren(el("p", { className: "note", text: "No scores seen for this contact yet." }));
      legend.replaceChildren();
      return;
    }
    var W = 800, H = 260, L = 48, R = 12, T = 12, B = 28;
    var all = [];
    models.forEach(function (m) { all = all.concat(data[m]); });
    var t0 = Math.min.apply(null, all.map(function (p) { return p.t; }));
    var t1 = Math.max.apply(null, all.map(function (p) { return p.t; }));
    if (t1 === t0) { t0 -= 60000; t1 += 60000; }
    var lo = Math.min(0, Math.min.apply(null, all.map(function (p) { return p.score; })));
    var hi = Math.max.apply(null, all.map(function (p) { return p.score; }));
    if (hi <= lo) hi = lo + 1;
    hi = hi * 1.08;
    function x(t) { return L + (t - t0) / (t1 - t0) * (W - L - R); }
    function y(s) { return T + (hi - s) / (hi - lo) * (H - T - B); }
    var chart = svg("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": "Score history of " + id, class: "history" });
    [lo, (lo + hi) / 2, hi].forEach(function (s) {
      chart.appendChild(svg("line", { x1: L, x2: W - R, y1: y(s), y2: y(s), class: "gridline" }));
      chart.appendChild(svg("text", { x: L - 6, y: y(s) + 4, class: "axis", "text-anchor": "end" }, s.toFixed(0)));
    });
    chart.appendChild(svg("text", { x: L, y: H - 8, class: "axis" }, new Date(t0).toLocaleString()));
    chart.appendChild(svg("text", { x: W - R, y: H - 8, class: "axis", "text-anchor": "end" }, new Date(t1).toLocaleString()));
    legend.replaceChildren();
    models.forEach(function (model, i) {
      var color = COLORS[i % COLORS.length];
      var pts = data[model];
      // Steps: a score changes at events and holds until the next point seen.
      var coords = [];
      pts.forEach(function (p, j) {
        if (j > 0) coords.push(x(p.t).toFixed(1) + "," + y(pts[j - 1].score).toFixed(1));
        coords.push(x(p.t).toFixed(1) + "," + y(p.score).toFixed(1));
      });
      if (coords.length === 1) coords.push((W - R) + "," + y(pts[0].score).toFixed(1));
      chart.appendChild(svg("polyline", { points: coords.join(" "), fill: "none", stroke: color, "stroke-width": 2, class: "line", "data-model": model }));
      pts.forEach(function (p) {
        if (p.kind !== "up" && p.kind !== "down") return;
        var mark = svg("text", { x: x(p.t), y: y(p.score) + (p.kind === "up" ? -6 : 14), fill: color, "text-anchor": "middle", class: "mark " + p.kind },
          p.kind === "up" ? "▲" : "▼");
        mark.appendChild(svg("title", {}, model + " " + p.kind + " " + (p.threshold || "") + " at " + Board.score(p.score)));
        chart.appendChild(mark);
      });
      var swatch = el("span", { className: "swatch" });
      swatch.style.background = color;
      legend.appendChild(el("span", { className: "legend-item" }, [swatch, model]));
    });
    box.replaceChildren(chart);
  }

  function render(doc) {
    document.title = id + " · scorestream";
    document.getElementById("contact-title").textContent = id;
    var error = document.getElementById("contact-error");
    var contact = doc.contact;
    if (contact && contact.alias_of) {
      window.location.replace("/contact/" + encodeURIComponent(contact.alias_of));
      return;
    }
    error.hidden = !doc.error;
    error.textContent = doc.error ? "The worker says: " + doc.error : "";
    var scores = document.getElementById("scores");
    var rules = document.getElementById("rules");
    if (contact) {
      scores.replaceChildren.apply(scores, Object.keys(contact.scores).sort().map(function (m) {
        return el("div", { className: "score-card", "data-model": m }, [
          el("div", { className: "model", text: m }),
          el("div", { className: "big", text: Board.score(contact.scores[m]) }),
          contact.tiers[m] ? el("span", { className: "tier", text: contact.tiers[m] }) : el("span", { className: "note", text: "no tier" }),
        ]);
      }));
      rules.replaceChildren.apply(rules, Object.keys(contact.models).sort().map(function (m) {
        var list = contact.models[m].rules;
        return el("table", { className: "grid", "data-model": m }, [
          el("caption", { text: m + " — " + Board.score(contact.models[m].score) }),
          el("tbody", {}, list.length ? list.map(function (r) {
            return el("tr", {}, [
              el("td", { text: r.rule_id }),
              el("td", { className: "note", text: r.kind }),
              el("td", { className: "num", text: (r.points >= 0 ? "+" : "") + Board.score(r.points) }),
            ]);
          }) : [el("tr", {}, [el("td", { className: "note", text: "no points" })])]),
        ]);
      }));
      var attrs = document.querySelector("#attributes tbody");
      var keys = Object.keys(contact.attributes || {}).sort();
      attrs.replaceChildren.apply(attrs, keys.length ? keys.map(function (k) {
        var v = contact.attributes[k];
        return el("tr", {}, [el("th", { text: k }), el("td", { text: typeof v === "object" ? JSON.stringify(v) : String(v) })]);
      }) : [el("tr", {}, [el("td", { className: "note", text: "none" })])]);
      var ledger = document.querySelector("#ledger tbody");
      ledger.replaceChildren.apply(ledger, (contact.ledger || []).slice().reverse().map(function (e) {
        return el("tr", {}, [
          el("td", { text: Board.when(e.at) }), el("td", { text: e.model }), el("td", { text: e.rule_id }),
          el("td", { className: "num", text: (e.points >= 0 ? "+" : "") + Board.score(e.points) }),
        ]);
      }));
    }
    var list = document.getElementById("contact-crossings");
    list.replaceChildren.apply(list, doc.crossings.map(Board.crossingItem));
    drawChart(doc);
    document.body.setAttribute("data-loaded", "1");
  }

  function load() {
    return Board.api("/api/contacts/" + encodeURIComponent(id)).then(render).catch(function () {});
  }

  Board.search();
  load();
  Board.stream({
    crossing: function (c) { if (c.contact_id === id) load(); },
  });
})();
