-- tide.plan.plot: the throughput / latency picture of a plan, as SVG (a file
-- any browser opens) or as text (a terminal). No dependencies.
--
--   local plot = require "tide.plan.plot"
--   local fig = { title = "...", xlabel = "TPOT (ms)", ylabel = "output tok/s per node",
--     series = { { label = "decode", points = { { x = 12.5, y = 3000, tag = "b1" }, ... } } },
--     vline = { x = 50, label = "SLO" },            -- optional
--     mark = { x = 40, y = 27000, label = "plan" } } -- optional: the point the plan picked
--   plot.svg(fig)  -> SVG text;  plot.text(fig, 64, 16) -> lines for a terminal
local M = {}

-- bounds over every point (and the marks), padded; y starts at 0
local function bounds(fig)
  local x0, x1, y1 = math.huge, -math.huge, 0
  local function see(x, y)
    if x and x == x and x < math.huge then x0, x1 = math.min(x0, x), math.max(x1, x) end
    if y and y == y and y < math.huge then y1 = math.max(y1, y) end
  end
  for _, s in ipairs(fig.series) do for _, p in ipairs(s.points) do see(p.x, p.y) end end
  if fig.vline then see(fig.vline.x, nil) end
  if fig.mark then see(fig.mark.x, fig.mark.y) end
  if x0 == math.huge then x0, x1 = 0, 1 end
  if x1 <= x0 then x1 = x0 + 1 end
  local pad = (x1 - x0) * 0.05
  x0 = math.max(0, x0 - pad)
  x1 = x1 + pad
  if y1 <= 0 then y1 = 1 end
  return x0, x1, 0, y1 * 1.08
end
M.bounds = bounds

