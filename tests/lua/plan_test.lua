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

return T
