-- EPLB balance on dsv3-tiny (issue 7, acceptance 3): expert loads measured
-- by Tide on tests/data/val.txt (windows of --ctx tokens from an empty
-- cache, as tide ppl), then the max/mean rank load of every MoE layer over 4
-- EP ranks before (contiguous experts, 4 per rank) and after EPLB with 4
-- redundant experts (5 slots per rank). Also with the fixture's
-- expert_loads_val as the loads, and (--realized N) the loads the EP ranks
-- actually served when the first N tokens run through the EP plan on 4
-- threads with the EPLB placement.
--
--   tide run bench/eplb_balance.lua [--max-tokens N] [--ctx 256] [--realized N]
local tide = require "tide"
local eplb = require "tide.parallel.eplb"
local ep = require "tide.parallel.ep"
local cjson = require "cjson"

local opts = { max_tokens = math.huge, ctx = 256, realized = 0, ranks = 4, redundant = 4 }
local i = 1
while arg[i] do
  local k, v = arg[i], tonumber(arg[i + 1])
  if k == "--max-tokens" then opts.max_tokens = v
  elseif k == "--ctx" then opts.ctx = v
  elseif k == "--realized" then opts.realized = v
  else error("unknown option " .. k) end
  i = i + 2
end

local MODEL, FIX, VAL = "models/dsv3-tiny", "tests/fixtures/dsv3-tiny.json", "tests/data/val.txt"
local fx = cjson.decode(assert(io.open(FIX)):read("*a"))
local m = assert(tide.load(MODEL, { mla = "absorb", kv = { blocks = math.ceil(opts.ctx / 16) + 2 } }))
local text = assert(io.open(VAL, "rb")):read("*a")
local toks = m.tokenizer:encode(text, { add_special = true })
local n = math.min(#toks, opts.max_tokens)

-- measure
local t0 = os.clock()
m:expert_loads(true)
for s = 1, n, opts.ctx do
  local win = {}
  for j = s, math.min(s + opts.ctx - 1, n) do win[#win + 1] = toks[j] end
  local lg = assert(m:forward(win))
  lg:free()
end
local measured = m:expert_loads(true)
local secs = os.clock() - t0
local layers = ep.moe_layers(m)
local E = layers[1].moe.n_expert

local function rows_of(all)
  local t = {}
  for _, l in ipairs(layers) do t[#t + 1] = all[l.index] end
  return t
end

local function report(title, loads)
  print(title)
  local rows = rows_of(loads)
  local phy2log, _, logcnt = eplb.rebalance(rows, E + opts.redundant, layers[1].moe.n_group, 1, opts.ranks)
  print(string.format("  %-6s %-10s %-10s  %s", "layer", "before", "after", "rank loads after (tokens)"))
  local worst = 0
  for li, l in ipairs(layers) do
    local _, before = eplb.rank_loads(rows[li], opts.ranks)
    local rl, after = eplb.rank_loads(rows[li], opts.ranks, phy2log[li], logcnt[li])
    worst = math.max(worst, after)
    local s = {}
    for r = 1, #rl do s[r] = string.format("%.0f", rl[r]) end
    print(string.format("  %-6d %-10.3f %-10.3f  %s", l.index - 1, before, after, table.concat(s, " ")))
  end
  print(string.format("  worst max/mean after EPLB: %.3f (target <= 1.15)", worst))
  return phy2log
end

print(string.format("dsv3-tiny, %d tokens of %s measured in %.1fs (windows of %d); %d ranks, %d redundant experts",
  n, VAL, secs, opts.ctx, opts.ranks, opts.redundant))
-- agreement of the measured shares with the reference
for li, l in ipairs(layers) do
  local a, b = measured[l.index], fx.expert_loads_val[l.index]
  local sa, sb, d = 0, 0, 0
  for e = 1, E do sa = sa + a[e]; sb = sb + b[e] end
  for e = 1, E do d = d + math.abs(a[e] / sa - b[e] / sb) end
  print(string.format("  layer %d: L1 distance of expert shares to expert_loads_val %.4f", l.index - 1, d))
end
local phy2log = report("loads measured by Tide:", measured)
report("loads of the fixture (expert_loads_val):", fx.expert_loads_val)

-- realized: the EP plan on threads serves the first N tokens with the placement above
if opts.realized > 0 then
  local comm = require "tide.comm"
  local R = require "tide.parallel.recipe"
  local job = R.ser({ phy2log = phy2log, n = math.min(opts.realized, #toks), ctx = opts.ctx, toks = toks })
  local res = assert(comm.local_group(opts.ranks, function(c, arg)
    local tide = require "tide"
    local ep = require "tide.parallel.ep"
    local R = require "tide.parallel.recipe"
    local j = R.deser(arg)
    local m = assert(tide.load("models/dsv3-tiny", { mla = "absorb", kv = { blocks = math.ceil(j.ctx / 16) + 2 } }))
    local plan = assert(ep.apply(m, c, { phy2log = j.phy2log }))
    local w = 0
    for s = 1, j.n, j.ctx do
      if w % c:size() == c:rank() then
        local win = {}
        for k = s, math.min(s + j.ctx - 1, j.n) do win[#win + 1] = j.toks[k] end
        assert(m:forward(win)):free()
      end
      w = w + 1
    end
    plan:drain()
    local out = {}
    for li, row in ipairs(plan:slot_loads_table()) do
      local s = 0
      for _, v in ipairs(row) do s = s + v end
      out[li] = s
    end
    return R.ser(out)
  end, job))
  print(string.format("realized rank loads of the EP plan (%d tokens, 4 threads, local replica first):", math.min(opts.realized, #toks)))
  for li, l in ipairs(layers) do
    local rl, sum, mx = {}, 0, 0
    for r = 1, opts.ranks do
      rl[r] = R.deser(res[r])[li]
      sum = sum + rl[r]
      mx = math.max(mx, rl[r])
    end
    print(string.format("  layer %d: max/mean %.3f  (%s)", l.index - 1, mx / (sum / opts.ranks), table.concat(rl, " ")))
  end
end
return 0
