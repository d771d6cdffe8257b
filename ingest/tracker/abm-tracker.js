/*
 * Minimal ABM browser tracker: posts engagement events to ingest's POST /v1/events.
 *
 *   <script>
 *     window.abmConfig = {
 *       endpoint: "https://collect.example.com",   // ingest's HTTP port
 *       writeKey: "site-public-key",                 // an ingest.browser_keys key (public by nature)
 *       domain: "acme.com",                          // optional: the visitor's company domain, if known
 *       contact: { id: "crm-123", email: "jane@acme.com" } // optional: the identified visitor
 *     };
 *   </script>
 *   <script src="abm-tracker.js" async></script>
 *
 * It sends a web_visit on load and exposes window.abm.track(kind, properties) for the rest,
 * e.g. abm.track("content_download", { asset: "pricing.pdf" }): each kind must be in the
 * browser key's `kinds`, and a browser key never sends account_id or contact.persona (ingest
 * rejects them as not_allowed; accounts are resolved from the email or the domain). Events carry an event_id (so
 * retries are absorbed), occurred_at and sent_at (so ingest corrects the browser's clock), and
 * the user agent (so bots are filtered). It uses navigator.sendBeacon, which survives page
 * unloads and needs no CORS preflight, and falls back to fetch with keepalive.
 */
(function (w, d) {
  "use strict";
  var cfg = w.abmConfig || {};
  if (!cfg.endpoint || !cfg.writeKey) { return; }
  var url = cfg.endpoint.replace(/\/$/, "") + "/v1/events?write_key=" + encodeURIComponent(cfg.writeKey);

  function uuid() {
    if (w.crypto && w.crypto.randomUUID) { return w.crypto.randomUUID(); }
    return Date.now().toString(16) + "-" + Math.random().toString(16).slice(2);
  }

  function track(kind, properties) {
    var now = new Date().toISOString();
    var event = {
      event_id: uuid(),
      kind: kind,
      occurred_at: now,
      sent_at: now,
      user_agent: navigator.userAgent,
      properties: properties || {}
    };
    if (cfg.domain) { event.domain = cfg.domain; }
    if (cfg.contact) { event.contact = cfg.contact; }
    var body = JSON.stringify([event]);
    var blob = new Blob([body], { type: "text/plain" });
    if (!(navigator.sendBeacon && navigator.sendBeacon(url, blob))) {
      fetch(url, { method: "POST", body: body, keepalive: true, mode: "no-cors",
                   headers: { "Content-Type": "text/plain" } });
    }
    return event.event_id;
  }

  w.abm = { track: track };
  track("web_visit", { url: w.location.href, referrer: d.referrer || null, title: d.title || null });
})(window, document);
