// The engine's console in headless Chromium, as a person uses it: the collection table, a
// search, a flip the gate refuses (the alias stays), a flip it passes (the alias moves).
// Run by e2e/tests/local.rs (console_in_a_browser_...), which checks the alias afterwards
// through the CLI too. CommonJS, so NODE_PATH finds playwright-core.
"use strict";
const { env, check, launch } = require("./common");

(async () => {
  const url = env("CONSOLE_URL");
  const browser = await launch();
  const page = await browser.newPage({ viewport: { width: 1400, height: 1100 } });
  // A script error or a blocked resource (the Content-Security-Policy) fails the test.
  const problems = [];
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  // The refused flip answers 409 by design; Chromium logs every non-2xx fetch as an error.
  page.on("console", (m) => {
    if (m.type() === "error" && !m.text().includes("status of 409")) problems.push(`console error: ${m.text()}`);
  });
  page.setDefaultTimeout(20000);
  await page.goto(url);

  const v1 = page.locator('#collections tr[data-collection="v1"]');
  await v1.waitFor();
  const count = await v1.locator("td.count").textContent();
  check(count === env("V1_COUNT"), `v1 shows count ${count}, expected ${env("V1_COUNT")}`);
  const servesBefore = await page.locator('#aliases tr[data-alias="products"] td.serves').textContent();
  check(servesBefore === "v1", `products serves ${servesBefore} before any flip`);

  // A search for a stored item's own vector: k hits, the item itself first.
  await page.selectOption("#search-collection", "products");
  await page.fill("#search-k", "5");
  await page.fill("#search-item", "3");
  await page.click("#search-button");
  await page.locator("#search-summary", { hasText: "hits from v1" }).waitFor();
  const hits = await page.locator("#hits tbody tr").count();
  check(hits === 5, `${hits} hits shown, expected 5`);
  const first = await page.locator("#hits tbody tr").first().locator("td").nth(1).textContent();
  check(first === "3", `first hit ${first}, expected the item itself (3)`);

  // A flip whose count gate fails: refused, with the reason, and the alias does not move.
  await page.fill("#flip-alias", "products");
  await page.selectOption("#flip-collection", "v2");
  await page.fill("#flip-count", String(Number(env("V2_COUNT")) - 1));
  await page.click("#flip-button");
  const refused = page.locator("#flip-result.refused");
  await refused.waitFor();
  const reason = await refused.textContent();
  check(reason.includes("refused") && reason.includes("count"), `refusal says why: ${reason}`);
  await page.locator('#gates tr[data-gate="count"] td.fail').waitFor();
  const servesAfterRefusal = await page.locator('#aliases tr[data-alias="products"] td.serves').textContent();
  check(servesAfterRefusal === "v1", `products serves ${servesAfterRefusal} after a refused flip`);

  // The same flip with the right count: every gate passes, the alias moves.
  await page.fill("#flip-count", env("V2_COUNT"));
  await page.click("#flip-button");
  await page.locator("#flip-result.moved").waitFor();
  await page.locator('#aliases tr[data-alias="products"] td.serves', { hasText: "v2" }).waitFor();

  // Live latency from the searches the test sent over gRPC.
  await page.locator("#latency-now", { hasText: "QPS" }).waitFor();
  const latency = await page.locator("#latency-now").textContent();
  check(/p50 \d/.test(latency), `latency shows a p50: ${latency}`);

  await page.screenshot({ path: env("SCREENSHOT"), fullPage: true });
  await browser.close();
  check(problems.length === 0, problems.join("; "));
  console.log(JSON.stringify({ count, hits, reason, latency }));
})().catch((e) => {
  console.error(e.stack || String(e));
  process.exit(1);
});
