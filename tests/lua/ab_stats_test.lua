-- tide.ab.stats: the verdict logic of A/B trials on synthetic samples with
-- known answers (no timing involved).
local H = require "helpers"
local S = require "tide.ab.stats"

local T = {}

local function gauss(r)
  local u1, u2 = r(), r()
  return math.sqrt(-2 * math.log(u1 + 1e-300)) * math.cos(2 * math.pi * u2)
end

-- n lognormal samples around `center` with relative noise `sd`
local function samples(r, n, center, sd)
  local x = {}
  for i = 1, n do x[i] = center * math.exp(sd * gauss(r)) end
  return x
end

function T.percentiles_interpolate()
  H.eq(S.median({ 3, 1, 2 }), 2)
  H.eq(S.median({ 4, 1, 2, 3 }), 2.5)
  H.eq(S.percentile({ 10, 20, 30, 40, 50 }, 0), 10)
  H.eq(S.percentile({ 10, 20, 30, 40, 50 }, 100), 50)
  H.near(S.percentile({ 10, 20, 30, 40, 50 }, 90), 46, 1e-12)
  H.eq(S.percentile({}, 50), nil)
  H.near(S.mean({ 1, 2, 3, 4 }), 2.5, 1e-12)
  H.near(S.sd({ 2, 4, 4, 4, 5, 5, 7, 9 }), math.sqrt(32 / 7), 1e-12)
end

function T.rng_is_seeded_and_uniform()
  local a, b = S.rng(7), S.rng(7)
  local s = 0
  for _ = 1, 1000 do
    local x = a()
    H.eq(x, b(), "same seed, same stream")
    H.truthy(x >= 0 and x < 1, "in [0,1)")
    s = s + x
  end
  H.near(s / 1000, 0.5, 0.05, "mean of uniforms")
  H.truthy(S.rng(8)() ~= S.rng(7)(), "different seeds differ")
end

function T.identical_distributions_show_no_difference()
  -- 1000 seeded A/A trials of 10 repeats, 8% noise: a 95% procedure must stay quiet in >= 95%
  -- (the exact sign-flip test bounds false alarms by 5%; 1000 trials resolve that to about +-0.7%)
  local quiet, N = 0, 1000
  for t = 1, N do
    local r = S.rng((t * 2654435761) % 2147483647 + 1)
    local a, b = samples(r, 10, 100, 0.08), samples(r, 10, 100, 0.08)
    local c = S.compare(a, b, { seed = t, bootstrap = 500 })
    if not c.significant then
      quiet = quiet + 1
      H.truthy(c.verdict:match("^no difference detected"), c.verdict)
    end
  end
  -- The exact sign-flip test caps false alarms at 51/1024 = 4.98% in expectation; the check allows
  -- two binomial standard deviations of sampling noise (0.7% each at N = 1000), so a procedure
  -- that alarms in 7% or more of A/A trials fails it.
  H.truthy(quiet >= N * (0.95 - 2 * math.sqrt(0.05 * 0.95 / N)), string.format("A/A trials quiet: %d of %d", quiet, N))
end

function T.planted_20pct_shift_is_detected()
  for t = 1, 20 do
    local r = S.rng(5000 + t)
    local a, b = samples(r, 10, 100, 0.05), samples(r, 10, 80, 0.05) -- B's throughput 20% lower
    local c = S.compare(a, b, { seed = t, higher_is_better = true })
    H.truthy(c.significant, "trial " .. t .. ": " .. c.verdict)
    H.truthy(c.hi < 0 and c.lo < c.rel and c.rel < c.hi, "CI excludes zero and holds the estimate")
    H.truthy(c.lo < -0.2 + 0.1 and c.hi > -0.2 - 0.1, "CI near the planted -20%")
    H.truthy(c.verdict:match("^B is %d+%.%d%% slower %(95%% CI"), c.verdict)
  end
  -- a latency 20% higher is "slower" too; 20% lower is "faster"
  local r = S.rng(99)
  local a, b = samples(r, 10, 10, 0.03), samples(r, 10, 12, 0.03)
  H.truthy(S.compare(a, b, { higher_is_better = false }).verdict:match("slower"))
  H.truthy(S.compare(b, a, { higher_is_better = false }).verdict:match("faster"))
  H.truthy(S.compare(a, b, { higher_is_better = true }).verdict:match("faster"))
end

function T.small_samples_get_wide_intervals_and_no_claims()
  -- 3 repeats with a real 20% shift: too few for a 5% test; the interval is wide and honest
  local r = S.rng(3)
  local a, b = samples(r, 3, 100, 0.08), samples(r, 3, 120, 0.08)
  local c = S.compare(a, b, { higher_is_better = false })
  H.eq(c.significant, false)
  H.truthy(c.verdict:match("^too few repeats to tell"), c.verdict)
  H.truthy(c.hi - c.lo > 0.2, string.format("CI width %.3f", c.hi - c.lo))
  local c10 = S.compare(samples(r, 10, 100, 0.08), samples(r, 10, 120, 0.08), { higher_is_better = false })
  H.truthy(c.hi - c.lo > 2 * (c10.hi - c10.lo), "3 repeats give a much wider CI than 10")
  -- one repeat: nothing to say
  local c1 = S.compare({ 1 }, { 2 })
  H.eq(c1.significant, false)
  H.truthy(c1.verdict:match("too few"), c1.verdict)
  -- non-positive values are refused, not compared
  H.truthy(S.compare({ 1, 0 }, { 1, 1 }).verdict:match("not compared"))
end

function T.results_are_deterministic()
  local r = S.rng(11)
  local a, b = samples(r, 8, 50, 0.1), samples(r, 8, 55, 0.1)
  local c1 = S.compare(a, b, { seed = 4 })
  local c2 = S.compare(a, b, { seed = 4 })
  H.eq(c1.lo, c2.lo) H.eq(c1.hi, c2.hi) H.eq(c1.p, c2.p) H.eq(c1.verdict, c2.verdict)
end

function T.unpaired_samples()
  local quiet, found = 0, 0
  for t = 1, 40 do
    local r = S.rng(700 + t)
    local a, b = samples(r, 12, 100, 0.06), samples(r, 9, 100, 0.06)
    if not S.compare(a, b, { seed = t, bootstrap = 400, permutations = 400 }).significant then quiet = quiet + 1 end
    local b2 = samples(r, 9, 125, 0.06)
    local c = S.compare(a, b2, { seed = t, bootstrap = 400, permutations = 400 })
    if c.significant and c.lo > 0 then found = found + 1 end
  end
  H.truthy(quiet >= 36, "unpaired A/A quiet " .. quiet .. "/40")
  H.truthy(found >= 38, "unpaired +25% found " .. found .. "/40")
end

return T
