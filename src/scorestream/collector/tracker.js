/* scorestream tracker: served by `scorestream collect` as /tracker.js?key=WRITE_KEY.
 *
 * Page views (single-page navigation included), form submits (identify when the site's
 * e-mail field is filled), scorestream.track(type, properties), identify, consent.
 * Events wait in a bounded queue in localStorage; batches go out with fetch, are retried
 * with exponential back-off (and the collector's Retry-After) until the collector has
 * them in Kafka; when the page is hidden what is left goes with navigator.sendBeacon.
 * On a site that requires consent nothing is stored or sent before consent(true).
 * No dependencies. The collector puts the site's settings where CONFIG is below.
 */
(function (w, d, C) {
  "use strict";
  var api = w.scorestream || {};
  if (api.loaded) return;
  var P = "_ss_", MAXQ = 200, BATCH = 20, WAIT = 1000, MAXWAIT = 60000, BEACON = 60000;
  var script = d.currentScript;
  var base = C.endpoint || (script && script.src ? new URL(script.src).origin : "");
  var url = base + "/v1/events?key=" + encodeURIComponent(C.key);
  var nav = w.navigator, loc = w.location, hist = w.history;

  function get(k) { try { return w.localStorage.getItem(P + k); } catch (e) { return null; } }
  function set(k, v) { try { w.localStorage.setItem(P + k, v); } catch (e) { /* full or blocked */ } }
  function del(k) { try { w.localStorage.removeItem(P + k); } catch (e) { /* blocked */ } }
  function cookie(v, age) {
    d.cookie = P + "aid=" + v + "; path=/; max-age=" + age + "; SameSite=Lax" +
      (loc.protocol === "https:" ? "; Secure" : "");
  }
  function hex(n) {
    var b = new Uint8Array(n), s = "";
    w.crypto.getRandomValues(b);
    for (var i = 0; i < n; i++) s += (b[i] + 256).toString(16).slice(1);
    return s;
  }
  function load() { try { return JSON.parse(get("q") || "[]"); } catch (e) { return []; } }

  // Consent: required sites wait for consent(true); anywhere, consent(false) opts out.
  var consented = C.consent ? get("consent") === "1" : get("consent") !== "0";
  var queue = consented ? load() : [];
  var early = [];          // before consent: in memory only
  var flying = null;       // event ids of the batch on its way
  var delay = 0, notBefore = 0, timer = 0, lastPath = null, lastUrl = d.referrer;
  var aid = null, cid = consented ? get("cid") : null;

  function anonymousId() {
    if (!aid) {
      var m = d.cookie.match(new RegExp("(?:^|; )" + P + "aid=([0-9a-f-]{8,64})"));
      aid = (m && m[1]) || get("aid") || "a-" + hex(16);
      cookie(aid, 63072000);  // first-party cookie, two years
      set("aid", aid);
    }
    return aid;
  }

  function save() {
    if (queue.length > MAXQ) queue.splice(0, queue.length - MAXQ);  // the oldest go first
    set("q", JSON.stringify(queue));
  }

  function stamp(ev) {
    ev.anonymous_id = anonymousId();
    if (cid && !ev.contact_id) ev.contact_id = cid;
    return ev;
  }

  function push(type, props, contact) {
    var ev = { event_id: hex(16), type: type, occurred_at: new Date().toISOString() };
    if (props) ev.properties = props;
    if (contact) ev.contact_id = contact;
    if (!consented) {
      if (early.length < MAXQ) early.push(ev);
      return;
    }
    queue.push(stamp(ev));
    save();
    schedule(queue.length >= BATCH ? 0 : WAIT);
  }

  function schedule(ms) {
    if (timer) return;
    timer = w.setTimeout(function () { timer = 0; flush(); }, Math.max(ms, notBefore - Date.now(), 0));
  }

  function body(events) {
    var now = new Date().toISOString();
    return JSON.stringify(events.map(function (e) {
      var o = {}, k;
      for (k in e) o[k] = e[k];
      o.sent_at = now;  // lets the collector correct this browser's clock
      return o;
    }));
  }

  function drop(ids) {
    queue = queue.filter(function (e) { return !ids[e.event_id]; });
    save();
  }

  function flush(urgent) {
    if (flying || !queue.length || !consented) return;
    if (!urgent && Date.now() < notBefore) return schedule(0);
    var batch = queue.slice(0, BATCH), text = body(batch);
    flying = {};
    batch.forEach(function (e) { flying[e.event_id] = 1; });
    w.fetch(url, {
      method: "POST", body: text, credentials: "omit", keepalive: text.length < BEACON,
      headers: { "Content-Type": "text/plain" }  // no CORS preflight
    }).then(function (r) {
      return r.json().then(null, function () { return null; }).then(function (j) {
        done(batch, r.status, j, r.headers.get("Retry-After"));
      });
    }, function () { done(batch, 0, null, null); });
  }

  function done(batch, status, answer, retryAfter) {
    var gone = {};
    flying = null;
    if (status === 503 && answer && answer.results) {
      answer.results.forEach(function (r) {
        if (r.status !== "retry" && batch[r.index]) gone[batch[r.index].event_id] = 1;
      });
    }
    if (status && status < 500 && status !== 429 && status !== 408) {
      // Taken (200), or refused for good (400 invalid, 401/403 key, 413): never resend.
      batch.forEach(function (e) { gone[e.event_id] = 1; });
      if (status !== 200 && w.console) w.console.warn("scorestream: collector answered " + status, answer);
      delay = 0;
      notBefore = 0;
    } else {
      delay = Math.min(delay ? delay * 2 : WAIT, MAXWAIT);
      var hint = (parseFloat(retryAfter) || 0) * 1000;
      notBefore = Date.now() + Math.max(hint, delay * (0.5 + Math.random() / 2));
    }
    drop(gone);
    if (queue.length) schedule(0);
  }

  function beacon() {
    if (!consented || !queue.length) return;
    if (!nav.sendBeacon) return flush(true);
    var rest = queue.filter(function (e) { return !(flying && flying[e.event_id]); });
    while (rest.length) {
      var n = Math.min(rest.length, BATCH * 5), text = body(rest.slice(0, n));
      while (n > 1 && text.length > BEACON) text = body(rest.slice(0, (n = n >> 1)));
      var sent = rest.slice(0, n), ids = {};
      if (!nav.sendBeacon(url, text)) break;  // the browser refused: the next page retries
      sent.forEach(function (e) { ids[e.event_id] = 1; });
      drop(ids);
      rest = rest.slice(n);
    }
  }

  function utm(props) {
    var q = new URLSearchParams(loc.search);
    ["utm_source", "utm_medium", "utm_campaign"].forEach(function (k) {
      if (q.get(k)) props[k] = q.get(k);
    });
    return props;
  }

  function page() {
    if (loc.pathname === lastPath) return;
    lastPath = loc.pathname;
    var props = { url: loc.pathname, title: d.title, host: loc.host };
    if (lastUrl) props.referrer = lastUrl;
    lastUrl = loc.href;
    push("page_view", utm(props));
  }

  var SKIP = /pass|card|cvv|cvc|iban|ssn|secret|token/i;
  function onSubmit(e) {
    var form = e.target;
    if (!form || form.tagName !== "FORM" || form.hasAttribute("data-scorestream-ignore")) return;
    var fields = {}, email = null;
    for (var i = 0; i < form.elements.length; i++) {
      var el = form.elements[i], t = (el.type || "").toLowerCase();
      if (!el.name || SKIP.test(el.name) || /^(password|hidden|file|submit|button|reset|image)$/.test(t)) continue;
      if ((t === "checkbox" || t === "radio") && !el.checked) continue;
      fields[el.name] = String(el.value).slice(0, 200);
      if (C.emailField && el.name === C.emailField && /.@./.test(el.value)) email = el.value.trim().toLowerCase();
    }
    if (email) identify(email);
    push("form_submit", {
      form_id: form.id || form.getAttribute("name") || form.getAttribute("action") || "form",
      fields: fields, url: loc.pathname
    });
    flush(true);  // the page is probably leaving; what does not make it goes by beacon
  }

  function identify(contact, attributes) {
    if (!contact) return;
    cid = String(contact);
    if (consented) set("cid", cid);
    push("identify", null, cid);
    if (attributes) push("profile_update", { attributes: attributes }, cid);
  }

  function consent(granted) {
    if (granted) {
      consented = true;
      set("consent", "1");
      if (cid) set("cid", cid);
      queue = load().concat(early.map(stamp));
      early = [];
      save();
      schedule(0);
    } else {
      consented = false;
      queue = [];
      early = [];
      aid = cid = null;
      ["q", "aid", "cid"].forEach(del);
      set("consent", "0");
      cookie("", 0);
    }
  }

  function wrap(name) {
    var orig = hist[name];
    hist[name] = function () {
      var out = orig.apply(this, arguments);
      w.setTimeout(page, 0);  // after the app has updated the title
      return out;
    };
  }
  wrap("pushState");
  wrap("replaceState");
  w.addEventListener("popstate", page);
  d.addEventListener("submit", onSubmit, true);
  d.addEventListener("visibilitychange", function () { if (d.visibilityState === "hidden") beacon(); });
  w.addEventListener("pagehide", beacon);

  var calls = api.q || [];
  api = w.scorestream = {
    loaded: true,
    track: function (type, properties) { push(String(type), properties || {}); },
    identify: identify,
    consent: consent,
    page: function () { lastPath = null; page(); },
    flush: function () { flush(true); },
    anonymousId: function () { return consented ? anonymousId() : null; },
    queued: function () { return queue.length + early.length; }
  };
  page();
  calls.forEach(function (c) { if (api[c[0]]) api[c[0]].apply(api, c[1]); });
  if (queue.length) schedule(0);
})(window, document, /*SCORESTREAM_CONFIG*/{});
