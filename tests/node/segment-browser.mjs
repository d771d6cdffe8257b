// Drives analytics.js 2.0 (@segment/analytics-next, its own browser bundle, unchanged) in
// headless Chromium (Debian's, through playwright-core) against the local collector. Two
// visitors browse the same three pages at the same event times:
//   - "late":  two anonymous pages, then identify (cfo@<late_domain>, CFO), then a page;
//   - "early": identify (cfo@<early_domain>, CFO) first, then the three pages.
// The page is served from a local server of its own (another origin than the collector: the
// browser sends CORS preflights). Prints {"late": anonymousId, "early": anonymousId, "times": [...]}.
//
//   node segment-browser.mjs <collector_host:port> <write_key> <late_domain> <early_domain> [screenshot.png]
import http from "node:http";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { execFileSync } from "node:child_process";
import { chromium } from "playwright-core";

const [collector, writeKey, lateDomain, earlyDomain, screenshot] = process.argv.slice(2);
const here = path.dirname(fileURLToPath(import.meta.url));
const bundles = path.join(here, "node_modules/@segment/analytics-next/dist/umd");

const page = `<!doctype html><html><head><title>Vendor pricing</title>
<script src="/analytics-next/bundles/index.js"></script></head>
<body><h1>Pricing</h1><p id="status">loading</p></body></html>`;
const server = http.createServer((request, response) => {
  const url = new URL(request.url, "http://localhost");
  if (url.pathname.startsWith("/analytics-next/bundles/")) {
    const file = path.join(bundles, path.basename(url.pathname));
    if (fs.existsSync(file)) {
      response.writeHead(200, { "content-type": "application/javascript" });
      return response.end(fs.readFileSync(file));
    }
    response.writeHead(404);
    return response.end();
  }
  response.writeHead(200, { "content-type": "text/html" });
  response.end(page);
});
await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
const origin = `http://127.0.0.1:${server.address().port}`;

const executablePath = process.env.CHROMIUM ?? execFileSync("sh", ["-c", "command -v chromium"]).toString().trim();
const browser = await chromium.launch({
  executablePath,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const hour = 3600 * 1000;
const base = Date.now() - 3 * hour;
const times = [base, base + hour, base + 2 * hour];

async function session(identifyFirst, domain) {
  // A desktop browser's user agent: HeadlessChrome is (rightly) a bot to the collector.
  const context = await browser.newContext({
    userAgent: "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36",
  });
  const tab = await context.newPage();
  const failures = [];
  tab.on("requestfailed", (request) => failures.push(`${request.method()} ${request.url()}: ${request.failure()?.errorText}`));
  tab.on("response", (response) => {
    if (response.url().includes(collector) && response.status() >= 300 && response.request().method() !== "OPTIONS") {
      failures.push(`${response.url()} answered ${response.status()}`);
    }
  });
  await tab.goto(origin + "/pricing");
  const anonymousId = await tab.evaluate(
    async ({ writeKey, collector, origin, identifyFirst, domain, times }) => {
      const { AnalyticsBrowser } = window.AnalyticsNext;
      const [analytics] = await AnalyticsBrowser.load(
        {
          writeKey,
          cdnURL: origin,
          cdnSettings: { integrations: { "Segment.io": { apiKey: writeKey, apiHost: `${collector}/v1`, protocol: "http" } } },
        },
        { integrations: { "Segment.io": { apiHost: `${collector}/v1`, protocol: "http" } } },
      );
      const pageAt = (at, i) =>
        analytics.page("Pricing", { url: `https://vendor.example/pricing?visit=${i}`, title: "Pricing" }, { timestamp: new Date(at) });
      const identify = () => analytics.identify(`user-${domain}`, { email: `cfo@${domain}`, title: "CFO" });
      if (identifyFirst) {
        await identify();
        for (const [i, at] of times.entries()) await pageAt(at, i);
      } else {
        await pageAt(times[0], 0);
        await pageAt(times[1], 1);
        await identify();
        await pageAt(times[2], 2);
      }
      document.getElementById("status").textContent = "sent";
      return analytics.user().anonymousId();
    },
    { writeKey, collector: collector, origin, identifyFirst, domain, times },
  );
  await tab.waitForLoadState("networkidle");
  if (screenshot && !identifyFirst) await tab.screenshot({ path: screenshot });
  await context.close();
  if (failures.length) throw new Error(failures.join("\n"));
  return anonymousId;
}

let exitCode = 0;
try {
  const late = await session(false, lateDomain);
  const early = await session(true, earlyDomain);
  console.log(JSON.stringify({ late, early, times }));
} catch (error) {
  console.error(`analytics.js in Chromium: ${error?.stack ?? error}`);
  exitCode = 1;
} finally {
  await browser.close();
  server.close();
}
process.exit(exitCode);
