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
  if p.xmax then xmax = math.max(xmax, p.xmax) end
  if p.ymax then ymax = math.max(ymax, p.ymax) end
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

-- A sequential colour for v in [0, 1] (white -> dark blue).
local function ramp(v)
  v = math.max(0, math.min(1, v))
  local a, b = { 247, 251, 255 }, { 8, 48, 107 }
  return string.format("#%02x%02x%02x", math.floor(a[1] + (b[1] - a[1]) * v + 0.5),
    math.floor(a[2] + (b[2] - a[2]) * v + 0.5), math.floor(a[3] + (b[3] - a[3]) * v + 0.5))
end
M.ramp = ramp

-- svg_heatmap{ title, note, panels = { {title, rows = {{v...}...}, row_labels, group = k} }, xlabel, ylabel,
--   vmax } -> string. One panel per arm, stacked; every cell's value is shown by colour on one
-- scale shared by all panels (0 .. vmax), with the legend at the right; `group` draws a
-- separator every k columns (EP: the slots of one rank).
function M.svg_heatmap(h)
  local L, Rm, Tm, cell_h, gap = 70, 110, 44, 22, 46
  local ncol = 1
  for _, p in ipairs(h.panels) do for _, row in ipairs(p.rows) do ncol = math.max(ncol, #row) end end
  local cell_w = math.max(12, math.min(36, math.floor(560 / ncol)))
  local pw = cell_w * ncol
  local W = L + pw + Rm
  local vmax = h.vmax or 0
  if not h.vmax then
    for _, p in ipairs(h.panels) do for _, row in ipairs(p.rows) do for _, v in ipairs(row) do vmax = math.max(vmax, v) end end end
  end
  if vmax <= 0 then vmax = 1 end
  local o, y = {}, Tm
  local body = {}
  for _, p in ipairs(h.panels) do
    body[#body + 1] = string.format('<text x="%d" y="%d" font-weight="bold">%s</text>', L, y - 8, esc(p.title or ""))
    for r, row in ipairs(p.rows) do
      local cy = y + (r - 1) * cell_h
      body[#body + 1] = string.format('<text x="%d" y="%d" text-anchor="end">%s</text>', L - 6, cy + cell_h / 2 + 4,
        esc(p.row_labels and p.row_labels[r] or tostring(r)))
      for c = 1, ncol do
        local v = row[c]
        if v then
          body[#body + 1] = string.format('<rect x="%d" y="%d" width="%d" height="%d" fill="%s" stroke="#fff" stroke-width="0.5"><title>%s %d: %.3g</title></rect>',
            L + (c - 1) * cell_w, cy, cell_w, cell_h, ramp(v / vmax), esc(p.row_labels and p.row_labels[r] or r), c - 1, v)
        end
      end
    end
    local nrow, pcol = #p.rows, 0
    for _, row in ipairs(p.rows) do pcol = math.max(pcol, #row) end
    if p.group and p.group > 0 then
      for c = p.group, pcol - 1, p.group do
        body[#body + 1] = string.format('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#d62728" stroke-width="2"/>',
          L + c * cell_w, y - 2, L + c * cell_w, y + nrow * cell_h + 2)
      end
    end
    for c = 0, ncol - 1, math.max(1, math.ceil(ncol / 16)) do
      body[#body + 1] = string.format('<text x="%.1f" y="%d" text-anchor="middle" font-size="10">%d</text>',
        L + (c + 0.5) * cell_w, y + nrow * cell_h + 12, c)
    end
    y = y + nrow * cell_h + gap
  end
  local lx, ly, lh = L + pw + 24, Tm, 120
  local H = math.max(y + 10, ly + lh + 40)
  o[#o + 1] = string.format('<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">', W, H, W, H)
  o[#o + 1] = string.format('<rect width="%d" height="%d" fill="white"/>', W, H)
  o[#o + 1] = string.format('<text x="%d" y="18" font-size="15" font-weight="bold">%s</text>', L, esc(h.title or ""))
  for _, b in ipairs(body) do o[#o + 1] = b end
  o[#o + 1] = string.format('<text x="%d" y="%d" text-anchor="middle">%s</text>', L + pw / 2, H - 8, esc(h.xlabel or ""))
  -- legend: the colour scale
  for k = 0, 19 do
    o[#o + 1] = string.format('<rect x="%d" y="%.1f" width="14" height="%.1f" fill="%s"/>', lx, ly + lh - (k + 1) * lh / 20,
      lh / 20 + 0.5, ramp((k + 0.5) / 20))
  end
  o[#o + 1] = string.format('<rect x="%d" y="%d" width="14" height="%d" fill="none" stroke="#333"/>', lx, ly, lh)
  o[#o + 1] = string.format('<text x="%d" y="%d" font-size="11">%.3g</text>', lx + 18, ly + 8, vmax)
  o[#o + 1] = string.format('<text x="%d" y="%d" font-size="11">0</text>', lx + 18, ly + lh)
  o[#o + 1] = string.format('<text x="%d" y="%d" font-size="11" text-anchor="middle" transform="rotate(90 %d %d)">%s</text>',
    lx + 44, ly + lh / 2, lx + 44, ly + lh / 2, esc(h.legend or ""))
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
  for _, r in ipairs(M.comm_rows(res)) do o[#o + 1] = "| " .. table.concat(r, " | ") .. " |" end
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
  if M.any(res, "parallel") then
    o[#o + 1] = "A parallel arm runs on its ranks as threads of this process; each rank serves its own requests one after another (EP: request i on rank (i-1) mod N), timed from a barrier after a warm-up round. Bytes communicated are the payloads every rank handed to the communicator during the timed round, summed over ranks (median over repeats).\n"
  end
  local imgs = {}
  for _, f in ipairs(M.images(res)) do imgs[#imgs + 1] = string.format("![%s](%s)", f.alt, f.file) end
  o[#o + 1] = table.concat(imgs, " ")
  return table.concat(o, "\n") .. "\n"
end

function M.any(res, key)
  for _, a in ipairs(res.arms) do if a[key] then return true end end
  return false
end

local function has_quality(res)
  for _, a in ipairs(res.arms) do if a.quality and a.quality.kld_mean then return true end end
  return false
end

-- The pictures of a trial's folder, in report order.
function M.images(res)
  local t = { { file = "ttft.svg", alt = "TTFT" }, { file = "itl.svg", alt = "ITL" } }
  if res.sweep then t[#t + 1] = { file = "sweep.svg", alt = "throughput vs latency" } end
  if M.any(res, "expert_loads") then t[#t + 1] = { file = "expert_loads.svg", alt = "expert loads" } end
  if M.any(res, "slot_loads") then t[#t + 1] = { file = "slot_loads.svg", alt = "EP slot loads" } end
  if has_quality(res) then t[#t + 1] = { file = "quality.svg", alt = "quality vs size" } end
  return t
end

-- The worst layer's max/mean rows per rank (slots grouped by rank: slot p on rank floor(p / per)).
function M.imbalance(slot_loads, ranks)
  local worst = 1
  for _, row in ipairs(slot_loads) do
    local per = math.floor(#row / ranks)
    local tot, mx = 0, 0
    for rk = 0, ranks - 1 do
      local s = 0
      for j = rk * per + 1, (rk + 1) * per do s = s + (row[j] or 0) end
      tot, mx = tot + s, math.max(mx, s)
    end
    if tot > 0 then worst = math.max(worst, mx / (tot / ranks)) end
  end
  return worst
end

local function human(b)
  if b >= 2 ^ 20 then return string.format("%.2f MiB", b / 2 ^ 20) end
  if b >= 1024 then return string.format("%.1f KiB", b / 1024) end
  return string.format("%d B", b)
end

-- Rows about ranks and bytes communicated (markdown and HTML tables).
function M.comm_rows(res)
  local rows = { { "ranks" }, { "bytes communicated / run (all ranks)" }, { "bytes by collective / run" },
    { "bytes communicated / output token" } }
  if M.any(res, "slot_loads") then
    local r = { "EP rank load, max / mean (worst MoE layer)" }
    for _, a in ipairs(res.arms) do r[#r + 1] = a.slot_loads and string.format("%.3f", M.imbalance(a.slot_loads, a.ranks)) or "-" end
    rows[#rows + 1] = r
  end
  for _, a in ipairs(res.arms) do
    local plan = a.parallel and (a.ranks .. " (" .. (a.plan or "parallel") .. ")") or "1 (in-process engine)"
    rows[1][#rows[1] + 1] = plan
    if not a.parallel then
      rows[2][#rows[2] + 1], rows[3][#rows[3] + 1], rows[4][#rows[4] + 1] = "0 (one process)", "n/a", "0"
    else
      rows[2][#rows[2] + 1] = a.comm_bytes and human(a.comm_bytes) or "-"
      local parts, names = {}, {}
      for op, b in pairs(a.comm or {}) do if b > 0 then names[#names + 1] = op end end
      table.sort(names)
      for _, op in ipairs(names) do parts[#parts + 1] = op .. " " .. human(a.comm[op]) end
      rows[3][#rows[3] + 1] = #parts > 0 and table.concat(parts, ", ") or "-"
      rows[4][#rows[4] + 1] = (a.comm_bytes and a.out_tokens and a.out_tokens > 0)
        and string.format("%.0f B", a.comm_bytes / a.out_tokens) or "-"
    end
  end
  return rows
end

local writefile = require("tide.files").write

function M.json(res)
  local J = require("tide.cmd.args").json
  local o = { workload = {}, repeats = res.repeats, warmup = res.warmup, arms = {}, comparisons = {} }
  for k, v in pairs(res.workload) do if type(v) ~= "function" then o.workload[k] = v end end
  for i, a in ipairs(res.arms) do
    o.arms[i] = { label = a.label, name = a.name, recipe = a.recipe, median = a.median, per_repeat = a.per_repeat,
      peak_rss = a.peak_rss, kv_bytes = a.kv_bytes, weights_bytes = a.weights_bytes, kv_bytes_per_token = a.kv_bytes_per_token, quality = a.quality,
      ranks = a.ranks, comm_bytes = a.comm_bytes, comm_bytes_by_op = a.comm, expert_loads = a.expert_loads, slot_loads = a.slot_loads }
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
  for name, svg in pairs(M.extra_svgs(res)) do
    ok, e = writefile(dir .. "/" .. name, svg)
    if not ok then return nil, "report: " .. tostring(e) end
  end
  ok, e = writefile(dir .. "/report.html", M.html(res, dir))
  if not ok then return nil, "report: " .. tostring(e) end
  return true
end

-- Loads relative to the layer's mean (1 = an even share), per row.
local function relative(rows)
  local out = {}
  for li, row in ipairs(rows) do
    local sum, n = 0, 0
    for _, v in ipairs(row) do sum, n = sum + v, n + 1 end
    local mean = n > 0 and sum / n or 0
    local r = {}
    for e, v in ipairs(row) do r[e] = mean > 0 and v / mean or 0 end
    out[li] = r
  end
  return out
end

-- The expert-load heatmaps and the quality-vs-size scatter (name -> SVG).
function M.extra_svgs(res)
  local out = {}
  local panels, spanels = {}, {}
  for _, a in ipairs(res.arms) do
    local name = a.label .. ": " .. tostring(a.name):sub(1, 40)
    if a.expert_loads then
      local labels = {}
      for li = 1, #a.expert_loads do labels[li] = "MoE " .. li end
      panels[#panels + 1] = { title = name, rows = relative(a.expert_loads), row_labels = labels }
    end
    if a.slot_loads then
      local labels, per = {}, math.floor(#a.slot_loads[1] / math.max(a.ranks or 1, 1))
      for li = 1, #a.slot_loads do labels[li] = "MoE " .. li end
      spanels[#spanels + 1] = { title = name .. " (" .. (a.ranks or 1) .. " ranks, " .. per .. " slots each)",
        rows = relative(a.slot_loads), row_labels = labels, group = per }
    end
  end
  if #panels > 0 then
    out["expert_loads.svg"] = M.svg_heatmap{ title = "Routed tokens per expert (load / layer mean, all repeats)",
      panels = panels, xlabel = "routed expert", legend = "load / mean load" }
  end
  if #spanels > 0 then
    out["slot_loads.svg"] = M.svg_heatmap{ title = "EP: rows served per physical slot (load / layer mean)",
      panels = spanels, xlabel = "physical expert slot (red lines: rank boundaries)", legend = "load / mean load" }
  end
  if has_quality(res) then
    local series = {}
    for _, a in ipairs(res.arms) do
      local q = a.quality or {}
      if q.kld_mean and a.weights_bytes then
        series[#series + 1] = { label = a.label .. ": " .. tostring(a.name):sub(1, 18), line = false, marks = true,
          points = { { a.weights_bytes / 2 ^ 20, q.kld_mean,
            label = string.format("%s ppl x%.4f, top-1 %.3f", a.label, q.ppl_ratio or 0, q.top1 or 0) } } }
      end
    end
    local xm, ym = 0, 0
    for _, sr in ipairs(series) do xm, ym = math.max(xm, sr.points[1][1]), math.max(ym, sr.points[1][2]) end
    out["quality.svg"] = M.svg_plot{ title = "quality vs size (against the base model)", xlabel = "weights (MiB, file)",
      ylabel = "mean KL divergence (nats/token)", series = series, ymin = 0, xmin = 0, xmax = xm * 1.25, ymax = ym * 1.25 }
  end
  return out
end

local function read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

-- report.html: the report's tables and verdicts with the pictures inline
-- (opens from the folder in any browser; the screenshot test renders it).
function M.html(res, dir)
  local o = {}
  local function cell(tag, v) return "<" .. tag .. ">" .. esc(v) .. "</" .. tag .. ">" end
  o[#o + 1] = '<!DOCTYPE html><html><head><meta charset="utf-8"><title>Trial report</title><style>'
  o[#o + 1] = 'body{font-family:sans-serif;margin:24px;color:#222;background:#fff}table{border-collapse:collapse;margin:8px 0 16px}'
  o[#o + 1] = 'td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}th{background:#eef}td:first-child,th:first-child{text-align:left}'
  o[#o + 1] = '.v{font-weight:bold}.fig{display:inline-block;margin:6px;vertical-align:top}</style></head><body>'
  local w = res.workload
  o[#o + 1] = "<h1>Trial report</h1>"
  o[#o + 1] = "<p>" .. esc(string.format("Workload %s: %d requests, %s, %d repeats per arm (interleaved, after %d warm-up run(s)).",
    w.name, w.requests, w.arrival.closed and ("closed loop at concurrency " .. w.arrival.closed) or
    string.format("Poisson arrivals at %g req/s", w.arrival.rate), res.repeats, res.warmup)) .. "</p>"
  o[#o + 1] = "<table><tr>" .. cell("th", "metric (median over repeats)")
  for _, a in ipairs(res.arms) do o[#o + 1] = cell("th", a.label .. ": " .. tostring(a.name)) end
  o[#o + 1] = "</tr>"
  local function row(cells)
    o[#o + 1] = "<tr>"
    for _, c in ipairs(cells) do o[#o + 1] = cell("td", c) end
    o[#o + 1] = "</tr>"
  end
  for _, m in ipairs(R.METRICS) do
    local r = { m.label }
    for _, a in ipairs(res.arms) do r[#r + 1] = fmt(a.median[m.key], m.ms) end
    row(r)
  end
  local r = { "peak RSS (process)" }
  for _, a in ipairs(res.arms) do r[#r + 1] = mib(a.peak_rss) end
  row(r)
  r = { "weights (file)" }
  for _, a in ipairs(res.arms) do r[#r + 1] = mib(a.weights_bytes) end
  row(r)
  r = { "KV cache bytes" }
  for _, a in ipairs(res.arms) do r[#r + 1] = mib(a.kv_bytes) end
  row(r)
  for _, cr in ipairs(M.comm_rows(res)) do row(cr) end
  if res.arms[1].quality then
    for _, k in ipairs({ "ppl_ratio", "kld_mean", "kld_p99", "top1" }) do
      r = { "quality: " .. k }
      for _, a in ipairs(res.arms) do
        local q = a.quality or {}
        r[#r + 1] = q[k] and string.format("%.4f", q[k]) or "-"
      end
      row(r)
    end
  end
  o[#o + 1] = "</table>"
  for i = 2, #res.arms do
    local v = res.verdicts[i]
    o[#o + 1] = "<h2>" .. esc(res.arms[i].label .. " vs " .. res.arms[1].label) .. "</h2>"
    o[#o + 1] = '<p class="v">' .. esc("Throughput (output tok/s): " .. (v.headline.verdict:gsub("^B ", res.arms[i].label .. " "))) .. "</p>"
    o[#o + 1] = "<table><tr>" .. cell("th", "metric") .. cell("th", res.arms[i].label .. " vs " .. res.arms[1].label) ..
      cell("th", "p") .. cell("th", "verdict") .. "</tr>"
    for _, m in ipairs(R.METRICS) do
      local c = v[m.key]
      row({ m.label, c.rel and string.format("%+.1f%% [%+.1f%%, %+.1f%%]", c.rel * 100, c.lo * 100, c.hi * 100) or "-",
        c.p and string.format("%.3f", c.p) or "-", c.verdict })
    end
    o[#o + 1] = "</table>"
  end
  o[#o + 1] = "<p>Differences are stated only when a permutation test over repeats gives p &lt; 0.05 and the 95% CI (bootstrap and t, the wider) excludes zero.</p>"
  for _, f in ipairs(M.images(res)) do
    local svg = dir and read(dir .. "/" .. f.file)
    o[#o + 1] = '<div class="fig">' .. (svg or string.format('<img src="%s" alt="%s">', f.file, esc(f.alt))) .. "</div>"
  end
  o[#o + 1] = "</body></html>"
  return table.concat(o, "\n") .. "\n"
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
