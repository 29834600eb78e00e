-- tide.plan: costs walked from the model definition agree with a direct
-- count over the real checkpoints' tensor shapes; the hardware profiles and
-- their microbenchmark-derived factors; EPLB imbalance; DeepSeek's day-6
-- deployment; the H20 / H800 contrast; the CLI.
local H = require "helpers"
local cost = require "tide.plan.cost"
local plan = require "tide.plan"
local hwmod = require "tide.plan.hardware"
local T = {}

local function shapes(dir)
  local ts = assert(require("tide").load_safetensors(dir))
  local s = {}
  for name, t in pairs(ts) do s[name] = t:shape() end
  return s
end

local function numel(s) local k = 1 for i = 1, #s do k = k * s[i] end return k end

local function layer_of(name) return tonumber(name:match("^model%.layers%.(%d+)%.")) end

-- Direct count for a decode step of n tokens (one per sequence) at context C,
-- from the checkpoint's shapes: every 2-D weight but the embedding is a GEMM
-- operand (routed experts: top_k of them per token; MTP layers excluded).
local function direct(dir, cfg, n, C, mode)
  local s = shapes(dir)
  local gemm, wparams, kv_row = 0, 0, 0
  local L = cfg.num_hidden_layers
  for name, sh in pairs(s) do
    local li = layer_of(name)
    local main = li == nil or li < L
    if main and #sh == 2 and name ~= "model.embed_tokens.weight" and not name:match("_scale_inv$") then
      local k = numel(sh)
      if name:match("%.experts%.%d+%.") then
        if name:match("%.experts%.0%.") then gemm = gemm + 2 * n * cfg.num_experts_per_tok * k end
      elseif name:match("kv_b_proj") and mode == "naive" then
        gemm = gemm + 2 * n * C * k -- every cached row decompressed
        wparams = wparams + k
      else
        gemm = gemm + 2 * n * k
        wparams = wparams + k
      end
      if name:match("kv_a_proj_with_mqa") then kv_row = kv_row + sh[1] end
      if name:match("k_proj") or name:match("v_proj") then kv_row = kv_row + sh[1] end
    end
  end
  return { gemm = gemm, wparams = wparams, kv_row = kv_row }
end

local function walked(cfg, n, C, mode)
  local m = cost.meta_model(cfg, { mla = mode })
  local rec = cost.recorder({ wbytes = 1, abytes = 2, kvbytes = 2 })
  cost.step(m, rec, { n = n, seqs = n, ctx = C, kv = C }, { mla = mode })
  local g, wb, attn = 0, 0, 0
  for _, op in ipairs(rec.ops) do
    if op.kind == "gemm" then
      g = g + op.flops
      if not op.grouped then wb = wb + op.w_bytes end
    elseif op.kind == "attn" then attn = attn + op.flops end
  end
  return { gemm = g, wparams = wb, attn = attn, kv = cost.kv_bytes_per_token(m, 2), m = m, rec = rec }
end

function T.dsv3_tiny_decode_step_matches_weight_shapes()
  local cfg = assert(require("tide.config").load("models/dsv3-tiny/config.json"))
  local n, C = 8, 300
  for _, mode in ipairs({ "absorb", "naive" }) do
    local d, w = direct("models/dsv3-tiny", cfg, n, C, mode), walked(cfg, n, C, mode)
    H.eq(w.gemm, d.gemm, mode .. ": GEMM flops")
    H.eq(w.wparams, d.wparams, mode .. ": dense weight bytes (1 byte per weight)")
    H.eq(w.kv, d.kv_row * 2, mode .. ": KV bytes per token")
    -- core attention over C positions, 128-ish head dims read from the config
    local H_, kvl, dr, dn, dv = cfg.num_attention_heads, cfg.kv_lora_rank, cfg.qk_rope_head_dim, cfg.qk_nope_head_dim,
      cfg.v_head_dim
    local want = mode == "absorb" and 2 * n * C * H_ * (kvl + dr + kvl) or 2 * n * C * H_ * (dn + dr + dv)
    H.eq(w.attn, cfg.num_hidden_layers * want, mode .. ": attention flops")
  end
end

function T.llama_tiny_decode_step_matches_weight_shapes()
  local cfg = assert(require("tide.config").load("models/llama-tiny/config.json"))
  local n, C = 4, 123
  local d, w = direct("models/llama-tiny", cfg, n, C), walked(cfg, n, C)
  H.eq(w.gemm, d.gemm, "GEMM flops")
  H.eq(w.wparams, d.wparams, "weight bytes")
  H.eq(w.kv, d.kv_row * 2, "KV bytes per token")
  H.eq(w.attn, cfg.num_hidden_layers * 4 * n * C * cfg.num_attention_heads * cfg.head_dim, "attention flops")
end

function T.meta_model_counts_every_checkpoint_tensor()
  -- the meta builder asks for exactly the main-model tensors of the checkpoint
  local cfg = assert(require("tide.config").load("models/dsv3-tiny/config.json"))
  local m = cost.meta_model(cfg, { mtp = true })
  local s = shapes("models/dsv3-tiny")
  local total = 0
  for name, sh in pairs(s) do
    if not name:match("_scale_inv$") and not name:match("e_score_correction_bias") then total = total + numel(sh) end
  end
  H.eq(m.meta_params, total, "parameters (checkpoint minus router biases)")
end

