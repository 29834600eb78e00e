-- tide.ab.report: a trial's folder: report.md, report.json and SVG plots
-- (written directly: latency CDFs per arm; throughput vs latency for sweeps).
local S = require "tide.ab.stats"
local R = require "tide.ab.runner"

local M = {}

local COLORS = { "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf" }

local function esc(s) return (tostring(s):gsub("&", "&amp;"):gsub("<", "&lt;"):gsub(">", "&gt;")) end

-- svg_plot{ title, xlabel, ylabel, series = { {label, points = {{x,y}...}, line=true, marks=true} } } -> string
function M.svg_plot(p)
  local W, H, L, Rm, Tm, B = 640, 400, 70, 160, 40, 50
  local xmin, xmax, ymin, ymax = math.huge, -math.huge, math.huge, -math.huge
  for _, s in ipairs(p.series) do
    for _, pt in ipairs(s.points) do
      xmin, xmax = math.min(xmin, pt[1]), math.max(xmax, pt[1])
      ymin, ymax = math.min(ymin, pt[2]), math.max(ymax, pt[2])
    end
  end
  if xmin == math.huge then xmin, xmax, ymin, ymax = 0, 1, 0, 1 end
  if p.ymin then ymin = p.ymin end
  if p.xmin then xmin = p.xmin end
  if xmax <= xmin then xmax = xmin + 1 end
  if ymax <= ymin then ymax = ymin + 1 end
  local pw, ph = W - L - Rm, H - Tm - B
  local function X(x) return L + (x - xmin) / (xmax - xmin) * pw end
  local function Y(y) return Tm + ph - (y - ymin) / (ymax - ymin) * ph end
  local o = {}
  o[#o + 1] = string.format('<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">', W, H, W, H)
  o[#o + 1] = string.format('<rect width="%d" height="%d" fill="white"/>', W, H)
  o[#o + 1] = string.format('<text x="%d" y="22" font-size="15" font-weight="bold">%s</text>', L, esc(p.title or ""))
  o[#o + 1] = string.format('<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#333"/>', L, Tm, pw, ph)
  for k = 0, 4 do
    local xv, yv = xmin + (xmax - xmin) * k / 4, ymin + (ymax - ymin) * k / 4
    o[#o + 1] = string.format('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#ddd"/>', X(xv), Tm, X(xv), Tm + ph)
    o[#o + 1] = string.format('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/>', L, Y(yv), L + pw, Y(yv))
    o[#o + 1] = string.format('<text x="%.1f" y="%d" text-anchor="middle">%.3g</text>', X(xv), Tm + ph + 16, xv)
    o[#o + 1] = string.format('<text x="%d" y="%.1f" text-anchor="end">%.3g</text>', L - 5, Y(yv) + 4, yv)
  end
  o[#o + 1] = string.format('<text x="%d" y="%d" text-anchor="middle">%s</text>', L + pw / 2, H - 10, esc(p.xlabel or ""))
  o[#o + 1] = string.format('<text x="16" y="%d" text-anchor="middle" transform="rotate(-90 16 %d)">%s</text>', Tm + ph / 2, Tm + ph / 2, esc(p.ylabel or ""))
  for i, s in ipairs(p.series) do
    local c = COLORS[(i - 1) % #COLORS + 1]
    local pts = {}
    for _, pt in ipairs(s.points) do pts[#pts + 1] = string.format("%.1f,%.1f", X(pt[1]), Y(pt[2])) end
    if s.line ~= false and #pts > 1 then
      o[#o + 1] = string.format('<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>', c, table.concat(pts, " "))
    end
    if s.marks then
      for _, pt in ipairs(s.points) do
        o[#o + 1] = string.format('<circle cx="%.1f" cy="%.1f" r="4" fill="%s"/>', X(pt[1]), Y(pt[2]), c)
        if pt.label then
          o[#o + 1] = string.format('<text x="%.1f" y="%.1f" font-size="10">%s</text>', X(pt[1]) + 6, Y(pt[2]) - 6, esc(pt.label))
        end
      end
    end
    o[#o + 1] = string.format('<rect x="%d" y="%d" width="12" height="12" fill="%s"/>', L + pw + 10, Tm + 18 * (i - 1), c)
    o[#o + 1] = string.format('<text x="%d" y="%d">%s</text>', L + pw + 26, Tm + 18 * (i - 1) + 11, esc(s.label))
  end
  o[#o + 1] = "</svg>\n"
  return table.concat(o, "\n")
end

-- empirical CDF points of samples (ms)
local function cdf(x)
  local s = {}
  for i = 1, #x do s[i] = x[i] * 1e3 end
  table.sort(s)
  local pts = {}
  local step = math.max(1, math.floor(#s / 200))
  for i = 1, #s, step do pts[#pts + 1] = { s[i], i / #s } end
  if #s > 0 then pts[#pts + 1] = { s[#s], 1 } end
  return pts
end

local function fmt(v, ms)
  if v == nil then return "-" end
  if ms then return string.format("%.2f", v * 1e3) end
  return string.format("%.2f", v)
end

local function mib(b) return b and string.format("%.1f MiB", b / 2 ^ 20) or "-" end

function M.markdown(res)
  local o = {}
  local w = res.workload
  o[#o + 1] = "# Trial report\n"
  o[#o + 1] = string.format("Workload `%s`: %d requests, %s, %d repeats per arm (interleaved, after %d warm-up run(s)).\n",
    w.name, w.requests, w.arrival.closed and ("closed loop at concurrency " .. w.arrival.closed) or
    string.format("Poisson arrivals at %g req/s", w.arrival.rate), res.repeats, res.warmup)
  local head = { "metric (median over repeats)" }
  for _, a in ipairs(res.arms) do head[#head + 1] = a.label .. ": " .. tostring(a.name) end
  o[#o + 1] = "| " .. table.concat(head, " | ") .. " |"
  o[#o + 1] = "|" .. string.rep("---|", #head)
  for _, m in ipairs(R.METRICS) do
    local row = { m.label }
    for _, a in ipairs(res.arms) do row[#row + 1] = fmt(a.median[m.key], m.ms) end
    o[#o + 1] = "| " .. table.concat(row, " | ") .. " |"
  end
  local row = { "peak RSS (process, after reset)" }
  for _, a in ipairs(res.arms) do row[#row + 1] = mib(a.peak_rss) end
  o[#o + 1] = "| " .. table.concat(row, " | ") .. " |"
  row = { "weights (file)" }
  for _, a in ipairs(res.arms) do row[#row + 1] = mib(a.weights_bytes) end
  if res.arms[1].weights_bytes then o[#o + 1] = "| " .. table.concat(row, " | ") .. " |" end
  row = { "KV cache bytes" }
  for _, a in ipairs(res.arms) do row[#row + 1] = mib(a.kv_bytes) end
  o[#o + 1] = "| " .. table.concat(row, " | ") .. " |"
  row = { "KV bytes / token" }
  for _, a in ipairs(res.arms) do row[#row + 1] = tostring(a.kv_bytes_per_token or "-") end
  o[#o + 1] = "| " .. table.concat(row, " | ") .. " |"
  if res.arms[1].quality then
    for _, k in ipairs({ "ppl_ratio", "kld_mean", "kld_p99", "top1" }) do
      row = { "quality: " .. k }
      for _, a in ipairs(res.arms) do
        local q = a.quality or {}
        row[#row + 1] = q[k] and string.format("%.4f", q[k]) or (q.error and ("error: " .. q.error) or "-")
      end
      o[#o + 1] = "| " .. table.concat(row, " | ") .. " |"
    end
  end
  o[#o + 1] = ""
  o[#o + 1] = "Peak RSS is the process's high-water mark reset before each run; every arm's model is loaded in the same process, so it includes all arms' resident weights.\n"
  for i = 2, #res.arms do
    local v = res.verdicts[i]
    o[#o + 1] = string.format("## %s vs %s\n", res.arms[i].label, res.arms[1].label)
    o[#o + 1] = string.format("**Throughput (output tok/s): %s**\n", (v.headline.verdict:gsub("^B ", res.arms[i].label .. " ")))
    o[#o + 1] = "| metric | " .. res.arms[i].label .. " vs " .. res.arms[1].label .. " | p | verdict |"
    o[#o + 1] = "|---|---|---|---|"
    for _, m in ipairs(R.METRICS) do
      local c = v[m.key]
      o[#o + 1] = string.format("| %s | %s | %s | %s |", m.label,
        c.rel and string.format("%+.1f%% [%+.1f%%, %+.1f%%]", c.rel * 100, c.lo * 100, c.hi * 100) or "-",
        c.p and string.format("%.3f", c.p) or "-", c.verdict)
    end
    o[#o + 1] = ""
  end
  o[#o + 1] = "Differences are stated only when a permutation test over repeats gives p < 0.05 and the 95% CI (bootstrap and t, the wider) excludes zero.\n"
  o[#o + 1] = "![TTFT](ttft.svg) ![ITL](itl.svg)"
  if res.sweep then o[#o + 1] = "\n![throughput vs latency](sweep.svg)" end
  return table.concat(o, "\n") .. "\n"
end

local function writefile(path, s)
  local f, e = io.open(path, "wb")
  if not f then return nil, e end
  f:write(s)
  f:close()
  return true
end

function M.json(res)
  local J = require("tide.cmd.args").json
  local o = { workload = {}, repeats = res.repeats, warmup = res.warmup, arms = {}, comparisons = {} }
  for k, v in pairs(res.workload) do if type(v) ~= "function" then o.workload[k] = v end end
  for i, a in ipairs(res.arms) do
    o.arms[i] = { label = a.label, name = a.name, recipe = a.recipe, median = a.median, per_repeat = a.per_repeat,
      peak_rss = a.peak_rss, kv_bytes = a.kv_bytes, weights_bytes = a.weights_bytes, kv_bytes_per_token = a.kv_bytes_per_token, quality = a.quality }
  end
  for i = 2, #res.arms do
    local c = { arm = res.arms[i].label, vs = res.arms[1].label, metrics = {} }
    for k, v in pairs(res.verdicts[i]) do
      c.metrics[k] = { rel = v.rel, lo = v.lo, hi = v.hi, p = v.p, significant = v.significant, verdict = v.verdict }
    end
    o.comparisons[#o.comparisons + 1] = c
  end
  if res.sweep then o.sweep = res.sweep end
  return J(o) .. "\n"
end

function M.write(dir, res)
  os.execute("mkdir -p '" .. dir:gsub("'", "") .. "'")
  local ok, e = writefile(dir .. "/report.md", M.markdown(res))
  if not ok then return nil, "report: " .. tostring(e) end
  ok, e = writefile(dir .. "/report.json", M.json(res))
  if not ok then return nil, "report: " .. tostring(e) end
  for _, which in ipairs({ "ttft", "itl" }) do
    local series = {}
    for i, a in ipairs(res.arms) do series[i] = { label = a.label .. ": " .. tostring(a.name):sub(1, 18), points = cdf(a[which]) } end
    ok, e = writefile(dir .. "/" .. which .. ".svg", M.svg_plot{ title = which:upper() .. " distribution (all repeats)",
      xlabel = which:upper() .. " (ms)", ylabel = "fraction of samples <= x", series = series, ymin = 0, xmin = 0 })
    if not ok then return nil, "report: " .. tostring(e) end
  end
  if res.sweep then
    local itl, ttft = { label = "ITL p50", points = {}, marks = true }, { label = "TTFT p90", points = {}, marks = true }
    for i, a in ipairs(res.arms) do
      local lab = tostring(res.sweep.values[i])
      itl.points[i] = { a.median.tok_s, (a.median.itl_p50 or 0) * 1e3, label = lab }
      ttft.points[i] = { a.median.tok_s, (a.median.ttft_p90 or 0) * 1e3, label = lab }
    end
    ok, e = writefile(dir .. "/sweep.svg", M.svg_plot{ title = "throughput vs latency, " .. res.sweep.key,
      xlabel = "output tokens/s (median)", ylabel = "latency (ms, median over repeats)", series = { itl, ttft }, ymin = 0 })
    if not ok then return nil, "report: " .. tostring(e) end
  end
  return true
end

-- the one-screen summary for the terminal
function M.summary(res)
  local o = {}
  for _, a in ipairs(res.arms) do
    local name = res.sweep and "" or tostring(a.name):sub(1, 24)
    o[#o + 1] = string.format("%s %-24s %8.2f req/s %9.1f tok/s  TTFT p50 %7.2f ms  ITL p50 %6.2f ms", a.label,
      name, a.median.req_s, a.median.tok_s, (a.median.ttft_p50 or 0) * 1e3, (a.median.itl_p50 or 0) * 1e3)
  end
  for i = 2, #res.arms do
    o[#o + 1] = res.arms[i].label .. " vs " .. res.arms[1].label .. " (output tok/s): " ..
      (res.verdicts[i].headline.verdict:gsub("^B ", res.arms[i].label .. " "))
  end
  if res.out then o[#o + 1] = "report: " .. res.out .. "/report.md" end
  return table.concat(o, "\n")
end

M.median = S.median
return M
