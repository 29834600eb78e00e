-- tide.ab: A/B trials and sweeps on the serving engine.
--
--   local ab = require "tide.ab"
--   local res = ab.trial{ arms = { "a.lua", "b.lua" }, workload = "tiny", repeats = 10, out = "ab-out" }
--   print(res.verdicts[2].tok_s.verdict)
--
-- Arms run the same requests, interleaved A B A B ... after one warm-up run
-- each; every repeat yields one value per metric per arm, and B (C, ...) is
-- compared with A over repeats by tide.ab.stats (paired by repeat).
local R = require "tide.ab.runner"
local W = require "tide.ab.workload"
local S = require "tide.ab.stats"

local M = {}

-- quality(base_path, arm, opts): ppl ratio, KL, top-1 of the arm's model vs a base.
local function quality(q, arm)
  local tide = require "tide"
  local base, e = tide.load(q.base, { mla = arm.recipe.mla })
  if not base then return nil, e end
  local f = io.open(q.file or "tests/data/val.txt", "rb")
  if not f then return nil, "quality: cannot read " .. tostring(q.file) end
  local text = f:read("*a")
  f:close()
  local toks = base.tokenizer:encode(text:sub(1, 100000), { add_special = true })
  local nt = math.min(#toks, q.tokens or 256)
  local t = {}
  for i = 1, nt do t[i] = toks[i] end
  local ok, kld = pcall(require, "tide.cmd.kld")
  if not ok or not kld.compare then return nil, "quality: tide.cmd.kld is not available" end
  return kld.compare(base, arm.model, t, q.ctx or 128)
end

-- trial{ arms = {recipe|file, ...}, workload = table|file|name, repeats = N (5),
--        warmup = N (1), seed, out = folder|nil, quality = {base=, file=, tokens=} | nil,
--        labels = {...}, sweep = {key=, values=} (sweep reports) }
function M.trial(o)
  if type(o) ~= "table" or type(o.arms) ~= "table" or #o.arms < 1 then
    return nil, "ab: arms must be a list of recipes"
  end
  local w, we = W.load(o.workload or "tiny")
  if not w then return nil, we end
  local arms = {}
  for i, a in ipairs(o.arms) do
    local arm, e = R.open(a)
    if not arm then return nil, e end
    arm.label = (o.labels and o.labels[i]) or string.char(64 + i)
    arms[i] = arm
  end
  local reqs = W.requests(w, arms[1].model)
  reqs.closed = w.arrival.closed
  local repeats, warmup = o.repeats or 5, o.warmup or 1
  local function run(arm)
    local x = R.run(arm, reqs)
    if x.error then return nil, "arm " .. tostring(arm.name) .. ": " .. x.error end
    return x
  end
  for _ = 1, warmup do
    for _, arm in ipairs(arms) do
      local ok, e = run(arm)
      if not ok then return nil, e end
    end
  end
  local runs = {}
  for i = 1, #arms do runs[i] = {} end
  for k = 1, repeats do
    -- interleave, alternating the order so neither arm always goes first
    local n = #arms
    for j = 1, n do
      local i = (k % 2 == 1) and j or (n - j + 1)
      local x, e = run(arms[i])
      if not x then return nil, e end
      runs[i][k] = x
    end
  end
  local res = { workload = w, repeats = repeats, warmup = warmup, arms = {}, verdicts = {}, sweep = o.sweep }
  for i, arm in ipairs(arms) do
    local per = {}
    for _, m in ipairs(R.METRICS) do per[m.key] = {} end
    local all_ttft, all_itl, peak, peak_proc = {}, {}, 0, 0
    local comm_bytes, loads, slots = {}, nil, nil
    local function add_rows(acc, rows)
      acc = acc or {}
      for li, row in ipairs(rows) do
        acc[li] = acc[li] or {}
        for e, v in pairs(row) do acc[li][e] = (acc[li][e] or 0) + v end
      end
      return acc
    end
    for k, run in ipairs(runs[i]) do
      comm_bytes[k] = run.comm_bytes
      if run.expert_loads then loads = add_rows(loads, run.expert_loads) end
      if run.slot_loads then slots = add_rows(slots, run.slot_loads) end
      local s = R.summarize(run)
      for _, m in ipairs(R.METRICS) do per[m.key][k] = s[m.key] end
      for _, v in ipairs(run.ttft) do all_ttft[#all_ttft + 1] = v end
      for _, v in ipairs(run.itl) do all_itl[#all_itl + 1] = v end
      if run.peak_rss then peak = math.max(peak, run.peak_rss) end
      peak_proc = math.max(peak_proc, run.peak_rss_process or 0)
    end
    local med = {}
    for _, m in ipairs(R.METRICS) do med[m.key] = S.median(per[m.key]) end
    res.arms[i] = {
      label = arm.label, name = arm.name, recipe = arm.recipe.file or arm.name, per_repeat = per, median = med,
      ttft = all_ttft, itl = all_itl, peak_rss = peak > 0 and peak or nil, peak_rss_process = peak_proc,
      kv_bytes = runs[i][1] and runs[i][1].kv_bytes, kv_bytes_per_token = runs[i][1] and runs[i][1].kv_bytes_per_token,
      errors = runs[i][1] and runs[i][1].errors or 0,
      weights_bytes = arm.recipe.weights_bytes or R.weights_bytes(arm.recipe.model),
      weights_quantized = arm.recipe.weights_bytes ~= nil,
      comm_bytes = #comm_bytes > 0 and S.median(comm_bytes) or nil, comm = runs[i][1] and runs[i][1].comm,
      ranks = arm.ranks or 1, parallel = arm.parallel or false, plan = arm.plan,
      expert_loads = loads, slot_loads = slots,
      out_tokens = runs[i][1] and runs[i][1].out_tokens,
    }
  end
  for i = 2, #arms do
    local v = {}
    for _, m in ipairs(R.METRICS) do
      v[m.key] = S.compare(res.arms[1].per_repeat[m.key], res.arms[i].per_repeat[m.key],
        { higher_is_better = m.higher, seed = (o.seed or 1) + i, better = m.higher and "higher" or "lower",
          worse = m.higher and "lower" or "higher" })
    end
    -- the headline: throughput phrased as faster / slower
    v.headline = S.compare(res.arms[1].per_repeat.tok_s, res.arms[i].per_repeat.tok_s,
      { higher_is_better = true, seed = (o.seed or 1) + i })
    res.verdicts[i] = v
  end
  if o.quality then
    for i, arm in ipairs(arms) do
      local q, e = quality(o.quality, arm)
      res.arms[i].quality = q or { error = e }
    end
  end
  if o.out then
    local ok, e = require("tide.ab.report").write(o.out, res)
    if not ok then return nil, e end
    res.out = o.out
  end
  return res
end

-- sweep{ recipe = file|table, key = "engine.max_seqs", values = {1,2,4}, workload, repeats, out }
function M.sweep(o)
  local base, e = R.load_recipe(o.recipe)
  if not base then return nil, e end
  local arms, labels = {}, {}
  for i, v in ipairs(o.values) do
    arms[i] = R.with(base, o.key, v)
    arms[i].name = (base.name or "recipe") .. " " .. o.key .. "=" .. tostring(v)
    arms[i].file = base.file
    labels[i] = o.key .. "=" .. tostring(v)
  end
  return M.trial{ arms = arms, labels = labels, workload = o.workload, repeats = o.repeats or 3,
    warmup = o.warmup, seed = o.seed, out = o.out, sweep = { key = o.key, values = o.values } }
end

return M
