-- tide.quant.awq: activation-aware per-channel scaling (AWQ-style), folded
-- into the RMSNorm weight that feeds each group of matrices.
--
-- For a group (a norm g and the matrices W reading its output), channel j
-- gets s_j = rms_j^alpha (rms_j from the calibration statistics, normalized
-- so that max(s) min(s) = 1): W' = W diag(s) is quantized and g' = g / s, so
-- the float model is unchanged and channels with large activations lose less
-- to rounding. alpha is searched on a grid, minimizing the activation-
-- weighted error sum_j E[x_j^2] sum_i (W_ij - Q(W' )_ij / s_j)^2 over the
-- group's quantized matrices (a diagonal approximation of AWQ's output
-- error). Float matrices reading the same norm (a router, a kept
-- projection) are rescaled exactly.
local ffi = require "ffi"
local T = require "tide.tensor"

local M = {}

M.GRID = { 0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75 }

-- Groups of a model: { norm = name, mats = { names }, stat = name whose statistics to use }.
function M.groups(cfg, tensors)
  local gs = {}
  for i = 0, cfg.num_hidden_layers - 1 do
    local p = "model.layers." .. i .. "."
    local a = p .. "self_attn."
    local att = {}
    for _, n in ipairs({ "q_proj", "k_proj", "v_proj", "q_a_proj", "kv_a_proj_with_mqa" }) do
      if tensors[a .. n .. ".weight"] then att[#att + 1] = a .. n .. ".weight" end
    end
    gs[#gs + 1] = { norm = p .. "input_layernorm.weight", mats = att, stat = att[1] }
    local mlp = {}
    local stat
    if tensors[p .. "mlp.gate_proj.weight"] then
      mlp = { p .. "mlp.gate_proj.weight", p .. "mlp.up_proj.weight" }
      stat = mlp[1]
    elseif tensors[p .. "mlp.gate.weight"] then
      stat = p .. "mlp.gate.weight"
      mlp[1] = stat
      local e = 0
      while tensors[p .. "mlp.experts." .. e .. ".gate_proj.weight"] do
        mlp[#mlp + 1] = p .. "mlp.experts." .. e .. ".gate_proj.weight"
        mlp[#mlp + 1] = p .. "mlp.experts." .. e .. ".up_proj.weight"
        e = e + 1
      end
      if tensors[p .. "mlp.shared_experts.gate_proj.weight"] then
        mlp[#mlp + 1] = p .. "mlp.shared_experts.gate_proj.weight"
        mlp[#mlp + 1] = p .. "mlp.shared_experts.up_proj.weight"
      end
    end
    if #mlp > 0 then gs[#gs + 1] = { norm = p .. "post_attention_layernorm.weight", mats = mlp, stat = stat } end
  end
  return gs
end

local function scaled(w32, s, K)
  -- w32: f32 (rows, K) contiguous; returns a new f32 tensor W diag(s)
  local out = w32:copy("f32")
  local p = ffi.cast("float*", out:cdata().data)
  local rows = out:numel() / K
  for r = 0, rows - 1 do
    local row = p + r * K
    for j = 0, K - 1 do row[j] = row[j] * s[j] end
  end
  return out
end

-- error of quantizing W diag(s) to dt, weighted by m (double[K])
local function group_err(w32, s, K, dt, m)
  local ws = scaled(w32, s, K)
  local q = ws:to(dt)
  local dq = q:to("f32")
  local a = ffi.cast("float*", w32:cdata().data)
  local b = ffi.cast("float*", dq:cdata().data)
  local rows = w32:numel() / K
  local e = 0
  for r = 0, rows - 1 do
    local ar, br = a + r * K, b + r * K
    for j = 0, K - 1 do
      local d = ar[j] - br[j] / s[j]
      e = e + m[j] * d * d
    end
  end
  ws:free(); q:free(); dq:free()
  return e
end

-- apply(model, stats, type_of) -> overrides (name -> f32 tensor), stats'
-- (statistics of the rescaled inputs), report { {norm, alpha, err0, err} }.
-- type_of(hf_name, tensor) -> dtype the matrix will be stored in.
function M.apply(model, stats, type_of, opts)
  opts = opts or {}
  local tensors = model.tensors
  local over, report = {}, {}
  local nstats = setmetatable({}, { __index = stats })
  for _, g in ipairs(M.groups(model.config, tensors)) do
    local st = g.stat and stats[g.stat]
    if st and tensors[g.norm] then
      local K = st.k
      local m = st.mean
      local quant, w32 = {}, {}
      for _, n in ipairs(g.mats) do
        local t = tensors[n]
        w32[n] = t:copy("f32")
        local dt = type_of(n, t)
        if dt:match("^q") then quant[#quant + 1] = { n, dt } end
      end
      if #quant > 0 then
        local rms = ffi.new("double[?]", K)
        local mx, mn = 0, math.huge
        for j = 0, K - 1 do
          rms[j] = math.max(math.sqrt(m[j]), 1e-6)
        end
        local best_a, best_e, e0 = 0, math.huge, nil
        local s = ffi.new("double[?]", K)
        for _, alpha in ipairs(opts.grid or M.GRID) do
          mx, mn = 0, math.huge
          for j = 0, K - 1 do
            local v = rms[j] ^ alpha
            s[j] = v
            if v > mx then mx = v end
            if v < mn then mn = v end
          end
          local nrm = math.sqrt(mx * mn)
          for j = 0, K - 1 do s[j] = s[j] / nrm end
          local e = 0
          for _, q in ipairs(quant) do e = e + group_err(w32[q[1]], s, K, q[2], m) end
          if alpha == 0 then e0 = e end
          if e < best_e then best_e, best_a = e, alpha end
        end
        report[#report + 1] = { norm = g.norm, alpha = best_a, err_rtn = e0, err = best_e }
        if best_a > 0 then
          mx, mn = 0, math.huge
          for j = 0, K - 1 do
            local v = rms[j] ^ best_a
            s[j] = v
            if v > mx then mx = v end
            if v < mn then mn = v end
          end
          local nrm = math.sqrt(mx * mn)
          for j = 0, K - 1 do s[j] = s[j] / nrm end
          for _, n in ipairs(g.mats) do
            over[n] = scaled(w32[n], s, K)
            local so = stats[n]
            if so then
              local nm = ffi.new("double[?]", K)
              for j = 0, K - 1 do nm[j] = so.mean[j] / (s[j] * s[j]) end
              nstats[n] = { mean = nm, n = so.n, k = K }
            end
          end
          local gw = tensors[g.norm]:copy("f32")
          local gp = ffi.cast("float*", gw:cdata().data)
          for j = 0, K - 1 do gp[j] = gp[j] / s[j] end
          over[g.norm] = gw
        end
      end
      for _, w in pairs(w32) do w:free() end
    end
  end
  return over, nstats, report
end

return M