function T.hardware_profiles_load_with_cited_factors()
  for _, name in ipairs({ "h800", "h100", "h200", "h20", "ascend910b" }) do
    local hw = assert(hwmod.load(name))
    H.truthy(hw.peak.bf16 > 0 and hw.mem.bw > 0 and hw.mem.capacity > 0, name .. ": datasheet numbers")
    H.truthy(hw.eff.gemm_fp8 > 0 and hw.eff.gemm_fp8 < 1 and hw.eff.mem < 1, name .. ": efficiencies are fractions")
  end
  local h800 = hwmod.load("h800")
  H.near(h800.peak.fp8 * h800.eff.gemm_fp8, 1350e12, 1e6, "DeepGEMM 1350 TFLOPS")
  H.near(h800.peak.bf16 * h800.eff.attn_bf16, 580e12, 1e6, "FlashMLA 580 TFLOPS")
  H.near(h800.mem.bw * h800.eff.mem, 3000e9, 1e3, "FlashMLA 3000 GB/s")
  H.near(hwmod.ll_time(h800, "dispatch", 128, 128), 192e-6, 1e-12, "DeepEP LL dispatch EP128")
  H.near(hwmod.ll_time(h800, "combine", 8, 128), 114e-6, 1e-12, "DeepEP LL combine EP8")
  local t = hwmod.ll_time(h800, "combine", 144, 128)
  H.truthy(t > 360e-6 and t < 369e-6, "EP144 interpolates between EP128 and EP256")
  -- Ascend has no FP8: FP8 GEMMs run at its INT8 rate
  local a = hwmod.load("ascend910b")
  local _, used = hwmod.gemm_rate(a, "fp8")
  H.eq(used, "int8", "FP8 on 910B")
  H.fails("hardware 'nope'", hwmod.load("nope"))
end

function T.eplb_imbalance()
  H.near(plan.eplb_imbalance(256, 0, 32, 8, 8, 0), 1, 1e-9, "uniform loads balance exactly")
  -- uniform loads with 32 redundant slots on 144 GPUs: 32 experts split in
  -- halves, so GPUs hold 2 (1 + 1) or 1.5 units; max / mean = 2 / (256 / 144)
  H.near(plan.eplb_imbalance(256, 32, 144, 8, 8, 0), 2 / (256 / 144), 1e-6, "replicas of uniform loads")
  -- 2 experts per GPU: skewed loads cannot be packed evenly without replicas
  local skew0 = plan.eplb_imbalance(256, 0, 128, 8, 8, 0.8)
  local skew128 = plan.eplb_imbalance(256, 128, 128, 8, 8, 0.8)
  H.truthy(skew0 > 1.5, "skewed loads without redundancy are imbalanced: " .. skew0)
  H.truthy(skew128 < 1.2, "redundant experts restore the balance: " .. skew128)
  H.fails("do not divide", plan.eplb_imbalance(256, 1, 144, 8, 8, 0))
end

local function day6(phase)
  local r = assert(plan.load_recipe("recipes/plans/deepseek-v3-day6-" .. phase .. ".lua"))
  local o = assert(plan.evaluate(r, {}))
  return o[phase], o
end

function T.day6_deployment()
  local p, po = day6("prefill")
  local d, dout = day6("decode")
  -- the published layout: 9 routed + 1 redundant... slots per GPU
  H.eq((256 + 32) / po.strategy.ep, 9, "prefill expert slots per GPU")
  H.eq((256 + 32) / dout.strategy.ep, 2, "decode expert slots per GPU")
  -- decode: memory bounds the batch near DeepSeek's profiled 128 requests/GPU
  H.truthy(d.batch >= 96 and d.batch <= 192, "decode batch per GPU " .. d.batch)
  H.truthy(d.memory.total <= 80e9 * 0.9, "fits H800 memory")
  H.truthy(d.user_tok_s >= 20, "meets 20 tok/s per user")
  -- capacity is at least the published day averages (73.7k in / 14.8k out per node)
  H.truthy(p.per_node.input_tok_s > 73.7e3, "prefill capacity vs published average")
  H.truthy(d.per_node.output_tok_s > 14.8e3, "decode capacity vs published average")
end

function T.h20_vs_h800_contrast()
  -- same recipe (day-6 decode, EP144, MTP): H20 keeps up while weights and
  -- links dominate (batch 1), falls far behind once MLA and the experts are
  -- compute-bound (H20: 148 vs 989 BF16 TFLOPS)
  local r = assert(plan.load_recipe("recipes/plans/deepseek-v3-day6-decode.lua"))
  local small = plan.decode_ratio(r, "h20", "h800", 1)
  local large = plan.decode_ratio(r, "h20", "h800", 128)
  H.truthy(small > 0.9, "H20 competitive at batch 1: " .. small)
  H.truthy(large < 0.3, "H20 far behind at batch 128: " .. large)
  local x = plan.crossover(r, "h20", "h800", 0.9, 256)
  H.truthy(x >= 1 and x < 8, "crossover batch (H20 >= 90% of H800) is small: " .. x)
  H.truthy(plan.decode_ratio(r, "h20", "h800", x + 1) < 0.9, "past the crossover H20 drops below 90%")
  local rp = assert(plan.load_recipe("recipes/plans/deepseek-v3-day6-prefill.lua"))
  local p20 = assert(plan.evaluate(rp, { hardware = "h20" })).prefill.in_tok_s
  local p800 = assert(plan.evaluate(rp, { hardware = "h800" })).prefill.in_tok_s
  H.truthy(p20 / p800 < 0.35, "H20 far behind in prefill: " .. p20 / p800)
end

