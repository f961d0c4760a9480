// Reads a newman JSON report and fails unless every assertion passed.
//
// One exception, by decision: "Articles by Tag" asserts the tags come back
// sorted (dragons, training) after the same collection created them as
// ["training", "dragons"]. Conduit keeps tags in the order the author gave
// them, as RealWorld clients display them (upstream: gothinkster/realworld
// issue #839 reports this assertion as a bug). Only those two assertions,
// in only that request, may fail; they are printed every run.
const fs = require("fs");
const report = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const known = new Set(["The first tag is dragons", "The second tag is training"]);
const failures = report.run.failures || [];
let unexpected = 0;
for (const f of failures) {
  const request = f.source && f.source.name;
  const assertion = f.error && f.error.test;
  const accepted = request === "Articles by Tag" && known.has(assertion);
  console.log(`${accepted ? "known (tag order kept as given)" : "FAILED"}: ${request} / ${assertion}`);
  if (!accepted) unexpected += 1;
}
const stats = report.run.stats;
const total = stats.assertions.total;
const failed = stats.assertions.failed;
const known_failed = failed - unexpected;
console.log(`postman: ${stats.requests.total} requests, ${total} assertions`);
if (stats.requests.total === 0 || total === 0) {
  console.log("postman: nothing ran");
  process.exit(1);
}
console.log(`postman: ${total - failed} passed, ${unexpected} failed, ${known_failed} skipped`);
process.exit(unexpected === 0 ? 0 : 1);
