-- tide.quant.imatrix: activation statistics on calibration text and
-- importance-weighted rounding.
--
-- collect(model, toks, ctx) runs the model over the tokens and records, for
-- every weight matrix W (out, in) used in a matmul, the mean of x_j^2 over
-- the rows x fed to it (per input channel j), as llama.cpp's imatrix does.
-- It wraps tide.tensor's op.matmul for the duration (op is a table for that
-- purpose) and finds the weight's name by identity in model.tensors.
--
-- quantize(t, dtype, imat) rounds a float matrix to q4_0 / q8_0 / q4_k blocks
-- choosing each block's scale (and min) to minimize sum_j w_j (x_j - d q_j)^2 with
-- w_j = imat_j * sqrt(sigma2 + x_j^2) (llama.cpp's weighting), searching
-- scales around the round-to-nearest one. Other types fall back to the
-- plain (round-to-nearest) quantizer.
local ffi = require "ffi"
local bit = require "bit"
local T = require "tide.tensor"
local F = require "tide.ffi"
local C = F.C

local M = {}

-- Stats: name -> { sum = double[K], n = rows seen, k = K }
function M.collect(model, toks, ctx, opts)
  opts = opts or {}
  local names = {}
  for name, t in pairs(model.tensors) do
    if T.is_tensor(t) and t:ndim() == 2 then names[t] = name end
  end
  local stats = {}
  local orig = T.op.matmul
  T.op.matmul = function(out, a, b, trans_b)
    local name = names[b]
    if name and trans_b ~= false and a:dtype() == "f32" then
      local x = a:is_contiguous() and a or a:contiguous()
      local s = x:shape()
      local n, K = s[1], s[2]
      local st = stats[name]
      if not st then
        st = { sum = ffi.new("double[?]", K), n = 0, k = K }
        stats[name] = st
      end
      local p = ffi.cast("float*", x:cdata().data)
      local sum = st.sum
      for r = 0, n - 1 do
        local row = p + r * K
        for j = 0, K - 1 do local v = row[j]; sum[j] = sum[j] + v * v end
      end
      st.n = st.n + n
    end
    return orig(out, a, b, trans_b)
  end
  local ok, err = pcall(function()
    for s = 1, #toks, ctx do
      local win = {}
      for i = s, math.min(#toks, s + ctx - 1) do win[#win + 1] = toks[i] end
      local logits, e = model:forward(win)
      if not logits then error(e, 0) end
      logits:free()
      if opts.progress then opts.progress(math.min(#toks, s + ctx - 1), #toks) end
    end
  end)
  T.op.matmul = orig
  if not ok then return nil, err end
  -- means
  local out = {}
  for name, st in pairs(stats) do
    local m = ffi.new("double[?]", st.k)
    for j = 0, st.k - 1 do m[j] = st.sum[j] / math.max(st.n, 1) end
    out[name] = { mean = m, n = st.n, k = st.k }
  end
  return out
end

local BLOCK = { q4_0 = { qk = 32, bytes = 18, nmin = -8, nmax = 7 }, q8_0 = { qk = 32, bytes = 34, nmin = -127, nmax = 127 },
  q4_k = { qk = 256, bytes = 144 } }

function M.supported(dtype) return BLOCK[dtype] ~= nil end

local function round(v) return math.floor(v + 0.5) end

-- One block of qk values x[0..qk-1] with weights w: returns d and fills L
-- (ints in [nmin, nmax]).
local function block(x, w, qk, nmin, nmax, L, Lb)
  local amax, mx = 0, 0
  for j = 0, qk - 1 do
    local a = math.abs(x[j])
    if a > amax then amax, mx = a, x[j] end
  end
  if amax == 0 then
    for j = 0, qk - 1 do L[j] = 0 end
    return 0
  end
  -- candidates around round to nearest (llama.cpp's reference: d = max / -8 for q4_0, amax / 127 for q8_0)
  local best_d, best_score = nil, -1
  for k = -9, 9 do
    local iscale = (nmin == -8) and -(8 + 0.1 * k) / mx or (127 + 0.1 * k) / amax
    local sxl, sll = 0, 0
    for j = 0, qk - 1 do
      local l = round(iscale * x[j])
      if l < nmin then l = nmin elseif l > nmax then l = nmax end
      Lb[j] = l
      local wl = w[j] * l
      sxl = sxl + wl * x[j]
      sll = sll + wl * l
    end
    if sll > 0 then
      local score = sxl * sxl / sll
      if score > best_score then
        best_score = score
        best_d = sxl / sll
        for j = 0, qk - 1 do L[j] = Lb[j] end
      end
    end
  end
  if not best_d then return 0 end
  -- re-round with the stored (f16) scale so values and scale agree
  local dh = C.tide_f16_to_f32(C.tide_f32_to_f16(best_d))
  if dh ~= 0 then
    local id = 1 / dh
    for j = 0, qk - 1 do
      local l = round(x[j] * id)
      if l < nmin then l = nmin elseif l > nmax then l = nmax end
      L[j] = l
    end
  end
  return best_d
end

-- q4_k: per 32-value sub-block, the weighted least-squares (scale, min) over
-- a grid of level assignments (as the reference quantizer, but with the
-- importance weights), then 6-bit scales and mins under f16 super-scales.
local function qkx(n, x, w, L, La)
  local mn, mx, sw, sx = x[0], x[0], 0, 0
  for i = 0, n - 1 do
    if x[i] < mn then mn = x[i] end
    if x[i] > mx then mx = x[i] end
    sw = sw + w[i]
    sx = sx + w[i] * x[i]
  end
  if mn > 0 then mn = 0 end
  if mx == mn then
    for i = 0, n - 1 do L[i] = 0 end
    return 0, -mn
  end
  local iscale = 15 / (mx - mn)
  local scale = 1 / iscale
  local best = 0
  for i = 0, n - 1 do
    local l = round(iscale * (x[i] - mn))
    if l < 0 then l = 0 elseif l > 15 then l = 15 end
    L[i] = l
    local df = scale * l + mn - x[i]
    best = best + w[i] * df * df
  end
  for is = 0, 20 do
    iscale = (-1 + 0.1 * is + 15) / (mx - mn)
    local sl, sl2, sxl = 0, 0, 0
    for i = 0, n - 1 do
      local l = round(iscale * (x[i] - mn))
      if l < 0 then l = 0 elseif l > 15 then l = 15 end
      La[i] = l
      local wl = w[i] * l
      sl, sl2, sxl = sl + wl, sl2 + wl * l, sxl + wl * x[i]
    end
    local D = sw * sl2 - sl * sl
    if D > 0 then
      local ts = (sw * sxl - sx * sl) / D
      local tm = (sl2 * sx - sl * sxl) / D
      if tm > 0 then tm = 0; ts = sxl / sl2 end
      local e = 0
      for i = 0, n - 1 do
        local df = ts * La[i] + tm - x[i]
        e = e + w[i] * df * df
      end
      if e < best then
        for i = 0, n - 1 do L[i] = La[i] end
        best, scale, mn = e, ts, tm
      end
    end
  end
  return scale, -mn
end

local function f16r(v) return C.tide_f16_to_f32(C.tide_f32_to_f16(v)) end

local function q4_k_block(x, w, ob, L, La, hp)
  local scales, mins = {}, {}
  local ms, mm = 0, 0
  for j = 0, 7 do
    scales[j], mins[j] = qkx(32, x + 32 * j, w + 32 * j, L + 32 * j, La)
    if scales[j] > ms then ms = scales[j] end
    if mins[j] > mm then mm = mins[j] end
  end
  local isc = ms > 0 and 63 / ms or 0
  local imn = mm > 0 and 63 / mm or 0
  local sc = ob + 4
  for j = 0, 11 do sc[j] = 0 end
  local ls, lm = {}, {}
  for j = 0, 7 do
    ls[j] = math.max(0, math.min(63, round(isc * scales[j])))
    lm[j] = math.max(0, math.min(63, round(imn * mins[j])))
    if j < 4 then
      sc[j] = ls[j]
      sc[j + 4] = lm[j]
    else
      sc[j + 4] = bit.bor(bit.band(ls[j], 15), bit.lshift(bit.band(lm[j], 15), 4))
      sc[j - 4] = bit.bor(sc[j - 4], bit.lshift(bit.rshift(ls[j], 4), 6))
      sc[j] = bit.bor(sc[j], bit.lshift(bit.rshift(lm[j], 4), 6))
    end
  end
  hp[0] = C.tide_f32_to_f16(ms / 63)
  ffi.copy(ob, hp, 2)
  hp[0] = C.tide_f32_to_f16(mm / 63)
  ffi.copy(ob + 2, hp, 2)
  local d, dmin = f16r(ms / 63), f16r(mm / 63)
  for j = 0, 7 do
    local dj = d * ls[j]
    if dj ~= 0 then
      local dm = dmin * lm[j]
      for l = 0, 31 do
        local q = round((x[32 * j + l] + dm) / dj)
        if q < 0 then q = 0 elseif q > 15 then q = 15 end
        L[32 * j + l] = q
      end
    end
  end
  local q = ob + 16
  for c = 0, 3 do
    for l = 0, 31 do q[32 * c + l] = L[64 * c + l] + 16 * L[64 * c + 32 + l] end
  end
end

-- quantize(t, dtype, imat) -> tensor of dtype. t: float matrix (rows, K) or
-- stack (E, rows, K); imat: double[K] means, or a list of E of them (per
-- stacked matrix), or nil (uniform importance).
function M.quantize(t, dtype, imat)
  local b = BLOCK[dtype]
  if not b then return t:to(dtype) end
  local x32 = t:dtype() == "f32" and t:contiguous() or t:to("f32")
  local shape = t:shape()
  local K = shape[#shape]
  local rows = x32:numel() / K
  local per = #shape == 3 and shape[2] or rows
  local out = T.zeros(shape, dtype)
  local src = ffi.cast("float*", x32:cdata().data)
  local dst = ffi.cast("uint8_t*", out:cdata().data)
  local qk = b.qk
  local w = ffi.new("double[?]", qk)
  local L = ffi.new("int32_t[?]", qk)
  local Lb = ffi.new("int32_t[?]", qk)
  local rb = K / qk * b.bytes
  local hp = ffi.new("uint16_t[1]")
  for r = 0, rows - 1 do
    local im = imat
    if type(imat) == "table" then im = imat[math.floor(r / per) + 1] end
    local row = src + r * K
    local s2 = 0
    for j = 0, K - 1 do s2 = s2 + row[j] * row[j] end
    local sigma2 = s2 / K
    local orow = dst + r * rb
    for bi = 0, K / qk - 1 do
      local x = row + bi * qk
      for j = 0, qk - 1 do
        local imp = im and im[bi * qk + j] or 1
        w[j] = imp * math.sqrt(sigma2 + x[j] * x[j])
      end
      local ob = orow + bi * b.bytes
      if dtype == "q4_k" then
        q4_k_block(x, w, ob, L, Lb, hp)
        goto next_block
      end
      local d = block(x, w, qk, b.nmin, b.nmax, L, Lb)
      hp[0] = C.tide_f32_to_f16(d)
      ffi.copy(ob, hp, 2)
      if dtype == "q8_0" then
        local q = ffi.cast("int8_t*", ob + 2)
        for j = 0, qk - 1 do q[j] = L[j] end
      else
        for j = 0, 15 do ob[2 + j] = (L[j] + 8) + (L[j + 16] + 8) * 16 end
      end
      ::next_block::
    end
  end
  if x32 ~= t then x32:free() end
  return out
end

return M
