"use strict";
// Shared by the board's pages: DOM helpers, the API, the live stream, the search box.
// Plain browser JavaScript: no build step, no library.
var Board = (function () {
  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (key) {
      if (key === "text") node.textContent = attrs[key];
      else if (key === "className") node.className = attrs[key];
      else node.setAttribute(key, attrs[key]);
    });
    (children || []).forEach(function (child) {
      node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    });
    return node;
  }

  function score(value) {
    return typeof value === "number" ? value.toFixed(1) : "–";
  }

  function when(text) {
    if (!text) return "";
    var date = new Date(text);
    if (isNaN(date.getTime())) return text;
    return date.toLocaleString();
  }

  function contactLink(id) {
    return el("a", { href: "/contact/" + encodeURIComponent(id), className: "contact-link", text: id });
  }

  function toLogin() {
    var next = window.location.pathname + window.location.search;
    window.location.assign("/login?next=" + encodeURIComponent(next));
  }

  function api(path) {
    return fetch(path, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (resp) {
        if (resp.status === 401) {
          toLogin();
          throw new Error("not signed in");
        }
        return resp.json();
      });
  }

  // One EventSource per page; it reconnects by itself (the server says retry: 2000).
  function stream(handlers) {
    var live = document.getElementById("live");
    var source = new EventSource("/api/stream");
    source.onopen = function () {
      live.textContent = "live";
      live.className = "live on";
      if (handlers.open) handlers.open();
    };
    source.onerror = function () {
      live.textContent = "reconnecting…";
      live.className = "live off";
    };
    Object.keys(handlers).forEach(function (name) {
      if (name === "open") return;
      source.addEventListener(name, function (event) {
        handlers[name](event.data ? JSON.parse(event.data) : {});
      });
    });
    return source;
  }

  function crossingItem(c) {
    var up = c.direction === "up";
    var tops = (c.top_contributors || []).map(function (t) {
      return t.rule_id + " " + (t.points >= 0 ? "+" : "") + score(t.points);
    }).join(", ");
    var item = el("li", { className: "crossing " + (up ? "up" : "down"), "data-crossing-id": c.crossing_id || "" }, [
      el("span", { className: "arrow", text: up ? "▲" : "▼" }),
      contactLink(c.contact_id),
      c.anonymous ? el("span", { className: "tag", text: "anonymous" }) : "",
      el("span", { className: "where", text: c.model + " / " + c.threshold }),
      el("span", { className: "scores", text: score(c.previous_score) + " → " + score(c.score) }),
      el("time", { text: when(c.occurred_at) }),
    ]);
    if (tops) item.appendChild(el("span", { className: "why", text: tops }));
    return item;
  }

  function search() {
    var form = document.getElementById("search");
    var input = document.getElementById("search-input");
    var list = document.getElementById("search-matches");
    var pending = null;
    input.addEventListener("input", function () {
      clearTimeout(pending);
      pending = setTimeout(function () {
        var q = input.value.trim();
        if (!q) return;
        api("/api/search?q=" + encodeURIComponent(q)).then(function (doc) {
          list.replaceChildren.apply(list, doc.matches.map(function (m) { return el("option", { value: m }); }));
        }).catch(function () {});
      }, 150);
    });
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var q = input.value.trim();
      if (q) window.location.assign("/contact/" + encodeURIComponent(q));
    });
  }

  return { el: el, score: score, when: when, contactLink: contactLink, api: api, stream: stream,
           crossingItem: crossingItem, search: search };
})();
