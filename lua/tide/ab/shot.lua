-- tide.ab.shot: render a report (HTML or SVG) with headless Chromium to a
-- PNG, and read a PNG back to check what was drawn (zlib through the FFI).
--
--   local shot = require "tide.ab.shot"
--   local ok, e = shot.screenshot("out/report.html", "out/report.png", { width = 1400, height = 2000 })
--   local img = assert(shot.read_png("out/report.png"))
--   print(img.width, img.height, shot.stats(img).colours)
--
-- read_png decodes what Chromium writes: 8-bit greyscale, grey+alpha, RGB
-- or RGBA, not interlaced, all five row filters.
local ffi = require "ffi"

local M = {}

pcall(ffi.cdef, [[
int uncompress(uint8_t *dest, unsigned long *destLen, const uint8_t *source, unsigned long sourceLen);
int compress(uint8_t *dest, unsigned long *destLen, const uint8_t *source, unsigned long sourceLen);
unsigned long crc32(unsigned long crc, const uint8_t *buf, unsigned int len);
]])

local zlib
-- The zlib library (nil, err when it cannot be loaded).
function M.zlib()
  if zlib then return zlib end
  for _, name in ipairs({ "z", "libz.so.1" }) do
    local ok, lib = pcall(ffi.load, name)
    if ok then zlib = lib return lib end
  end
  return nil, "zlib (libz.so.1) not found"
end

-- The Chromium executable (nil when none is installed).
function M.chromium()
  for _, name in ipairs({ os.getenv("TIDE_CHROMIUM") or "", "chromium", "chromium-browser", "google-chrome",
    "chromium-headless-shell" }) do
    if name ~= "" then
      local p = io.popen("command -v " .. name .. " 2>/dev/null")
      local path = p:read("*l")
      p:close()
      if path and path ~= "" then return path end
    end
  end
  return nil
end

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local function abspath(path)
  if path:sub(1, 1) == "/" then return path end
  local p = io.popen("pwd")
  local d = p:read("*l")
  p:close()
  return d .. "/" .. path
end

-- screenshot(page, png, opts) -> true or nil, err. opts: width (1400), height (2000), timeout (60 s).
function M.screenshot(page, png, opts)
  opts = opts or {}
  local exe = M.chromium()
  if not exe then return nil, "chromium is not installed (scripts/deps.sh installs it)" end
  local f = io.open(page, "rb")
  if not f then return nil, "screenshot: cannot read " .. page end
  f:close()
  local p = io.popen("mktemp -d")
  local profile = p:read("*l")
  p:close()
  os.remove(png)
  local cmd = string.format("timeout %d %s --headless --no-sandbox --disable-gpu --hide-scrollbars --no-first-run "
    .. "--user-data-dir=%s --window-size=%d,%d --screenshot=%s %s >/dev/null 2>&1",
    opts.timeout or 60, q(exe), q(profile), opts.width or 1400, opts.height or 2000, q(abspath(png)),
    q("file://" .. abspath(page)))
  os.execute(cmd)
  os.execute("rm -rf " .. q(profile))
  local g = io.open(png, "rb")
  if not g then return nil, "screenshot: chromium wrote no " .. png end
  g:close()
  return true
end

local function be32(s, i)
  local a, b, c, d = s:byte(i, i + 3)
  return ((a * 256 + b) * 256 + c) * 256 + d
end

local CHANNELS = { [0] = 1, [2] = 3, [4] = 2, [6] = 4 }

-- read_png(path) -> { width, height, channels, px = uint8_t[height*width*channels] } or nil, err
function M.read_png(path)
  local z, ze = M.zlib()
  if not z then return nil, ze end
  local f = io.open(path, "rb")
  if not f then return nil, "png: cannot read " .. path end
  local s = f:read("*a")
  f:close()
  if s:sub(1, 8) ~= "\137PNG\r\n\26\n" then return nil, "png: not a PNG file" end
  local i, w, h, depth, ctype, interlace = 9, nil, nil, nil, nil, nil
  local idat = {}
  while i + 8 <= #s do
    local len, typ = be32(s, i), s:sub(i + 4, i + 7)
    if i + 12 + len - 1 > #s then return nil, "png: truncated chunk " .. typ end
    local data = s:sub(i + 8, i + 7 + len)
    if typ == "IHDR" then
      w, h = be32(data, 1), be32(data, 5)
      depth, ctype, interlace = data:byte(9), data:byte(10), data:byte(13)
    elseif typ == "IDAT" then
      idat[#idat + 1] = data
    elseif typ == "IEND" then
      break
    end
    i = i + 12 + len
  end
  if not w then return nil, "png: no IHDR" end
  if depth ~= 8 or not CHANNELS[ctype] then
    return nil, string.format("png: bit depth %d, colour type %d not supported", depth, ctype)
  end
  if interlace ~= 0 then return nil, "png: interlaced images are not supported" end
  local ch = CHANNELS[ctype]
  local stride = w * ch
  local raw_len = h * (stride + 1)
  local raw = ffi.new("uint8_t[?]", raw_len)
  local n = ffi.new("unsigned long[1]", raw_len)
  local src = table.concat(idat)
  local rc = z.uncompress(raw, n, src, #src)
  if rc ~= 0 or n[0] ~= raw_len then return nil, string.format("png: inflate failed (zlib %d, %d of %d bytes)", rc, tonumber(n[0]), raw_len) end
  -- undo the row filters (PNG spec, section 9)
  local px = ffi.new("uint8_t[?]", h * stride)
  for y = 0, h - 1 do
    local ft, r, o, up = raw[y * (stride + 1)], y * (stride + 1) + 1, y * stride, (y - 1) * stride
    if ft > 4 then return nil, "png: bad filter type " .. ft end
    for x = 0, stride - 1 do
      local a = x >= ch and px[o + x - ch] or 0
      local b = y > 0 and px[up + x] or 0
      local c = (x >= ch and y > 0) and px[up + x - ch] or 0
      local v = raw[r + x]
      if ft == 1 then v = v + a
      elseif ft == 2 then v = v + b
      elseif ft == 3 then v = v + math.floor((a + b) / 2)
      elseif ft == 4 then
        local p = a + b - c
        local pa, pb, pc = math.abs(p - a), math.abs(p - b), math.abs(p - c)
        if pa <= pb and pa <= pc then v = v + a elseif pb <= pc then v = v + b else v = v + c end
      end
      px[o + x] = v % 256
    end
  end
  return { width = w, height = h, channels = ch, px = px }
end

-- stats(img) -> { pixels, nonwhite (count), colours (distinct RGB), count = {[0xRRGGBB] = n} }
function M.stats(img)
  local ch, px, n = img.channels, img.px, img.width * img.height
  local count, colours, nonwhite = {}, 0, 0
  for k = 0, n - 1 do
    local o = k * ch
    local r, g, b
    if ch >= 3 then r, g, b = px[o], px[o + 1], px[o + 2] else r = px[o] g, b = r, r end
    local key = (r * 256 + g) * 256 + b
    local c = count[key]
    if not c then colours = colours + 1 count[key] = 1 else count[key] = c + 1 end
    if key ~= 0xffffff then nonwhite = nonwhite + 1 end
  end
  return { pixels = n, nonwhite = nonwhite, colours = colours, count = count }
end

return M