function T.search_emits_a_recipe_that_replans_the_same()
  local r = assert(plan.load_recipe("recipes/dsv3-tiny-ep4.lua"))
  local w = { input = { mean = 256, cv = 1 }, output = { mean = 64, cv = 1 }, prefix_hit = 0.5 }
  local best = assert(plan.search(r, { hardware = "h100", nodes = 1, slo = { tpot = 0.002, ttft = 0.5 }, workload = w }))
  H.truthy(best.decode.tpot <= 0.002, "decode meets the TPOT SLO")
  H.truthy(best.prefill.ttft <= 0.5, "prefill meets the TTFT SLO")
  H.truthy(best.prefill_share > 0 and best.prefill_share < 1, "P:D split")
  local src = plan.to_recipe(r, best, "decode")
  local again = assert(loadstring(src))()
  again.workload = w
  local x = assert(plan.evaluate(again, { hardware = "h100" })).decode
  H.near(x.out_tok_s, best.decode.rate, 1e-6 * best.decode.rate, "the emitted recipe plans the same rate")
end

function T.calibrate_writes_a_loadable_profile()
  local cal = require "tide.cmd.calibrate"
  local prof = cal.measure({ quick = true })
  H.truthy(prof.mem.bw > 0 and prof.peak.f32 > 0 and prof.op_overhead > 0, "measured rates are positive")
  H.truthy(next(prof.cpu.gemm.bf16) ~= nil and next(prof.cpu.attn) ~= nil, "GEMM and attention tables")
  local dir = H.tmpdir()
  local path = dir .. "/local.lua"
  local f = assert(io.open(path, "w"))
  f:write("return ", cal.serialize(prof), "\n")
  f:close()
  local hw = assert(hwmod.load(path))
  H.near(hw.mem.bw, prof.mem.bw, prof.mem.bw * 1e-5, "bandwidth round-trips")
  local r = assert(plan.evaluate({ model = "models/llama-tiny", quant = { weights = "bf16", kv = "f32", act = "f32" } },
    { hardware = hw, phase = "decode", batch = 2 }))
  H.truthy(r.decode.step > 0, "plans on the measured profile")
  -- the engine's work between kernels, measured on the shadow per phase and batch, survives the file
  H.truthy(hw.cpu.host.decode[1] and hw.cpu.host.decode[4] and hw.cpu.host.prefill[32], "host work by case")
  H.near(r.decode.split.host, require("tide.plan.hardware").interp(hw.cpu.host.decode, 2), 1e-15,
    "the plan adds the host work at its batch")
end

function T.cli_plan_and_slo()
  local P = require "tide.cmd.plan"
  local slo = assert(P.parse_slo("tpot=50ms,ttft=2s,speed=20"))
  H.near(slo.tpot, 0.05, 1e-12, "tpot")
  H.eq(slo.ttft, 2, "ttft")
  H.eq(slo.speed, 20, "speed")
  H.fails("unknown SLO", P.parse_slo("foo=1"))
  local out = H.sh(H.q(require("tide.cli").progname) .. " plan recipes/dsv3-tiny-ep4.lua --hardware h100 --explain")
  H.truthy(out:match("decode on h100") and out:match("attn%.core") and out:match("bound"), "plan --explain output")
end