-- a "nice" step for about n ticks over [a, b]
local function ticks(a, b, n)
  local raw = (b - a) / n
  local mag = 10 ^ math.floor(math.log10(raw))
  local step = mag
  for _, m in ipairs({ 1, 2, 5, 10 }) do
    if m * mag >= raw then step = m * mag break end
  end
  local t = {}
  local v = math.ceil(a / step) * step
  while v <= b + 1e-9 * step do t[#t + 1] = v v = v + step end
  return t
end
M.ticks = ticks

local function num(v)
  if v >= 1e6 then return string.format("%.3gM", v / 1e6) end
  if v >= 1e4 then return string.format("%.3gk", v / 1e3) end
  return string.format("%.4g", v)
end

local function esc(s) return (tostring(s):gsub("&", "&amp;"):gsub("<", "&lt;"):gsub(">", "&gt;"):gsub('"', "&quot;")) end

local COLORS = { "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b" }

function M.svg(fig)
  local W, Hh, L, R, Tp, B = 720, 440, 80, 20, 40, 60
  local x0, x1, y0, y1 = bounds(fig)
  local function X(x) return L + (x - x0) / (x1 - x0) * (W - L - R) end
  local function Y(y) return Hh - B - (y - y0) / (y1 - y0) * (Hh - Tp - B) end
  local o = {}
  local function w(fmt, ...) o[#o + 1] = string.format(fmt, ...) end
  w('<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">',
    W, Hh, W, Hh)
  w('<rect width="%d" height="%d" fill="white"/>', W, Hh)
  w('<text x="%d" y="22" font-size="14" text-anchor="middle">%s</text>', W / 2, esc(fig.title or ""))
  for _, t in ipairs(ticks(x0, x1, 8)) do
    w('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#ddd"/>', X(t), Tp, X(t), Hh - B)
    w('<text x="%.1f" y="%d" text-anchor="middle">%s</text>', X(t), Hh - B + 16, num(t))
  end
  for _, t in ipairs(ticks(y0, y1, 6)) do
    w('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/>', L, Y(t), W - R, Y(t))
    w('<text x="%d" y="%.1f" text-anchor="end">%s</text>', L - 6, Y(t) + 4, num(t))
  end
  w('<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#333"/>', L, Tp, W - L - R, Hh - Tp - B)
  w('<text x="%.1f" y="%d" text-anchor="middle">%s</text>', L + (W - L - R) / 2, Hh - 18, esc(fig.xlabel or ""))
  w('<text x="16" y="%.1f" text-anchor="middle" transform="rotate(-90 16 %.1f)">%s</text>', Tp + (Hh - Tp - B) / 2,
    Tp + (Hh - Tp - B) / 2, esc(fig.ylabel or ""))
  if fig.vline then
    w('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#d62728" stroke-dasharray="6 4"/>', X(fig.vline.x), Tp,
      X(fig.vline.x), Hh - B)
    local right = X(fig.vline.x) > W - R - 90 -- near the right edge: label on the line's left
    w('<text x="%.1f" y="%d" fill="#d62728" text-anchor="%s">%s</text>', X(fig.vline.x) + (right and -4 or 4), Tp + 14,
      right and "end" or "start", esc(fig.vline.label or ""))
  end
  for si, s in ipairs(fig.series) do
    local c = COLORS[(si - 1) % #COLORS + 1]
    if s.line ~= false and #s.points > 1 then
      local pts = {}
      for _, p in ipairs(s.points) do pts[#pts + 1] = string.format("%.1f,%.1f", X(p.x), Y(p.y)) end
      w('<polyline points="%s" fill="none" stroke="%s" stroke-width="1.5"/>', table.concat(pts, " "), c)
    end
    for _, p in ipairs(s.points) do
      w('<circle cx="%.1f" cy="%.1f" r="3" fill="%s"><title>%s</title></circle>', X(p.x), Y(p.y), c,
        esc(string.format("%s: x %.4g, y %.4g", p.tag or s.label or "", p.x, p.y)))
      if p.tag and s.tags ~= false then
        w('<text x="%.1f" y="%.1f" font-size="10" fill="#555">%s</text>', X(p.x) + 5, Y(p.y) - 5, esc(p.tag))
      end
    end
    w('<text x="%d" y="%d" fill="%s">%s</text>', L + 10, Tp + 16 + 16 * (si - 1), c, esc(s.label or ""))
  end
  if fig.mark then
    w('<circle cx="%.1f" cy="%.1f" r="7" fill="none" stroke="black" stroke-width="2"/>', X(fig.mark.x), Y(fig.mark.y))
    w('<text x="%.1f" y="%.1f" font-weight="bold">%s</text>', X(fig.mark.x) + 10, Y(fig.mark.y) + 16,
      esc(fig.mark.label or ""))
  end
  w("</svg>")
  return table.concat(o, "\n") .. "\n"
end

-- Several figures stacked in one SVG page
function M.page(figs)
  local o = { string.format('<svg xmlns="http://www.w3.org/2000/svg" width="720" height="%d">', 440 * #figs) }
  for i, f in ipairs(figs) do
    o[#o + 1] = (M.svg(f):gsub("^<svg ", string.format('<svg x="0" y="%d" ', 440 * (i - 1)), 1))
  end
  o[#o + 1] = "</svg>\n"
  return table.concat(o, "\n")
end

-- The same figure on a w x h character grid: series by their first letter
-- (or digit), the mark as '@', the vertical line as '|'.
function M.text(fig, w, h)
  w, h = w or 64, h or 16
  local x0, x1, y0, y1 = bounds(fig)
  local grid = {}
  for r = 1, h do
    grid[r] = {}
    for c = 1, w do grid[r][c] = " " end
  end
  local function cell(x, y)
    local c = math.floor((x - x0) / (x1 - x0) * (w - 1) + 0.5) + 1
    local r = h - math.floor((y - y0) / (y1 - y0) * (h - 1) + 0.5)
    if c >= 1 and c <= w and r >= 1 and r <= h then return r, c end
  end
  if fig.vline then
    local _, c = cell(fig.vline.x, y0)
    if c then for r = 1, h do grid[r][c] = "|" end end
  end
  local keys = {}
  for si, s in ipairs(fig.series) do
    local ch = s.char or tostring(s.label or ""):match("%w") or tostring(si)
    keys[#keys + 1] = ch .. " " .. (s.label or "")
    for _, p in ipairs(s.points) do
      local r, c = cell(p.x, p.y)
      if r then grid[r][c] = ch end
    end
  end
  if fig.mark then
    local r, c = cell(fig.mark.x, fig.mark.y)
    if r then grid[r][c] = "@" end
    keys[#keys + 1] = "@ " .. (fig.mark.label or "")
  end
  local lab = 9
  local out = { fig.title or "" }
  for r = 1, h do
    local yv = y1 - (r - 1) / (h - 1) * (y1 - y0)
    local left = (r == 1 or r == h or r == math.floor(h / 2) + 1) and num(yv) or ""
    out[#out + 1] = string.rep(" ", lab - #left) .. left .. " |" .. table.concat(grid[r])
  end
  out[#out + 1] = string.rep(" ", lab) .. " +" .. string.rep("-", w)
  local xl, xr = num(x0), num(x1)
  out[#out + 1] = string.rep(" ", lab + 2) .. xl .. string.rep(" ", math.max(1, w - #xl - #xr)) .. xr
  out[#out + 1] = string.rep(" ", lab + 2) .. (fig.xlabel or "") .. "   vs   " .. (fig.ylabel or "")
  if fig.vline then keys[#keys + 1] = "| " .. (fig.vline.label or "") end
  out[#out + 1] = string.rep(" ", lab + 2) .. table.concat(keys, "   ")
  return out
end

return M
