// Load a GGUF in llama.cpp (the prebuilt CPU build of node-llama-cpp), feed
// it token ids and decode greedily; prints one JSON line:
//   {"ok":true,"n_vocab":...,"tokens":[...],"ms_load":...,"ms_eval":...}
// usage: node check_gguf.mjs MODEL.gguf IDS(comma-separated) N_NEW [THREADS]
// Several prompts may be given separated by ';' (the model is loaded once,
// each prompt decoded in a fresh context): "tokens" holds the first prompt's
// tokens and "all" one list per prompt.
// KV cache type and flash attention follow llama.cpp's defaults (F16, auto)
// unless TIDE_LLAMA_KV (e.g. F32, Q8_0) / TIDE_LLAMA_FA (0 or 1) say otherwise.
// node-llama-cpp is looked up in $TIDE_NODE_LLAMA_DIR/node_modules, then next
// to this script (tests/node-llama/node_modules).
import path from "node:path";
import fs from "node:fs";
import { fileURLToPath, pathToFileURL } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const dirs = [process.env.TIDE_NODE_LLAMA_DIR, here].filter(Boolean);
let entry = null;
for (const d of dirs) {
  const p = path.join(d, "node_modules", "node-llama-cpp", "dist", "index.js");
  if (fs.existsSync(p)) { entry = p; break; }
}
if (!entry) {
  console.log(JSON.stringify({ ok: false, skip: true, error: "node-llama-cpp not installed" }));
  process.exit(0);
}
const [modelPath, idsArg, nNewArg, threadsArg] = process.argv.slice(2);
const prompts = (idsArg || "").split(";").map((p) => p.split(",").filter((s) => s.length > 0).map(Number));
const nNew = Number(nNewArg || 8);
try {
  const { getLlama, LlamaLogLevel } = await import(pathToFileURL(entry).href);
  const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
  let t0 = Date.now();
  const model = await llama.loadModel({ modelPath });
  const msLoad = Date.now() - t0;
  const all = [];
  t0 = Date.now();
  for (const ids of prompts) {
    const copts = { contextSize: Math.max(64, ids.length + nNew + 8), threads: Number(threadsArg || 1) };
    if (process.env.TIDE_LLAMA_KV) {
      copts.experimentalKvCacheKeyType = process.env.TIDE_LLAMA_KV;
      copts.experimentalKvCacheValueType = process.env.TIDE_LLAMA_KV;
    }
    if (process.env.TIDE_LLAMA_FA) copts.flashAttention = process.env.TIDE_LLAMA_FA === "1";
    const ctx = await model.createContext(copts);
    const seq = ctx.getSequence();
    const out = [];
    if (nNew > 0) {
      for await (const tok of seq.evaluate(ids, { temperature: 0 })) {
        out.push(tok);
        if (out.length >= nNew) break;
      }
    }
    all.push(out);
    await ctx.dispose();
  }
  const msEval = Date.now() - t0;
  console.log(JSON.stringify({ ok: true, n_vocab: model.fileInsights?.vocabularySize ?? null, tokens: all[0] || [], all, ms_load: msLoad, ms_eval: msEval }));
  await model.dispose();
  await llama.dispose();
} catch (e) {
  console.log(JSON.stringify({ ok: false, error: String(e && e.message || e) }));
  process.exit(1);
}
