// Sends a small session with the real server-side client libraries, unchanged, to the local
// collector: Segment's @segment/analytics-node (POST /v1/batch, Basic auth) and RudderStack's
// @rudderstack/rudder-sdk-node (gzip, form-urlencoded Content-Type). Each identifies a user of
// its account, visits the pricing page and requests a demo. Exits 1 on any client error.
//
//   node segment-server-clients.mjs <collector_url> <write_key> <segment_domain> <rudder_domain>
import { Analytics } from "@segment/analytics-node";
import RudderAnalytics from "@rudderstack/rudder-sdk-node";

const [collector, writeKey, segmentDomain, rudderDomain] = process.argv.slice(2);
const errors = [];
const now = Date.now();

// Segment: messageIds given, so the test can find the events by id.
const segment = new Analytics({ writeKey, host: collector, flushAt: 10, maxRetries: 1 });
segment.on("error", (error) => errors.push(`analytics-node: ${error?.reason ?? error}`));
const user = `seg-user-${now}`;
segment.identify({ userId: user, messageId: `seg-identify-${now}`, traits: { email: `cfo@${segmentDomain}`, title: "CFO" } });
segment.page({ userId: user, messageId: `seg-page-${now}`, name: "Pricing", properties: { url: "https://vendor.example/pricing" } });
segment.track({ userId: user, messageId: `seg-demo-${now}`, event: "Demo Requested", properties: { form: "contact-sales" } });
segment.track({ userId: user, messageId: `seg-other-${now}`, event: "Button Clicked" });
await segment.closeAndFlush({ timeout: 20000 });

// RudderStack: the same session for another account.
const rudder = new RudderAnalytics(writeKey, { dataPlaneUrl: collector, flushAt: 10, flushInterval: 200, retryCount: 0, logLevel: "error" });
const rudderUser = `rs-user-${now}`;
const sent = (what) => (error) => { if (error) errors.push(`rudder-sdk-node ${what}: ${error}`); };
rudder.identify({ userId: rudderUser, messageId: `rs-identify-${now}`, traits: { email: `vp@${rudderDomain}`, title: "VP Sales" } }, sent("identify"));
rudder.page({ userId: rudderUser, messageId: `rs-page-${now}`, name: "Pricing", properties: { url: "https://vendor.example/pricing" } }, sent("page"));
rudder.track({ userId: rudderUser, messageId: `rs-demo-${now}`, event: "Demo Requested", properties: { form: "contact-sales" } }, sent("track"));
await rudder.flush();

if (errors.length) {
  console.error(errors.join("\n"));
  process.exit(1);
}
console.log(JSON.stringify({
  segment: { user, events: [`seg-page-${now}`, `seg-demo-${now}`] },
  rudder: { user: rudderUser, events: [`rs-page-${now}`, `rs-demo-${now}`] },
}));
