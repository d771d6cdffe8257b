// Drives the scorer's console in headless Chromium (Debian's, through playwright-core) against
// a running pipeline. Prints one JSON line when the alerts page is live ({"ready": ...}), then
// waits for a new alert to appear in the feed without a reload, then visits the accounts page
// (filter, search, click through), the account page and the program page, writing a screenshot
// of each into <screenshot_dir>, and prints the summary as the last JSON line. Between the feed
// and the other pages it prints {"alert": id} and waits for a line on its standard input.
//
//   node console-browser.mjs <scorer_base_url> <api_token> <screenshot_dir>
import fs from "node:fs";
import path from "node:path";
import { execFileSync } from "node:child_process";
import readline from "node:readline";
import { chromium } from "playwright-core";

const [base, token, shots] = process.argv.slice(2);
fs.mkdirSync(shots, { recursive: true });
const executablePath = process.env.CHROMIUM ?? execFileSync("sh", ["-c", "command -v chromium"]).toString().trim();
const browser = await chromium.launch({
  executablePath,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const problems = [];
// From the sign-in on (the wrong token tried first is answered 401, as it should be).
let watching = false;
const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
// Nothing may be fetched from another origin (no CDN, no font host).
context.on("request", (request) => {
  if (!request.url().startsWith(base) && !request.url().startsWith("data:")) problems.push(`request to another origin: ${request.url()}`);
});
const tab = await context.newPage();
tab.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
tab.on("console", (message) => {
  if (watching && message.type() === "error" && !message.text().includes("503")) problems.push(`console error: ${message.text()}`);
});
const summary = { problems };
const shot = async (name) => {
  const file = path.join(shots, `${name}.png`);
  await tab.screenshot({ path: file, fullPage: true });
  return file;
};
const wait = { timeout: 60_000 };

try {
  // Signing in: the console sends a browser without the cookie to its sign-in page.
  await tab.goto(`${base}/console/alerts`);
  summary.login_url = tab.url();
  await tab.fill("#token", "not-the-token");
  await tab.click("#sign-in");
  summary.wrong_token = (await tab.textContent("#login-error"))?.trim();
  watching = true;
  await tab.fill("#token", token);
  await Promise.all([tab.waitForURL(/\/console\/accounts/, wait), tab.click("#sign-in")]);

  // The alerts page, live.
  await tab.goto(`${base}/console/alerts`);
  await tab.waitForSelector('#live[data-state="live"]', wait);
  await tab.evaluate(() => { window.stillThisPage = true; });
  summary.initial_alerts = await tab.locator("#alerts li").count();
  console.log(JSON.stringify({ ready: true, initial_alerts: summary.initial_alerts }));

  // A new alert arrives without a reload.
  await tab.waitForSelector("#alerts li.fresh", { timeout: 240_000 });
  summary.same_page = await tab.evaluate(() => window.stillThisPage === true);
  // Read in one step: alerts keep arriving at the top, and separate reads of "the first fresh
  // one" could take the id of one alert and the text of the next.
  summary.fresh_alert = await tab.locator("#alerts li.fresh").first().evaluate((li) => ({
    id: li.getAttribute("data-alert"),
    text: li.textContent.trim(),
    account_href: li.querySelector("a")?.getAttribute("href") ?? null,
  }));
  summary.screenshots = [await shot("alerts")];
  // The test says when the pipeline has settled: the other pages are then compared with the API.
  console.log(JSON.stringify({ alert: summary.fresh_alert.id }));
  const input = readline.createInterface({ input: process.stdin });
  await new Promise((resolve) => input.once("line", resolve));
  input.close();

  // Accounts: every row, then a tier filter, then a search, then a click through.
  await tab.goto(`${base}/console/accounts`);
  await tab.waitForSelector("#accounts tbody tr", wait);
  const rows = async () =>
    tab.$$eval("#accounts tbody tr", (trs) =>
      trs.map((tr) => ({
        id: tr.dataset.account,
        tier: tr.children[2].textContent.trim(),
        score: Number(tr.children[3].textContent),
        trend: tr.children[4].textContent.trim(),
        stage: tr.children[5].textContent.trim(),
        coverage: tr.children[6].textContent.trim(),
        name: tr.children[1].querySelector("a").textContent.trim(),
      })));
  summary.accounts = await rows();
  summary.screenshots.push(await shot("accounts"));
  await tab.selectOption("#stage", "mqa");
  await Promise.all([tab.waitForURL(/stage=mqa/, wait), tab.click("#apply")]);
  summary.mqa = await rows();
  await tab.goto(`${base}/console/accounts`);
  await tab.selectOption("#tier", "1");
  await Promise.all([tab.waitForURL(/tier=1/, wait), tab.click("#apply")]);
  summary.tier_1 = await rows();
  const name = summary.tier_1[0]?.name ?? "";
  summary.search = name.slice(0, Math.max(3, name.length - 2));
  await tab.fill("#q", summary.search);
  await Promise.all([tab.waitForURL(/q=/, wait), tab.click("#apply")]);
  summary.searched = await rows();
  summary.screenshots.push(await shot("accounts-filtered"));
  const first = summary.searched[0] ?? summary.tier_1[0];
  await Promise.all([tab.waitForURL(/\/console\/accounts\/.+/, wait), tab.click(`#accounts tbody tr >> nth=0 >> a`)]);
  await tab.waitForSelector("#summary", wait);
  summary.account = {
    url: tab.url(),
    clicked: first?.id,
    heading: (await tab.textContent("h1")).trim(),
    score: Number(await tab.textContent("#score")),
    rule_bars: await tab.locator("#rules rect").count(),
    contacts: await tab.locator("#contacts tbody tr").count(),
    activity: await tab.locator("#activity li").count(),
    journey: await tab.locator("#journey li").count(),
    committee: (await tab.textContent("#committee p")).trim(),
  };
  summary.screenshots.push(await shot("account"));

  // The program.
  await tab.goto(`${base}/console/program`);
  await tab.waitForSelector("#funnel svg", wait);
  summary.program = {
    funnels: await tab.locator("#funnel figure").count(),
    charts: await tab.locator("svg.chart").count(),
    bars: await tab.locator("svg.chart rect").count(),
    conversion_rows: await tab.locator("#conversion tbody tr").count(),
    velocity_bars: await tab.locator("#velocity rect").count(),
  };
  summary.screenshots.push(await shot("program"));
} catch (error) {
  summary.error = String(error);
  try { summary.screenshots = [...(summary.screenshots ?? []), await shot("failure")]; } catch {}
}
await browser.close();
console.log(JSON.stringify(summary));