-- the throughput / latency curve: more sequences per device buy throughput and cost latency
function T.curve_trades_latency_for_throughput()
  local r = assert(plan.load_recipe("recipes/plans/deepseek-v3-day6-decode.lua"))
  local pts = plan.curve(r, { hardware = "h800" }, "decode")
  H.truthy(#pts >= 6, "batches 1, 2, 4, ... while memory fits: " .. #pts)
  for i = 2, #pts do
    H.eq(pts[i].batch, 2 * pts[i - 1].batch, "doubling batches")
    H.truthy(pts[i].latency > pts[i - 1].latency, "TPOT grows at batch " .. pts[i].batch)
    H.truthy(pts[i].per_node > pts[i - 1].per_node, "throughput grows at batch " .. pts[i].batch)
  end
  local last = pts[#pts].result
  H.truthy(last.memory.total <= last.memory.capacity * 0.9, "the last point fits memory")
  -- one doubling more would not: the curve stops where the memory does
  local x = assert(plan.evaluate(r, { hardware = "h800", phase = "decode", batch = 2 * pts[#pts].batch })).decode
  H.truthy(x.memory.total > x.memory.capacity * 0.9, "the next batch does not fit")
end

-- an arrival rate: prefill waits in an M/D/1 queue of batches, decode runs at Little's batch
function T.queueing_at_an_arrival_rate()
  local rp = assert(plan.load_recipe("recipes/plans/deepseek-v3-day6-prefill.lua"))
  local bo = assert(plan.evaluate(rp, { hardware = "h800", phase = "prefill" }))
  local base, w = bo.prefill, bo.workload
  local D = bo.nodes * 8
  -- half the pool's token rate: rho = 0.5, wait = 0.5 s / (2 x 0.5) = s / 2
  local lam = 0.5 * base.in_tok_s * D / w.input.mean
  local x = assert(plan.evaluate(rp, { hardware = "h800", phase = "prefill", arrival = lam })).prefill
  H.near(x.queue.utilization, 0.5, 1e-12, "utilization")
  H.near(x.ttft, 1.5 * base.step, 1e-9, "TTFT = step + M/D/1 wait")
  H.near(x.in_tok_s, base.in_tok_s, 1e-9, "the batch's rate is unchanged")
  local over = assert(plan.evaluate(rp, { hardware = "h800", phase = "prefill", arrival = 2 * lam / 0.5 })).prefill
  H.truthy(over.queue.overloaded and not over.slo_ok and over.ttft == math.huge, "rho >= 1 overloads the pool")
  -- decode: sequences in flight per device = arrival x output x TPOT / D at the batch the step runs
  local rd = assert(plan.load_recipe("recipes/plans/deepseek-v3-day6-decode.lua"))
  local full = assert(plan.evaluate(rd, { hardware = "h800", phase = "decode" }))
  local Dd, wd = full.nodes * 8, full.workload
  local lam_d = 0.3 * full.decode.out_tok_s * Dd / wd.output.mean
  local o = assert(plan.evaluate(rd, { hardware = "h800", phase = "decode", arrival = lam_d }))
  local d = o.decode
  H.near(d.batch, lam_d * wd.output.mean / Dd * d.tpot, 1e-6 * d.batch, "Little's law at the batch that runs")
  H.truthy(d.batch < full.decode.batch and d.tpot < full.decode.tpot, "a lighter load runs a smaller, faster batch")
  H.near(d.per_node.output_tok_s * o.nodes, lam_d * wd.output.mean, 1e-6 * lam_d * wd.output.mean,
    "the nodes deliver what arrives")
  H.eq(d.queue.capacity.batch, full.decode.batch, "the capacity is kept")
  local heavy = assert(plan.evaluate(rd, { hardware = "h800", phase = "decode", arrival = 2 * lam_d / 0.3 })).decode
  H.truthy(heavy.queue.overloaded and not heavy.slo_ok, "more than the full batch can serve overloads decode")
end

function T.plot_svg_and_text()
  local plot = require "tide.plan.plot"
  local fig = { title = "t <&>", xlabel = "x", ylabel = "y",
    series = { { label = "a", points = { { x = 1, y = 10, tag = "p1" }, { x = 2, y = 30, tag = "p2" }, { x = 4, y = 40 } } } },
    vline = { x = 3, label = "SLO" }, mark = { x = 2, y = 30, label = "plan" } }
  local svg = plot.svg(fig)
  H.truthy(svg:match("^<svg ") and svg:match("</svg>\n$"), "an SVG document")
  local _, circles = svg:gsub("<circle ", "")
  H.eq(circles, 4, "one circle per point and one for the plan's mark")
  H.truthy(svg:find("t &lt;&amp;&gt;", 1, true), "text escaped")
  H.truthy(svg:find("stroke-dasharray", 1, true), "the SLO line")
  local page = plot.page({ fig, fig })
  local _, inner = page:gsub("<svg ", "")
  H.eq(inner, 3, "a page of two figures")
  local lines = plot.text(fig, 40, 10)
  H.eq(#lines, 1 + 10 + 4, "title, 10 rows, axis, x range, labels, key")
  local grid = table.concat(lines, "\n", 2, 11)
  H.truthy(grid:find("@", 1, true) and grid:find("|", 1, true) and grid:find("a", 1, true), "points, mark and SLO drawn")
  -- the highest point is on the top row's side of the grid, the origin row is empty of it
  local x0, x1, y0, y1 = plot.bounds(fig)
  H.truthy(x0 >= 0 and x0 < 1 and x1 > 4 and y0 == 0 and y1 > 40, "bounds cover every point")
  local t = plot.ticks(0, 43, 6)
  H.eq(t[1], 0, "ticks start at a round value")
  H.eq(t[2] - t[1], 10, "a round step")
end

function T.cli_plan_plot()
  local prog = H.q(require("tide.cli").progname)
  local out = H.sh(prog .. " plan recipes/plans/deepseek-v3-day6-decode.lua --hardware h800 --slo speed=20 --plot -")
  H.truthy(out:find("decode on h800", 1, true) and out:find("TPOT (ms per output token)", 1, true)
    and out:find("@ plan", 1, true) and out:find("SLO 50 ms", 1, true), "a text plot after the table")
  local f = os.tmpname() .. ".svg"
  H.sh(prog .. " plan recipes/plans/deepseek-v3-day6-prefill.lua --hardware h800 --plot " .. H.q(f) .. " 2>&1")
  local fh = assert(io.open(f))
  local svg = fh:read("*a")
  fh:close()
  os.remove(f)
  H.truthy(svg:match("^<svg ") and svg:find("TTFT", 1, true) and svg:find("plan: 16384", 1, true), "an SVG of the prefill curve")
  -- --search plots every candidate
  out = H.sh(prog .. " plan recipes/plans/deepseek-v3-day6-decode.lua --hardware h800 --nodes 18 --search --slo speed=20 --plot -")
  H.truthy(out:find("search: decode candidates", 1, true) and out:find("search: prefill candidates", 1, true)
    and out:find("@ best: EP", 1, true) and out:find("f fp8 weights", 1, true), "a text plot of the search")
end

-- ---- calibrated CPU profiles (acceptance 1) ------------------------------------------

function T.calib_needs_collects_the_models_shape_classes()
  local calib = require "tide.plan.calib"
  local r = { model = "models/dsv3-tiny", mla = "auto", prefill_mla = "auto",
    quant = { weights = "bf16", kv = "f32", act = "f32" }, parallel = { ep = 1 } }
  local cases = { { phase = "decode", batch = 2, workload = { input = { mean = 8, cv = 0 }, output = { mean = 1, cv = 0 } } },
    { phase = "prefill", batch = 64, workload = { input = { mean = 64, cv = 0 }, output = { mean = 1, cv = 0 } } } }
  local need = calib.needs(r, cases)
  local cfg = assert(plan.model_config(r))
  local have = {}
  for _, g in ipairs(need.gemm) do have[g.n .. "x" .. g.k] = true end
  local D = cfg.hidden_size
  H.truthy(have[cfg.q_lora_rank .. "x" .. D], "q_a shape class")
  H.truthy(have[cfg.vocab_size .. "x" .. D], "lm_head shape class")
  H.eq(#need.experts, 1, "one grouped-expert class")
  H.eq(need.experts[1].E, cfg.n_routed_experts, "experts per layer")
  H.eq(need.experts[1].inter, cfg.moe_intermediate_size, "expert inter")
  -- absorbed decode (latent K, V = its first kv_lora_rank) and naive prefill (per-head K, V)
  local lat, naive = false, false
  for _, a in ipairs(need.attn) do
    if a.nkv == 1 and a.v_from_k == cfg.kv_lora_rank then lat = true end
    if a.nkv == cfg.num_attention_heads and a.v == cfg.v_head_dim then naive = true end
  end
  H.truthy(lat and naive, "both MLA attention layouts")
  -- EP: the experts run as per-slot MLPs, so their GEMM shapes are asked for
  r.parallel.ep = 4
  local need4 = calib.needs(r, cases)
  H.eq(#need4.experts, 0, "no grouped kernel under EP")
  local h4 = {}
  for _, g in ipairs(need4.gemm) do h4[g.n .. "x" .. g.k] = true end
  H.truthy(h4[cfg.moe_intermediate_size .. "x" .. D] and h4[D .. "x" .. cfg.moe_intermediate_size], "per-slot expert GEMMs")
end

-- a hand-made calibrated profile: each op's time is checked against the formula
local function toy_cpu(ranks, cores)
  local calib = require "tide.plan.calib"
  local prof = { threads = 1, dtype = "bf16", op_overhead = 2e-6, elt_bw = 10e9, bw = 20e9,
    gemm = { bf16 = { ["64 x 32"] = { [1] = 1e9, [16] = 16e9 } } },
    experts = { bf16 = { ["32 x 16"] = { [1] = 1e-4, [4] = 2e-4 } } },
    attn = { ["4/1/8/8"] = { per_call = 5e-6, rate = 4e9, rate_decode = 1e9 } } }
  return calib.profile(prof, { ranks = ranks, cores = cores, bw1 = 20e9, bw_all = 30e9 })
end

-- E[max of n standard normals]: 0 for one, 1/sqrt(pi) for two (closed form), 1.0294 for four (tables),
-- and always below the sqrt(2 ln n) bound
function T.expected_max_of_normals()
  local P = require "tide.plan"
  H.eq(P.expected_max_normal(1), 0, "one")
  H.near(P.expected_max_normal(2), 1 / math.sqrt(math.pi), 1e-6, "two")
  H.near(P.expected_max_normal(4), 1.0294, 1e-4, "four")
  for _, n in ipairs({ 8, 32, 144, 1000 }) do
    H.truthy(P.expected_max_normal(n) < math.sqrt(2 * math.log(n)), "below the bound at " .. n)
    H.truthy(P.expected_max_normal(n) > P.expected_max_normal(n / 2), "grows with n at " .. n)
  end
end

function T.cpu_profile_times_ops_from_measured_tables()
  local hw = toy_cpu()
  local g = { kind = "gemm", m = 4, n = 64, k = 32, flops = 2 * 4 * 64 * 32, w_bytes = 64 * 32 * 2, a_bytes = 0, kv_bytes = 0 }
  -- rate log-interpolated between m = 1 (1 GFLOP/s) and m = 16 (16 GFLOP/s): 4 GFLOP/s at m = 4
  H.near(hwmod.op_time(hw, g, "bf16"), g.flops / 4e9, 1e-12, "GEMM at m=4")
  local far = { kind = "gemm", m = 16, n = 70, k = 30, flops = 1e6, w_bytes = 0, a_bytes = 0, kv_bytes = 0 }
  H.near(hwmod.op_time(hw, far, "bf16"), 1e6 / 16e9, 1e-12, "unknown shape: nearest class")
  local e = { kind = "gemm", grouped = true, m = 8, n = 48, k = 32, experts = 4, flops = 1, w_bytes = 0, a_bytes = 0,
    kv_bytes = 0 }
  -- 2 rows per hit: sqrt(1e-4 * 2e-4) per hit (log-log halfway), 4 hits
  H.near(hwmod.op_time(hw, e, "bf16"), 4 * math.sqrt(2e-8), 1e-12, "grouped experts per hit")
  local a = { kind = "attn", heads = 4, qk_dim = 8, v_dim = 8, kv_row = 16, flops = 4e6, q_per_seq = 1, w_bytes = 0,
    a_bytes = 0, kv_bytes = 0 }
  -- GQA 4 heads, 1 KV head of 8 + 8: decode-like rate
  H.near(hwmod.op_time(hw, a, "bf16"), 5e-6 + 4e6 / 1e9, 1e-12, "attention, decode-like")
  a.q_per_seq = 64
  H.near(hwmod.op_time(hw, a, "bf16"), 5e-6 + 4e6 / 4e9, 1e-12, "attention, prefill-like")
  local x = { kind = "elt", flops = 0, w_bytes = 0, a_bytes = 1e6, kv_bytes = 0 }
  H.near(hwmod.op_time(hw, x, "bf16"), 2e-6 + 1e6 / 10e9, 1e-12, "elementwise")
  -- 4 single-threaded ranks on 2 cores: x2, and weight streams drop from
  -- 20 GB/s alone to 30/2 GB/s each
  local hw4 = toy_cpu(4, 2)
  local extra = g.w_bytes * (2 / 30e9 - 1 / 20e9)
  H.near(hwmod.op_time(hw4, g, "bf16"), 2 * (g.flops / 4e9 + extra), 1e-12, "shared cores")
  H.near(hwmod.op_time(hw4, x, "bf16"), 2 * (2e-6 + 1e6 / 10e9), 1e-12, "shared cores, elementwise")
  -- a measured oversubscription (probe) replaces the model: the part of an op's time its weight bytes
  -- take at one thread's streaming rate (bw1 = 20 GB/s) slows like the streaming probe, the rest like
  -- the compute probe
  hw4.cpu.oversub = { compute = 3, stream = 5 }
  local tb = g.w_bytes / 20e9
  H.near(hwmod.op_time(hw4, g, "bf16"), 3 * (g.flops / 4e9 - tb) + 5 * tb, 1e-12, "measured, streaming GEMM")
  -- as many bytes as the op's whole time alone streams at 20 GB/s (1 GFLOP/s at m = 1): all streaming
  local pure = { kind = "gemm", m = 1, n = 64, k = 32, flops = 2 * 64 * 32, w_bytes = 2 * 64 * 32 / 1e9 * 20e9,
    a_bytes = 0, kv_bytes = 0 }
  H.near(hwmod.op_time(hw4, pure, "bf16"), 5 * pure.flops / 1e9, 1e-12, "measured, all-streaming GEMM")
  local big = { kind = "gemm", m = 16, n = 64, k = 32, flops = 2 * 16 * 64 * 32, w_bytes = 0, a_bytes = 0, kv_bytes = 0 }
  H.near(hwmod.op_time(hw4, big, "bf16"), 3 * big.flops / 16e9, 1e-12, "measured, compute GEMM")
  H.near(hwmod.op_time(hw4, x, "bf16"), 3 * (2e-6 + 1e6 / 10e9), 1e-12, "measured, elementwise")
  -- within a step, the contention part of the streaming factor scales with the share rho of the ranks'
  -- time spent streaming: fs = fc (1 + (fs_probe / fc - 1) rho)
  local o = { compute = 2, stream = 4 }
  H.eq(hwmod.stream_factor(o), 4, "no step share: the probe's factor")
  o.rho = 0.5
  H.near(hwmod.stream_factor(o), 3, 1e-12, "half the step streaming")
  hw4.cpu.oversub = { compute = 3, stream = 5, rho = 0 }
  H.near(hwmod.op_time(hw4, pure, "bf16"), 3 * pure.flops / 1e9, 1e-12, "no other rank streaming: the core share")
  H.eq(hwmod.stream_share(o, 1, 1), 1, "all streaming")
  H.eq(hwmod.stream_share(o, 1, 0), 0, "none streaming")
  local rho = hwmod.stream_share(o, 1, 0.5)
  local fs = hwmod.stream_factor({ compute = 2, stream = 4, rho = rho })
  H.near(rho, fs * 0.5 / (2 * 0.5 + fs * 0.5), 1e-9, "fixed point")
  H.truthy(rho > 0.5 and rho < 2 / 3, "streaming stretches more than compute: " .. rho)
end

-- measured tables for a step of models/dsv3-tiny (one GEMM class, one attention class)
local function small_prof()
  return { threads = 1, dtype = "bf16", op_overhead = 1e-6, elt_bw = 10e9, bw = 10e9,
    gemm = { bf16 = { ["64 x 64"] = { [1] = 1e9, [64] = 20e9 } } }, experts = { bf16 = {} },
    attn = { ["1/1/8/8"] = { per_call = 1e-6, rate = 1e9, rate_decode = 1e9 } } }
end

function T.cpu_profile_plans_a_model_step()
  -- every op of a real model walk gets a finite positive time on a calibrated profile
  local calib = require "tide.plan.calib"
  local r = { model = "models/dsv3-tiny", mla = "auto", prefill_mla = "auto",
    quant = { weights = "bf16", kv = "f32", act = "f32", dispatch = "f32", combine = "f32" }, parallel = { ep = 4 } }
  local prof = small_prof()
  local hw = calib.profile(prof, { ranks = 4, cores = 2, a2a = { latency = 50e-6, bw = 1e9 }, bw1 = 10e9, bw_all = 15e9 })
  local x = assert(plan.evaluate(r, { hardware = hw, phase = "decode", batch = 4,
    workload = { input = { mean = 32, cv = 0 }, output = { mean = 1, cv = 0 } } })).decode
  local links = 0
  for _, op in ipairs(x.ops) do
    H.truthy(op.t > 0 and op.t < math.huge, "op time " .. op.name)
    if op.bound == "link" then
      links = links + 1
      -- dispatch: 2 alltoallv (counts, rows), combine: 1 -- latency each
      local calls = op.name:match("dispatch") and 2 or 1
      H.truthy(op.t >= calls * 50e-6, "all-to-all latency per call: " .. op.name)
    end
  end
  H.truthy(links > 0, "EP exchanges are link-bound ops")
end

-- the engine's work between kernels (measured on the shadow) adds to the step as it is
function T.cpu_profile_adds_host_work_per_step()
  local calib = require "tide.plan.calib"
  local r = { model = "models/dsv3-tiny", mla = "auto", prefill_mla = "auto",
    quant = { weights = "bf16", kv = "f32", act = "f32", dispatch = "f32", combine = "f32" }, parallel = { ep = 1 } }
  local prof = small_prof()
  local q = { hardware = nil, phase = "decode", batch = 4, workload = { input = { mean = 32, cv = 0 }, output = { mean = 1, cv = 0 } } }
  q.hardware = calib.profile(prof)
  local a = assert(plan.evaluate(r, q)).decode
  q.hardware = calib.profile(prof, { host_step = 3e-3 })
  local bo = assert(plan.evaluate(r, q))
  local b = bo.decode
  H.eq(a.split.host, 0, "no host term without a measurement")
  H.near(b.split.host, 3e-3, 1e-15, "the measured host work")
  H.near(b.step - a.step, 3e-3, 1e-12, "added to the step once")
  H.truthy(require("tide.cmd.plan").report(bo, "decode", b):find("host: engine work between kernels", 1, true),
    "the report shows it")
  -- measured as one rank's CPU time among ranks sharing cores: stretched like compute
  local hw = calib.profile(prof, { host_step = 3e-3, host_cpu = true, ranks = 4, cores = 2 })
  q.hardware = hw
  H.near(assert(plan.evaluate(r, q)).decode.split.host, 6e-3, 1e-15, "4 ranks on 2 cores: x2")
  hw = calib.profile(prof, { host_step = 3e-3, host_cpu = true, ranks = 4, cores = 2, oversub = { compute = 2.2, stream = 2.8 } })
  q.hardware = hw
  H.near(assert(plan.evaluate(r, q)).decode.split.host, 6.6e-3, 1e-12, "the compute probe's factor")
  hw = calib.profile(prof, { host_step = 3e-3, host_cpu = true, ranks = 1, cores = 2 })
  q.hardware = hw
  H.near(assert(plan.evaluate(r, q)).decode.split.host, 3e-3, 1e-15, "a rank with a core of its own: as measured")
end

-- a profile whose host work is CPU time of ranks sharing cores (a boolean field) round-trips
-- through the file (bench/plan_calibrate.lua --save failed on it)
function T.profile_with_host_cpu_round_trips()
  local cal = require "tide.cmd.calibrate"
  local calib = require "tide.plan.calib"
  local hp = calib.profile(small_prof(), { host_step = 2e-3, host_cpu = true, ranks = 4, cores = 2 })
  local path = H.tmpdir() .. "/ranks.lua"
  local f = assert(io.open(path, "w"))
  f:write("return ", cal.serialize(hp), "\n")
  f:close()
  local hw = assert(hwmod.load(path))
  H.eq(hw.cpu.host_cpu, true, "host_cpu survives the file")
  H.near(hw.cpu.host_step, 2e-3, 1e-12, "host_step survives the file")
  H.truthy(not pcall(cal.serialize, { f = print }), "a value a profile cannot hold is an error, not garbage")
end

-- the shadow keeps the structure the engine's Lua loops over and shrinks every width
function T.shadow_keeps_structure_and_walk()
  local calib = require "tide.plan.calib"
  local config = require "tide.config"
  for _, dir in ipairs({ "models/dsv3-tiny", "models/llama-tiny" }) do
    local cfg = assert(config.load(dir .. "/config.json"))
    local p = calib.shadow_preset(cfg)
    for _, k in ipairs({ "num_hidden_layers", "num_attention_heads", "vocab_size", "n_routed_experts",
      "num_experts_per_tok", "n_shared_experts", "first_k_dense_replace", "n_group", "topk_group" }) do
      H.eq(p[k], cfg[k], dir .. " keeps " .. k)
    end
    H.eq(p.num_key_value_heads, cfg.num_key_value_heads or cfg.num_attention_heads, dir .. " keeps KV heads")
    H.truthy(p.intermediate_size < cfg.intermediate_size, dir .. " shrinks widths")
    -- an MoE model's shadow keeps the width of the rows EP copies and exchanges
    if (cfg.n_routed_experts or 0) > 0 then
      H.eq(p.hidden_size, cfg.hidden_size, dir .. " keeps the hidden size (EP's rows)")
      H.truthy(p.moe_intermediate_size < cfg.moe_intermediate_size and p.kv_lora_rank < cfg.kv_lora_rank,
        dir .. " shrinks the expert and latent widths")
    else
      H.truthy(p.hidden_size < cfg.hidden_size, dir .. " shrinks the hidden size")
    end
    local out = os.tmpname()
    os.remove(out)
    local sd = assert(calib.shadow_dir(dir, out))
    -- the planner's walk makes the same kernel calls on both, in every phase and batch
    for _, c in ipairs({ { "prefill", 16 }, { "decode", 1 }, { "decode", 8 } }) do
      local function ops(d)
        local rr = { model = d, mla = "auto", prefill_mla = "auto",
          quant = { weights = "bf16", kv = "f32", act = "f32", dispatch = "f32", combine = "f32" }, parallel = { ep = 1 } }
        local x = assert(plan.evaluate(rr, { hardware = calib.placeholder(), phase = c[1], batch = c[2],
          workload = { input = { mean = 16, cv = 0 }, output = { mean = 1, cv = 0 } } }))[c[1]]
        return calib.op_count(x)
      end
      H.eq(ops(sd), ops(dir), dir .. " " .. c[1] .. " " .. c[2] .. ": same kernel calls")
    end
    -- and the engine makes the same calls too (tide.profile counts them)
    local tide = require "tide"
    local function calls(d)
      local m = assert(tide.load(d, { kv = { seqs = 4 }, max_ctx = 64 }))
      local kv = m:kv_cache()
      local s = { kv:seq_new(), kv:seq_new() }
      assert(m:step(s, { { 5, 6, 7 }, { 8, 9 } }, "last"))
      local _, n = calib.host_time(function(i) assert(m:step(s, { { 10 + i }, { 20 + i } }, "last")) end, 2,
        { evict_bytes = 0 })
      m:free()
      return n
    end
    H.eq(calls(sd), calls(dir), dir .. ": the engine's kernel calls per decode step")
    os.execute("rm -rf '" .. out .. "'")
  end
end

-- host_time sees work between kernel calls and not the kernels' own time
function T.host_time_measures_the_gaps_between_kernels()
  local calib = require "tide.plan.calib"
  local Tn = require "tide.tensor"
  local a, b = Tn.zeros({ 256 }), Tn.zeros({ 256 })
  local function spin(sec) local t0 = Tn.now() while Tn.now() - t0 < sec do end end
  -- 10 kernel calls each followed by 0.2 ms of Lua: ~2 ms of host work per step
  local host, calls = calib.host_time(function()
    for _ = 1, 10 do Tn.op.add(b, a, a) spin(2e-4) end
  end, 5, { evict_bytes = 1024 })
  H.eq(calls, 10, "kernel calls counted")
  H.truthy(host >= 1.9e-3, "the Lua between kernels (at least the 2 ms spun): " .. host)
  -- work inside a kernel call is not host work
  local inner = Tn.op.add
  Tn.op.add = function(...) spin(2e-4) return inner(...) end
  local ok, h2 = pcall(calib.host_time, function() for _ = 1, 10 do Tn.op.add(b, a, a) end end, 5, { evict_bytes = 0 })
  Tn.op.add = inner
  assert(ok, h2)
  H.truthy(h2 < 1e-3, "the 2 ms spun inside kernels is not host work: " .. h2)
  H.eq(Tn.op.add, inner, "op table restored")
  -- the CPU clock (ranks sharing cores): spinning between kernels counts, sleeping does not, nor
  -- work inside kernels or collectives
  local ffi = require "ffi"
  pcall(ffi.cdef, "int usleep(unsigned int usec);")
  local c1, n1 = calib.host_cpu(function() for _ = 1, 10 do Tn.op.add(b, a, a) spin(2e-4) end end, 5, { evict_bytes = 1024 })
  H.eq(n1, 10, "kernel calls counted (CPU clock)")
  H.truthy(c1 >= 1.5e-3 and c1 < 6e-3, "CPU spun between kernels: " .. c1)
  local c2 = calib.host_cpu(function() for _ = 1, 10 do Tn.op.add(b, a, a) ffi.C.usleep(300) end end, 5, { evict_bytes = 0 })
  H.truthy(c2 < 1e-3, "3 ms asleep between kernels is no CPU work: " .. c2)
  Tn.op.add = function(...) spin(2e-4) return inner(...) end
  local comm = require "tide.comm"
  local bar = comm.Comm.barrier
  comm.Comm.barrier = function() spin(2e-4) return true end
  local ok3, c3 = pcall(calib.host_cpu, function()
    for _ = 1, 10 do Tn.op.add(b, a, a) comm.Comm.barrier() end
  end, 5, { evict_bytes = 0 })
  Tn.op.add, comm.Comm.barrier = inner, bar
  assert(ok3, c3)
  H.truthy(c3 < 1e-3, "4 ms spun inside kernels and collectives is not host work: " .. c3)
  H.eq(Tn.op.add, inner, "op table restored (CPU clock)")
end

-- ---- day 6 as a day average (acceptance 2) ----------------------------------------

function T.fleet_splits_node_time_by_need()
  local fleet = require "tide.plan.fleet"
  local day = { seconds = 100, input_tokens = 1e6, output_tokens = 1e5, speed = { 10, 10 }, gpus_per_node = 8,
    nodes = { average = 10 } }
  local f = fleet.evaluate(day, { per_node = { input_tok_s = 5e3 } }, { per_node = { output_tok_s = 1e3 }, batch = 20 })
  -- need: prefill 1e4 / 5e3 = 2 nodes, decode 1e3 / 1e3 = 1 node; 10 deployed -> U = 0.3
  H.near(f.utilization, 0.3, 1e-12, "load factor")
  H.near(f.nodes.prefill + f.nodes.decode, 10, 1e-9, "the deployed nodes")
  H.near(f.per_node.prefill, 5e3 * 0.3, 1e-6, "prefill per node = capacity x U")
  H.near(f.per_node.decode, 1e3 * 0.3, 1e-6, "decode per node = capacity x U")
  -- Little: 1e3 tok/s / 10 tok/s = 100 users over 10/3 nodes x 8 GPUs
  H.near(f.decode_batch.avg, 100 / (10 / 3 * 8), 1e-9, "average decode batch")
end

function T.day6_day_average_matches_published_within_25_percent()
  local fleet = require "tide.plan.fleet"
  local day = assert(hwmod.load_data("recipes/plans/deepseek-v3-day6-fleet.lua"))
  local p = day6("prefill")
  local d = day6("decode")
  local f = fleet.evaluate(day, p, d)
  local rp, rd = f.per_node.prefill / day.published.prefill, f.per_node.decode / day.published.decode
  H.truthy(rp > 0.75 and rp < 1.25, "prefill day average vs 73.7k: " .. rp)
  H.truthy(rd > 0.75 and rd < 1.25, "decode day average vs 14.8k: " .. rd)
  H.truthy(f.utilization > 0 and f.utilization < 1, "the fleet runs below capacity on average")
  -- the normal EP kernels' SMs slow the overlapped prefill compute; the low-latency decode kernels take none
  H.truthy(p.split.sm_share > 0, "prefill pays the SM share")
  H.eq(d.split.sm_share, 0, "decode (low-latency kernels) does not")
end

return T
