-- tide.ab.stats: the numbers behind a trial's verdicts. Medians and
-- percentiles of samples, and the relative difference of arm B against arm
-- A over repeats with a 95% confidence interval and a plain verdict.
--
-- A difference is stated only when two independent checks agree:
--   * a permutation test of "A and B are exchangeable" (exact sign flips of
--     the per-repeat log ratios when the repeats are paired, as interleaved
--     A B A B runs are; seeded random relabelings otherwise) has p < 0.05;
--   * the 95% interval of the relative difference excludes zero. The
--     interval is the wider, end by end, of a seeded bootstrap percentile
--     interval and a Student-t interval on the log ratios, so small samples
--     get honestly wide intervals (the bootstrap alone is too narrow there).
-- Fewer than 6 paired repeats can never reach p < 0.05 with sign flips; the
-- verdict then says so instead of guessing.
--
--   local S = require "tide.ab.stats"
--   local c = S.compare(a_samples, b_samples, { higher_is_better = true, seed = 1 })
--   print(c.verdict)  -- "B is 18.2% faster (95% CI 12.0–24.1%)" / "no difference detected (95% CI -3.1% to 4.0%)"
local M = {}

local function sorted_copy(x)
  local s = {}
  for i = 1, #x do s[i] = x[i] end
  table.sort(s)
  return s
end

-- p-th percentile (0..100) with linear interpolation between order statistics.
function M.percentile(x, p)
  local n = #x
  if n == 0 then return nil end
  local s = sorted_copy(x)
  local h = (n - 1) * p / 100 + 1
  local lo = math.floor(h)
  if lo >= n then return s[n] end
  return s[lo] + (h - lo) * (s[lo + 1] - s[lo])
end

function M.median(x) return M.percentile(x, 50) end

function M.mean(x)
  local s = 0
  for i = 1, #x do s = s + x[i] end
  return #x > 0 and s / #x or nil
end

function M.sd(x)
  local n = #x
  if n < 2 then return 0 end
  local m, s = M.mean(x), 0
  for i = 1, n do s = s + (x[i] - m) ^ 2 end
  return math.sqrt(s / (n - 1))
end

-- A small deterministic generator (xorshift32), so verdicts never depend on
-- global random state. rng() -> float in [0, 1).
function M.rng(seed)
  local bit = require "bit"
  local x = bit.tobit(seed and math.floor(seed) or 1)
  if x == 0 then x = 0x2545F491 end
  return function()
    x = bit.bxor(x, bit.lshift(x, 13))
    x = bit.bxor(x, bit.rshift(x, 17))
    x = bit.bxor(x, bit.lshift(x, 5))
    return (x % 4294967296) / 4294967296
  end
end

-- Two-sided Student t quantile for 95% (df >= 1).
local T975 = { 12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
  2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042 }
function M.t975(df)
  if df < 1 then return math.huge end
  return T975[df] or (1.96 + 2.4 / df) -- within 0.1% of the true value beyond 30
end

local function mean_of(x, idx, n)
  local s = 0
  for i = 1, n do s = s + x[idx[i]] end
  return s / n
end

-- Paired: d[i] = log(B_i / A_i). Returns est (mean of d), lo, hi (log
-- scale), p-value.
local function paired(d, opts)
  local n = #d
  local est = M.mean(d)
  -- exact sign-flip permutation test on |mean| (n <= 16), else seeded Monte Carlo
  local rng = M.rng(opts.seed)
  local absd = {}
  for i = 1, n do absd[i] = math.abs(d[i]) end
  local obs = math.abs(est) * n - 1e-12 * n
  local hits, total = 0, 0
  if n <= 16 then
    for mask = 0, 2 ^ n - 1 do
      local s, m = 0, mask
      for i = 1, n do
        if m % 2 == 1 then s = s - absd[i] else s = s + absd[i] end
        m = math.floor(m / 2)
      end
      if math.abs(s) >= obs then hits = hits + 1 end
      total = total + 1
    end
  else
    for _ = 1, opts.permutations do
      local s = 0
      for i = 1, n do if rng() < 0.5 then s = s - absd[i] else s = s + absd[i] end end
      if math.abs(s) >= obs then hits = hits + 1 end
      total = total + 1
    end
    hits, total = hits + 1, total + 1
  end
  local p = hits / total
  -- bootstrap percentile interval of the mean
  local B, means, idx = opts.bootstrap, {}, {}
  for b = 1, B do
    for i = 1, n do idx[i] = 1 + math.floor(rng() * n) end
    means[b] = mean_of(d, idx, n)
  end
  local blo, bhi = M.percentile(means, 2.5), M.percentile(means, 97.5)
  local half = M.t975(n - 1) * M.sd(d) / math.sqrt(n)
  return est, math.min(blo, est - half), math.max(bhi, est + half), p
end

