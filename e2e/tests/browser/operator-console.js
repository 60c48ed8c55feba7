// The operator's read-only console in headless Chromium, against the fake API server of
// operator/tests/operator/console.rs: what a person checks before and after a switch.
"use strict";
const { env, check, launch } = require("./common");

(async () => {
  const browser = await launch();
  const page = await browser.newPage({ viewport: { width: 1300, height: 1000 } });
  const problems = [];
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("console", (m) => { if (m.type() === "error") problems.push(`console error: ${m.text()}`); });
  page.on("dialog", (d) => { problems.push(`a dialog opened: ${d.message()}`); d.dismiss(); });
  page.setDefaultTimeout(20000);
  // The caches fill from the fake's lists shortly after the operator starts.
  const deadline = Date.now() + 20000;
  for (;;) {
    await page.goto(env("CONSOLE_URL"));
    if (await page.locator("#vc-search-products-2026-11-25").count()) break;
    check(Date.now() < deadline, "the collections never showed: " + (await page.textContent("body")));
    await page.waitForTimeout(300);
  }
  const text = (selector) => page.locator(selector).first().textContent();

  const ready = "#vc-search-products-2026-11-25";
  check((await text(`${ready} .phase`)) === "Ready", "the Ready collection's phase");
  check((await text(`${ready} .replicas`)) === "2 of 2", "replicas ready of wanted (min 2)");
  check((await text(`${ready} .vectors`)) === "50000", "vectors");
  check((await text(`${ready} .writer`)).includes("sealed: 50000 rows"), "the writer's progress");
  const recall = `${ready} tr[data-gate="recall@10"] td`;
  check((await page.locator(recall).nth(1).textContent()) === "0.9620", "recall measured");
  check((await page.locator(recall).nth(2).textContent()) === ">= 0.9500", "recall threshold");
  check((await page.locator(recall).nth(3).textContent()) === "0.0120", "recall margin");
  check((await page.locator(recall).nth(4).textContent()) === "yes", "recall passed");

  // The phase timeline, newest first, from the phase Events.
  const phases = await page.locator(`${ready} table.timeline tbody tr td:nth-child(2)`).allTextContents();
  const order = ["Ready", "Verifying", "Importing"].map((p) => phases.indexOf(p));
  check(order.every((i) => i >= 0) && order[0] < order[1] && order[1] < order[2], "the phase timeline: " + phases.join(", "));

  const failed = "#vc-search-products-2026-11-26";
  check((await text(`${failed} .phase`)) === "Failed", "the failed collection's phase");
  check((await page.locator(`${failed} tr[data-gate="count"] td.fail`).count()) === 1, "the failed count gate");
  check((await page.locator(`${failed} tr[data-gate="count"] td`).nth(3).textContent()) === "-1", "off by one");
  const timeline = await text(`${failed} table.timeline`);
  check(timeline.includes("Retry") && timeline.includes("retry 1767225600 acted on"), "its Event in the timeline: " + timeline);
  check(timeline.includes("Ready False"), "its condition's transition in the timeline");
  // Markup from the cluster is shown as text, never run.
  check((await text(`${failed} .message`)).includes("<script>alert(1)</script>"), "the message as text");
  check((await page.locator("script").count()) === 0, "no script element on the page");

  const alias = "#ca-search-products";
  check((await text(`${alias} .current`)) === "products-2026-11-25", "the alias's current target");
  check((await text(`${alias} .previous`)) === "products-2026-11-24", "its previous target");
  check((await page.locator(`${alias} .history li`).count()) === 2, "its history");
  // 03:00 Berlin (02:00 UTC in winter) after the tick last handled.
  check((await text(`${alias} .next-rebuild`)) === "2026-12-03 02:00:00Z", "next rebuild: " + (await text(`${alias} .next-rebuild`)));
  check((await text(`${alias} table.timeline`)).includes("Flipped"), "the flip Event");

  await page.screenshot({ path: env("SCREENSHOT"), fullPage: true });
  await browser.close();
  check(problems.length === 0, problems.join("; "));
  console.log("ok");
})().catch((e) => {
  console.error(e.stack || String(e));
  process.exit(1);
});
