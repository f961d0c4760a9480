// Reads a newman JSON report and fails unless every assertion passed, with
// one documented waiver.
//
// The waiver: "Articles by Tag" asserts that the tags come back sorted
// (dragons, training) although the same collection created the article with
// ["training", "dragons"]. Conduit keeps tags in the order the author gave
// them, as the issue requires and RealWorld clients display them (upstream,
// gothinkster/realworld issue #839 reports this assertion as a bug). Those two
// assertions of that request are waived only when the response shows exactly
// the given order; every waived failure is printed on every run.
const fs = require("fs");
const report = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const waivable = new Set(["The first tag is dragons", "The second tag is training"]);
const givenOrder = JSON.stringify(["training", "dragons"]);

function tagsInGivenOrder(execution) {
  try {
    const text = Buffer.from(execution.response.stream.data).toString("utf8");
    const first = JSON.parse(text).articles[0];
    return JSON.stringify(first.tagList) === givenOrder;
  } catch (e) {
    return false;
  }
}

let unexpected = 0;
let waived = 0;
for (const execution of report.run.executions || []) {
  const request = execution.item && execution.item.name;
  for (const assertion of execution.assertions || []) {
    if (!assertion.error) continue;
    const ok = request === "Articles by Tag" && waivable.has(assertion.assertion) && tagsInGivenOrder(execution);
    console.log(`${ok ? "waived (tags kept in the given order)" : "FAILED"}: ${request} / ${assertion.assertion}`);
    if (ok) waived += 1;
    else unexpected += 1;
  }
}
const stats = report.run.stats;
const total = stats.assertions.total;
if (stats.requests.total === 0 || total === 0 || stats.requests.failed > 0) {
  console.log(`postman: ${stats.requests.total} requests, ${stats.requests.failed} failed to run`);
  process.exit(1);
}
console.log(`postman: ${stats.requests.total} requests, ${total} assertions, ${waived} waived`);
console.log(`postman: ${total - unexpected - waived} passed, ${unexpected} failed`);
process.exit(unexpected === 0 && unexpected + waived === stats.assertions.failed ? 0 : 1);