-- Unpaired: logs of each arm. est = mean(log b) - mean(log a).
local function unpaired(la, lb, opts)
  local na, nb = #la, #lb
  local est = M.mean(lb) - M.mean(la)
  local rng = M.rng(opts.seed)
  local pool = {}
  for i = 1, na do pool[i] = la[i] end
  for i = 1, nb do pool[na + i] = lb[i] end
  local N, hits = na + nb, 1
  for _ = 1, opts.permutations do
    -- partial Fisher-Yates: the first nb of a shuffled pool form "B"
    for i = 1, nb do
      local j = i + math.floor(rng() * (N - i + 1))
      pool[i], pool[j] = pool[j], pool[i]
    end
    local sb, sa = 0, 0
    for i = 1, N do if i <= nb then sb = sb + pool[i] else sa = sa + pool[i] end end
    if math.abs(sb / nb - sa / na) >= math.abs(est) - 1e-12 then hits = hits + 1 end
  end
  local p = hits / (opts.permutations + 1)
  local diffs, ia, ib = {}, {}, {}
  for b = 1, opts.bootstrap do
    for i = 1, na do ia[i] = 1 + math.floor(rng() * na) end
    for i = 1, nb do ib[i] = 1 + math.floor(rng() * nb) end
    diffs[b] = mean_of(lb, ib, nb) - mean_of(la, ia, na)
  end
  local blo, bhi = M.percentile(diffs, 2.5), M.percentile(diffs, 97.5)
  local sa, sb = M.sd(la), M.sd(lb)
  local se = math.sqrt(sa * sa / na + sb * sb / nb)
  local half = M.t975(math.min(na, nb) - 1) * se
  return est, math.min(blo, est - half), math.max(bhi, est + half), p
end

local function pct(x) return string.format("%.1f%%", x * 100) end

-- compare(a, b, opts): a, b lists of positive per-repeat values of one
-- metric. opts: paired (default: #a == #b), higher_is_better (true: bigger
-- is better, e.g. tok/s; false: e.g. latency), better/worse words
-- ("faster"/"slower" by default), seed, bootstrap (2000), permutations
-- (2000), alpha (0.05). Returns { n_a, n_b, median_a, median_b, rel (B/A - 1,
-- the point estimate), lo, hi (95% CI of B/A - 1), p, significant, verdict }.
function M.compare(a, b, opts)
  opts = opts or {}
  local o = { seed = opts.seed or 1, bootstrap = opts.bootstrap or 2000, permutations = opts.permutations or 2000 }
  local alpha = opts.alpha or 0.05
  local hib = opts.higher_is_better ~= false
  local better, worse = opts.better or "faster", opts.worse or "slower"
  local r = { n_a = #a, n_b = #b, median_a = M.median(a), median_b = M.median(b) }
  for _, v in ipairs(a) do if not (v > 0) then r.verdict = "not compared (non-positive values)" return r end end
  for _, v in ipairs(b) do if not (v > 0) then r.verdict = "not compared (non-positive values)" return r end end
  local paired_ok = opts.paired
  if paired_ok == nil then paired_ok = #a == #b end
  local est, lo, hi, p
  if paired_ok then
    if #a ~= #b then error("stats.compare: paired samples need equal lengths", 2) end
    if #a < 2 then r.verdict = "no difference detected (too few repeats to tell)" r.significant = false return r end
    local d = {}
    for i = 1, #a do d[i] = math.log(b[i] / a[i]) end
    est, lo, hi, p = paired(d, o)
  else
    if #a < 2 or #b < 2 then r.verdict = "no difference detected (too few repeats to tell)" r.significant = false return r end
    local la, lb = {}, {}
    for i = 1, #a do la[i] = math.log(a[i]) end
    for i = 1, #b do lb[i] = math.log(b[i]) end
    est, lo, hi, p = unpaired(la, lb, o)
  end
  r.rel, r.lo, r.hi, r.p = math.exp(est) - 1, math.exp(lo) - 1, math.exp(hi) - 1, p
  r.significant = p < alpha and (lo > 0 or hi < 0)
  local ci = string.format("95%% CI %s to %s", pct(r.lo), pct(r.hi))
  if r.significant then
    -- "B is 18% faster": for a lower-is-better metric, a 20% longer time is "20% slower"
    local up = r.rel > 0
    local word = (up == hib) and better or worse
    -- the interval in the verdict's own direction: "B is 18.0% faster (95% CI 12.0–24.1%)"
    local a, b = math.abs(r.lo), math.abs(r.hi)
    r.verdict = string.format("B is %s %s (95%% CI %.1f\226\128\147%.1f%%)", pct(math.abs(r.rel)), word,
      math.min(a, b) * 100, math.max(a, b) * 100)
  else
    if paired_ok and #a < 6 then
      r.verdict = string.format("too few repeats to tell (%s; fewer than 6 repeats cannot show a difference)", ci)
    else
      r.verdict = string.format("no difference detected (%s)", ci)
    end
  end
  return r
end

return M
