-- tide.regex: a regex subset compiled to LPeg, with the semantics of the
-- backtracking engines Hugging Face tokenizers uses (Oniguruma): leftmost
-- alternative wins, quantifiers are greedy (or lazy) and backtrack,
-- lookahead is supported. PEG repetition is possessive, so a repetition is
-- compiled in continuation-passing style: `a* k` becomes the grammar
-- S <- a S / k, which retries k after giving back one `a` at a time, exactly
-- like a backtracking regex engine. Where giving back can never help (k
-- always succeeds, or k cannot start with a character `a` matches) the
-- cheap possessive loop `a^0 * k` is used instead.
--
-- Supported: literals, escapes (\t \n \r \f \v \a \e \xHH \x{H..} \uHHHH,
-- escaped punctuation), `.`, classes [...] with ranges, negation and escapes,
-- \d \D \w \W \s \S \h \H, \p{..}/\P{..}/\pL (general categories), groups
-- (...) (?:...), (?i) and (?i:...) (case-insensitive: ASCII letters plus
-- the Unicode folds of s and k), alternation, * + ? {n} {n,} {n,m} and their
-- lazy forms, lookahead (?=...) (?!...), anchors ^ $ \A \z \Z.
-- Anything else (backreferences, lookbehind, \b, possessive quantifiers,
-- class set operations, script properties) is refused with an error naming it.
--
-- Text is UTF-8; a byte that does not start a valid UTF-8 sequence is one
-- "character" that only negated classes (and `.`) match.
local lpeg = require "lpeg"
local P, R, S, V, B = lpeg.P, lpeg.R, lpeg.S, lpeg.V, lpeg.B
local Cp, Ct, C = lpeg.Cp, lpeg.Ct, lpeg.C

-- Greedy repetitions recurse once per repeated character.
lpeg.setmaxstack(1000000)

local M = {}

local MAXCP = 0x10FFFF
local INVALID = 0x110000 -- pseudo code point: a byte that is not valid UTF-8

---------------------------------------------------------------------------
-- Code point sets: sorted, disjoint, non-adjacent lists {lo1, hi1, lo2, hi2, ...}

local function set_norm(pairs_)
  -- pairs_: list of {lo, hi}; returns flat normalized set
  table.sort(pairs_, function(a, b) return a[1] < b[1] end)
  local out = {}
  for _, r in ipairs(pairs_) do
    local n = #out
    if n > 0 and r[1] <= out[n] + 1 then
      if r[2] > out[n] then out[n] = r[2] end
    else
      out[n + 1] = r[1]; out[n + 2] = r[2]
    end
  end
  return out
end

local function set_union(...)
  local ps = {}
  for _, s in ipairs({ ... }) do
    for i = 1, #s, 2 do ps[#ps + 1] = { s[i], s[i + 1] } end
  end
  return set_norm(ps)
end

local function set_negate(s) -- complement within [0, INVALID]
  local out, lo = {}, 0
  for i = 1, #s, 2 do
    if s[i] > lo then out[#out + 1] = lo; out[#out + 1] = s[i] - 1 end
    lo = s[i + 1] + 1
  end
  if lo <= INVALID then out[#out + 1] = lo; out[#out + 1] = INVALID end
  return out
end

local function set_intersects(a, b)
  local i, j = 1, 1
  while i <= #a and j <= #b do
    if a[i + 1] < b[j] then i = i + 2
    elseif b[j + 1] < a[i] then j = j + 2
    else return true end
  end
  return false
end

local function set_has(s, cp)
  for i = 1, #s, 2 do
    if cp >= s[i] and cp <= s[i + 1] then return true end
    if cp < s[i] then return false end
  end
  return false
end
M.set_has = set_has
M.set_union, M.set_negate = set_union, set_negate

---------------------------------------------------------------------------
-- Unicode classes from the generated tables (scripts/gen_unicode.lua)

local U -- loaded lazily
local class_cache = {}

local function ucd()
  if not U then
    local ok, t = pcall(require, "tide.unicode_gen")
    if not ok then error("tide.regex: Unicode tables missing (run make: " .. tostring(t) .. ")", 0) end
    U = t
  end
  return U
end

local long_names = {
  Letter = "L", Cased_Letter = "LC", Uppercase_Letter = "Lu", Lowercase_Letter = "Ll", Titlecase_Letter = "Lt",
  Modifier_Letter = "Lm", Other_Letter = "Lo", Mark = "M", Combining_Mark = "M", Nonspacing_Mark = "Mn",
  Spacing_Mark = "Mc", Enclosing_Mark = "Me", Number = "N", Decimal_Number = "Nd", Letter_Number = "Nl",
  Other_Number = "No", Punctuation = "P", Connector_Punctuation = "Pc", Dash_Punctuation = "Pd",
  Open_Punctuation = "Ps", Close_Punctuation = "Pe", Initial_Punctuation = "Pi", Final_Punctuation = "Pf",
  Other_Punctuation = "Po", Symbol = "S", Math_Symbol = "Sm", Currency_Symbol = "Sc", Modifier_Symbol = "Sk",
  Other_Symbol = "So", Separator = "Z", Space_Separator = "Zs", Line_Separator = "Zl",
  Paragraph_Separator = "Zp", Other = "C", Control = "Cc", Format = "Cf", Surrogate = "Cs",
  Private_Use = "Co", Unassigned = "Cn", Any = "Any",
}

local function category(name)
  local key = long_names[name] or name
  if class_cache[key] then return class_cache[key] end
  local cats = ucd().cat
  local s
  if key == "Any" then
    s = { 0, MAXCP }
  elseif key == "Cn" then
    local all = {}
    for _, t in pairs(cats) do all[#all + 1] = t end
    s = set_negate(set_union(unpack(all)))
    s[#s] = MAXCP -- drop the INVALID pseudo code point
  elseif key == "LC" then
    s = set_union(cats.Lu, cats.Ll, cats.Lt)
  elseif #key == 1 then
    local parts = {}
    for k, t in pairs(cats) do if k:sub(1, 1) == key then parts[#parts + 1] = t end end
    if key == "C" then parts[#parts + 1] = category("Cn") end
    if #parts == 0 then return nil end
    s = set_union(unpack(parts))
  elseif #key == 2 and key:match("^%u%l$") then
    s = cats[key] or (key:match("^[LMNPSZC][%l]$") and {}) or nil
    if not s then return nil end
  else
    return nil
  end
  class_cache[key] = s
  return s
end
M.category = category

-- \s: Unicode White_Space (what Oniguruma and Rust's regex use), \d: Nd,
-- \w: Unicode "word" characters (UTS #18: Alphabetic, marks, decimal
-- numbers, connector punctuation) plus the Latin-1 digits
-- ² ³ ¹ ¼ ½ ¾ that Oniguruma's Latin-1 table also counts as word characters.
local function builtin(c)
  if c == "s" then
    if not class_cache.s then class_cache.s = set_union(ucd().white_space) end
    return class_cache.s
  elseif c == "d" then return category("Nd")
  elseif c == "w" then
    if not class_cache.w then
      local u = ucd()
      class_cache.w = set_union(u.alphabetic, category("M"), category("Nd"), category("Pc"),
        { 0xB2, 0xB3, 0xB9, 0xB9, 0xBC, 0xBE })
    end
    return class_cache.w
  elseif c == "h" then return set_union({ 0x30, 0x39, 0x41, 0x46, 0x61, 0x66 })
  end
end

---------------------------------------------------------------------------
-- Parser: pattern string -> AST
-- nodes: {t="set", set=...} {t="seq", ...} {t="alt", ...}
--        {t="rep", node, min, max(nil = inf), lazy} {t="look", node, neg}
--        {t="assert", kind = "bol"|"eol"|"bos"|"eos"|"eosnl"}

local function utf8_decode(s, i)
  local c = s:byte(i)
  if not c then return nil end
  if c < 0x80 then return c, i + 1 end
  local n, cp
  if c >= 0xF0 then n, cp = 3, c % 8 elseif c >= 0xE0 then n, cp = 2, c % 16 else n, cp = 1, c % 32 end
  for k = 1, n do cp = cp * 64 + (s:byte(i + k) or 0x80) % 64 end
  return cp, i + n + 1
end

local utf8_encode = require("tide.utf8").encode
M.utf8_encode = utf8_encode

local function unsupported(what, pat, pos)
  error({ msg = string.format("unsupported regex construct %s at offset %d in %q", what, pos - 1, pat) }, 0)
end

local fold_extra = { [0x73] = { 0x17F }, [0x53] = { 0x17F }, [0x6B] = { 0x212A }, [0x4B] = { 0x212A } }

local function fold_set(s) -- add ASCII case variants (and the Unicode folds of s/k)
  local add = {}
  for i = 1, #s, 2 do
    local lo, hi = s[i], math.min(s[i + 1], 0x7F)
    for cp = lo, hi do
      if cp >= 0x41 and cp <= 0x5A then add[#add + 1] = { cp + 32, cp + 32 }
      elseif cp >= 0x61 and cp <= 0x7A then add[#add + 1] = { cp - 32, cp - 32 } end
      if fold_extra[cp] then for _, x in ipairs(fold_extra[cp]) do add[#add + 1] = { x, x } end end
    end
  end
  if #add == 0 then return s end
  for i = 1, #s, 2 do add[#add + 1] = { s[i], s[i + 1] } end
  return set_norm(add)
end

local function parse(pat)
  local pos = 1
  local len = #pat

  local function peek() return pat:sub(pos, pos) end

  local function hexnum(maxlen, braced)
    local digits
    if braced then
      digits = pat:match("^{(%x+)}", pos)
      if not digits then unsupported("malformed hex escape", pat, pos) end
      pos = pos + #digits + 2
    else
      digits = pat:match("^" .. string.rep("%x", maxlen), pos)
      if not digits then unsupported("malformed hex escape", pat, pos) end
      pos = pos + maxlen
    end
    return tonumber(digits, 16)
  end

  -- an escape after '\' (pos at the char after '\'); returns a set
  local function escape(in_class)
    local c = peek()
    local at = pos - 1
    pos = pos + 1
    local simple = { t = 9, n = 10, r = 13, f = 12, v = 11, a = 7, e = 27 }
    if simple[c] then return { simple[c], simple[c] } end
    if c == "x" then
      local cp = (peek() == "{") and hexnum(nil, true) or hexnum(2)
      return { cp, cp }
    end
    if c == "u" then local cp = hexnum(4) return { cp, cp } end
    if c == "0" then return { 0, 0 } end
    local lower = c:lower()
    if lower == "s" or lower == "d" or lower == "w" or lower == "h" then
      local s = builtin(lower)
      if c ~= lower then s = set_negate(s) end
      return s
    end
    if c == "p" or c == "P" then
      local name
      if peek() == "{" then
        name = pat:match("^{([^}]*)}", pos)
        if not name then unsupported("malformed \\p{...}", pat, at) end
        pos = pos + #name + 2
      else
        name = peek(); pos = pos + 1
      end
      local neg = c == "P"
      if name:sub(1, 1) == "^" then neg = not neg; name = name:sub(2) end
      name = name:gsub("^Is", ""):gsub("^General_Category=", ""):gsub("^gc=", "")
      local s = category(name)
      if not s then unsupported("\\p{" .. name .. "} (only general categories are supported)", pat, at) end
      if neg then s = set_negate(s) end
      return s
    end
    if c:match("^[%p ]$") and not c:match("[%w]") then
      local b = c:byte()
      return { b, b }
    end
    if not in_class and (c == "A" or c == "z" or c == "Z") then return c end
    unsupported("\\" .. c, pat, at)
  end

  local function class(icase)
    -- pos at char after '['
    local start = pos - 1
    local neg = false
    if peek() == "^" then neg = true; pos = pos + 1 end
    local items = {}
    local first = true
    while true do
      if pos > len then unsupported("unterminated character class", pat, start) end
      local c = peek()
      if c == "]" and not first then pos = pos + 1 break end
      first = false
      if c == "[" then
        if pat:sub(pos, pos + 1) == "[:" then unsupported("POSIX bracket expression", pat, pos) end
        unsupported("nested character class", pat, pos)
      end
      if pat:sub(pos, pos + 1) == "&&" then unsupported("class intersection &&", pat, pos) end
      local lo_set, lo_cp
      if c == "\\" then
        pos = pos + 1
        lo_set = escape(true)
        if #lo_set == 2 and lo_set[1] == lo_set[2] then lo_cp = lo_set[1] end
      else
        local cp, np = utf8_decode(pat, pos)
        pos = np
        lo_cp = cp
        lo_set = { cp, cp }
      end
      -- range?
      if lo_cp and peek() == "-" and pat:sub(pos + 1, pos + 1) ~= "]" and pos + 1 <= len then
        pos = pos + 1
        local hi_cp
        if peek() == "\\" then
          pos = pos + 1
          local hs = escape(true)
          if not (#hs == 2 and hs[1] == hs[2]) then unsupported("class range ending in a class", pat, pos) end
          hi_cp = hs[1]
        else
          hi_cp, pos = utf8_decode(pat, pos)
        end
        if hi_cp < lo_cp then unsupported("reversed class range", pat, pos) end
        items[#items + 1] = { lo_cp, hi_cp }
      else
        items[#items + 1] = lo_set
      end
    end
    local s = set_union(unpack(items))
    if icase then s = fold_set(s) end
    if neg then s = set_negate(s) end
    return { t = "set", set = s }
  end

  local alt

  local function atom(icase)
    local c = peek()
    local at = pos
    if c == "(" then
      pos = pos + 1
      if pat:sub(pos, pos) == "?" then
        local nx = pat:sub(pos + 1, pos + 1)
        if nx == ":" then
          pos = pos + 2
          local n = alt(icase)
          if peek() ~= ")" then unsupported("unbalanced (", pat, at) end
          pos = pos + 1
          return n
        elseif nx == "=" or nx == "!" then
          pos = pos + 2
          local n = alt(icase)
          if peek() ~= ")" then unsupported("unbalanced (", pat, at) end
          pos = pos + 1
          return { t = "look", n, neg = nx == "!" }
        elseif nx == "i" or nx == "-" then
          local flags = pat:match("^%?([%a%-]+)", pos)
          if flags ~= "i" and flags ~= "-i" then unsupported("group flags (?" .. flags .. ")", pat, at) end
          pos = pos + 1 + #flags
          local on = flags == "i"
          if peek() == ":" then
            pos = pos + 1
            local n = alt(on)
            if peek() ~= ")" then unsupported("unbalanced (", pat, at) end
            pos = pos + 1
            return n
          elseif peek() == ")" then
            pos = pos + 1
            return { t = "flag", icase = on }
          end
          unsupported("group flags", pat, at)
        elseif nx == "<" and pat:sub(pos + 2, pos + 2):match("[=!]") then
          unsupported("lookbehind", pat, at)
        else
          unsupported("group (?" .. nx, pat, at)
        end
      end
      local n = alt(icase)
      if peek() ~= ")" then unsupported("unbalanced (", pat, at) end
      pos = pos + 1
      return n
    elseif c == "[" then
      pos = pos + 1
      return class(icase)
    elseif c == "." then
      pos = pos + 1
      return { t = "set", set = set_negate({ 10, 10 }) }
    elseif c == "^" then
      pos = pos + 1
      return { t = "assert", kind = "bol" }
    elseif c == "$" then
      pos = pos + 1
      return { t = "assert", kind = "eol" }
    elseif c == "\\" then
      pos = pos + 1
      local nx = peek()
      if nx:match("^[1-9]$") or nx == "k" or nx == "g" then unsupported("backreference \\" .. nx, pat, at) end
      if nx == "b" or nx == "B" then unsupported("word boundary \\" .. nx, pat, at) end
      if nx == "G" or nx == "K" or nx == "X" or nx == "R" then unsupported("\\" .. nx, pat, at) end
      local s = escape(false)
      if type(s) == "string" then
        return { t = "assert", kind = (s == "A" and "bos") or (s == "z" and "eos") or "eosnl" }
      end
      if icase then s = fold_set(s) end
      return { t = "set", set = s }
    elseif c == "*" or c == "+" or c == "?" or c == "{" and pat:match("^{%d", pos) then
      unsupported("quantifier without operand '" .. c .. "'", pat, at)
    else
      local cp, np = utf8_decode(pat, pos)
      pos = np
      local s = { cp, cp }
      if icase then s = fold_set(s) end
      return { t = "set", set = s }
    end
  end

  local function quantified(icase)
    local a = atom(icase)
    while true do
      local c = peek()
      local min, max
      local at = pos
      if c == "*" then min, max = 0, nil; pos = pos + 1
      elseif c == "+" then min, max = 1, nil; pos = pos + 1
      elseif c == "?" then min, max = 0, 1; pos = pos + 1
      elseif c == "{" and pat:match("^{%d*,?%d*}", pos) and pat:match("^{,?%d", pos) then
        local body = pat:match("^{([%d,]*)}", pos)
        pos = pos + #body + 2
        local a1, comma, a2 = body:match("^(%d*)(,?)(%d*)$")
        min = tonumber(a1) or 0
        if comma == "" then max = min else max = tonumber(a2) end
        if max and max < min then unsupported("{n,m} with m < n", pat, at) end
      else
        break
      end
      if a.t == "assert" or a.t == "look" or a.t == "flag" then unsupported("quantified assertion", pat, at) end
      local lazy = false
      if peek() == "?" then lazy = true; pos = pos + 1
      elseif peek() == "+" then unsupported("possessive quantifier", pat, at) end
      a = { t = "rep", a, min = min, max = max, lazy = lazy }
    end
    return a
  end

  function alt(icase)
    local branches = {}
    local seq = { t = "seq" }
    while true do
      local c = peek()
      if pos > len or c == ")" then break end
      if c == "|" then
        branches[#branches + 1] = seq
        seq = { t = "seq" }
        pos = pos + 1
      else
        local q = quantified(icase)
        if q.t == "flag" then icase = q.icase
        else seq[#seq + 1] = q end
      end
    end
    branches[#branches + 1] = seq
    if #branches == 1 then return seq end
    branches.t = "alt"
    return branches
  end

  local ast = alt(false)
  if pos <= len then unsupported("unbalanced )", pat, pos) end
  return ast
end
M.parse = function(pat)
  local ok, r = pcall(parse, pat)
  if ok then return r end
  if type(r) == "table" then return nil, r.msg end
  error(r, 0)
end

---------------------------------------------------------------------------
-- Code point sets -> LPeg byte patterns (a UTF-8 trie, shared tails merged)

local CONT = R("\128\191")
local ASCII = R("\0\127")
local VALID = ASCII + R("\194\223") * CONT + P("\224") * R("\160\191") * CONT + R("\225\236") * CONT * CONT
  + P("\237") * R("\128\159") * CONT + R("\238\239") * CONT * CONT + P("\240") * R("\144\191") * CONT * CONT
  + R("\241\243") * CONT * CONT * CONT + P("\244") * R("\128\143") * CONT * CONT
local BADBYTE = -VALID * P(1)
M.VALID, M.BADBYTE = VALID, BADBYTE
M.ANYCHAR = VALID + P(1)

local function range_pat(lo, hi) return R(string.char(lo, hi)) end

local function byteset_pat(bytes) -- sorted list of byte values -> charset pattern
  local p
  local i = 1
  while i <= #bytes do
    local j = i
    while j < #bytes and bytes[j + 1] == bytes[j] + 1 do j = j + 1 end
    local r = range_pat(bytes[i], bytes[j])
    p = p and (p + r) or r
    i = j + 1
  end
  return p
end

local function balanced(alts, lo, hi)
  lo, hi = lo or 1, hi or #alts
  if lo == hi then return alts[lo] end
  local mid = math.floor((lo + hi) / 2)
  return balanced(alts, lo, mid) + balanced(alts, mid + 1, hi)
end

-- does set s contain all of [lo, hi] / any of it?
local function covers(s, lo, hi)
  for i = 1, #s, 2 do
    if s[i] <= lo and s[i + 1] >= hi then return true end
    if s[i] > lo then return false end
  end
  return false
end

-- Trie node for the code points [base, base + span) whose next `depth`
-- continuation bytes are still to be read; domain = the valid code points.
-- Returns signature, pattern (nil when empty).
local function node(s, base, span, depth, dlo, dhi)
  local lo, hi = math.max(base, dlo), math.min(base + span - 1, dhi)
  if lo > hi or not set_intersects(s, { lo, hi }) then return nil end
  if depth == 0 then return "1", P(true) end
  if lo == base and hi == base + span - 1 and covers(s, lo, hi) then
    return "F" .. depth, depth == 1 and CONT or (depth == 2 and CONT * CONT or CONT * CONT * CONT)
  end
  local sub = span / 64
  local groups, order = {}, {}
  for b = 0, 63 do
    local sig, p = node(s, base + b * sub, sub, depth - 1, dlo, dhi)
    if sig then
      local g = groups[sig]
      if not g then g = { bytes = {}, p = p }; groups[sig] = g; order[#order + 1] = sig end
      g.bytes[#g.bytes + 1] = 0x80 + b
    end
  end
  local alts, sigs = {}, {}
  for _, sig in ipairs(order) do
    local g = groups[sig]
    alts[#alts + 1] = byteset_pat(g.bytes) * g.p
    sigs[#sigs + 1] = table.concat(g.bytes, ",") .. ":" .. sig
  end
  return "(" .. table.concat(sigs, "|") .. ")", balanced(alts)
end

local pat_cache = setmetatable({}, { __mode = "k" })

local function set_pattern(s)
  if pat_cache[s] then return pat_cache[s] end
  local alts = {}
  -- ASCII (tried first, outside the balanced tree of multi-byte leads)
  local bytes = {}
  for i = 1, #s, 2 do
    for cp = s[i], math.min(s[i + 1], 0x7F) do bytes[#bytes + 1] = cp end
  end
  local ascii = #bytes > 0 and byteset_pat(bytes) or nil
  -- multi-byte: lead bytes with the same tail share one charset
  local specs = { -- lead range, code points per lead, depth, domain
    { 0xC2, 0xDF, 64, 1, 0x80, 0x7FF, 0xC0 },
    { 0xE0, 0xEF, 4096, 2, 0x800, 0xFFFF, 0xE0 },
    { 0xF0, 0xF4, 262144, 3, 0x10000, 0x10FFFF, 0xF0 },
  }
  for _, sp in ipairs(specs) do
    local groups, order = {}, {}
    for lead = sp[1], sp[2] do
      local base = (lead - sp[7]) * sp[3]
      local sig, p
      if base >= 0xD800 and base <= 0xDFFF then sig = nil
      else
        -- surrogates are not valid UTF-8: exclude them from the domain of lead 0xED
        if lead == 0xED then
          sig, p = node(s, base, sp[3], sp[4], sp[5], 0xD7FF)
        else
          sig, p = node(s, base, sp[3], sp[4], sp[5], sp[6])
        end
      end
      if sig then
        local g = groups[sig]
        if not g then g = { bytes = {}, p = p }; groups[sig] = g; order[#order + 1] = sig end
        g.bytes[#g.bytes + 1] = lead
      end
    end
    for _, sig in ipairs(order) do
      local g = groups[sig]
      alts[#alts + 1] = byteset_pat(g.bytes) * g.p
    end
  end
  if s[#s] == INVALID then alts[#alts + 1] = BADBYTE end
  local p = #alts > 0 and balanced(alts) or nil
  if ascii then p = p and (ascii + p) or ascii end
  p = p or P(false)
  pat_cache[s] = p
  return p
end
M.set_pattern = set_pattern

-- split a set into its ASCII part and the rest
local function set_split_ascii(s)
  local a, r = {}, {}
  for i = 1, #s, 2 do
    local lo, hi = s[i], s[i + 1]
    if lo <= 0x7F then a[#a + 1] = lo; a[#a + 1] = math.min(hi, 0x7F) end
    if hi > 0x7F then r[#r + 1] = math.max(lo, 0x80); r[#r + 1] = hi end
  end
  return a, r
end

-- possessive s* : ASCII runs use LPeg's span instruction
local function set_star(s)
  local a, r = set_split_ascii(s)
  if #a == 0 or #r == 0 then return set_pattern(s) ^ 0 end
  local ap = set_pattern(a) ^ 0
  return ap * (set_pattern(r) * ap) ^ 0
end
M.set_star = set_star

---------------------------------------------------------------------------
-- Static analysis: first set (nil = unknown/any), nullable, always

local ANYSET = { 0, INVALID }

local function info(n)
  if n.info then return n.info end
  local r
  if n.t == "set" then
    r = { first = n.set, nullable = false, always = false }
  elseif n.t == "seq" then
    r = { first = {}, nullable = true, always = true }
    for _, c in ipairs(n) do
      local ci = info(c)
      if r.nullable then
        r.first = (ci.first and r.first) and set_union(r.first, ci.first) or nil
      end
      r.nullable = r.nullable and ci.nullable
      r.always = r.always and ci.always
    end
  elseif n.t == "alt" then
    r = { first = {}, nullable = false, always = false }
    for _, c in ipairs(n) do
      local ci = info(c)
      r.first = (ci.first and r.first) and set_union(r.first, ci.first) or nil
      r.nullable = r.nullable or ci.nullable
      r.always = r.always or ci.always
    end
  elseif n.t == "rep" then
    local ci = info(n[1])
    r = { first = ci.first, nullable = n.min == 0 or ci.nullable, always = n.min == 0 or ci.always }
  elseif n.t == "look" then
    -- a lookahead consumes nothing; what follows it decides the first char
    r = { first = {}, nullable = true, always = (not n.neg) and info(n[1]).always or false, cond = true }
  else -- assert
    r = { first = {}, nullable = true, always = false, cond = true }
  end
  n.info = r
  return r
end

-- descriptor of "node followed by k"
local function cont(n, k)
  local i = info(n)
  local first
  if i.nullable then
    first = (i.first and k.first) and set_union(i.first, k.first) or nil
  else
    first = i.first
  end
  return { first = first, nullable = i.nullable and k.nullable, always = i.always and k.always }
end

---------------------------------------------------------------------------
-- Compiler: AST + continuation -> LPeg

local compile

-- Continuations are copied into every alternative, so nesting alternation
-- under a counted repetition grows the pattern geometrically: track an
-- estimate of each pattern's size and refuse oversized ones.
-- LPeg's tree analyses also walk every path through the rule calls of a
-- grammar (each call site once per path), which is factorial in the number
-- of call sites: count them too.
local MAX_SIZE, MAX_CALLS = 200000, 8
local psize = setmetatable({}, { __mode = "k" })
local pcalls = setmetatable({}, { __mode = "k" })
local function sz(p) return psize[p] or 1 end
local function nc(p) return pcalls[p] or 0 end
local function sized(p, n, calls)
  if n > MAX_SIZE then
    error({ msg = "unsupported regex construct: pattern too large to compile "
      .. "(alternation nested in a counted repetition?)" }, 0)
  end
  if (calls or 0) > MAX_CALLS then
    error({ msg = "unsupported regex construct: too many backtracking points "
      .. "(a counted repetition or alternation inside a repetition that must backtrack)" }, 0)
  end
  psize[p] = n
  pcalls[p] = calls
  return p
end
local TRUE_P = P(true)
-- LPeg may return an operand itself (a * true, true + b, ...): never record
-- sizes on an operand, which may be shared
local function combine(r, a, b)
  if r == a or r == b then return r end
  return sized(r, sz(a) + sz(b), nc(a) + nc(b))
end
local function seq2(a, b) return combine(a * b, a, b) end
local function alt2(a, b) return combine(a + b, a, b) end

-- can a greedy loop over set c followed by k be possessive?
local function possessive_ok(c, k)
  if k.always then return true end
  if k.nullable then return false end
  return k.first ~= nil and not set_intersects(c, k.first)
end

local function compile_rep(n, k)
  local a, min, max = n[1], n.min, n.max
  -- mandatory part: a{min} then the optional part
  local kd = { p = k.p, first = k.first, nullable = k.nullable, always = k.always }
  local opt_n = (max == nil) and -1 or (max - min)
  local tail -- pattern for the optional part followed by k
  if opt_n == 0 then
    tail = kd
  elseif a.t == "set" and not n.lazy and possessive_ok(a.set, kd) then
    local ap = set_pattern(a.set)
    local loop = (opt_n < 0) and set_star(a.set) or ap ^ -opt_n
    local ai = info(a)
    tail = { p = seq2(loop, k.p), first = ai.first and kd.first and set_union(ai.first, kd.first) or nil,
      nullable = kd.nullable, always = kd.always }
  elseif opt_n < 0 then
    if info(a).nullable then
      error({ msg = "unsupported regex construct: repetition of an expression that can match empty" }, 0)
    end
    local self_desc = { p = sized(V("S"), 1, 1), first = info(a).first and kd.first and set_union(info(a).first, kd.first) or nil,
      nullable = kd.nullable, always = kd.always }
    local body = compile(a, self_desc)
    local g = n.lazy and P({ "S", S = k.p + body }) or P({ "S", S = body + k.p })
    sized(g, sz(body) + sz(k.p) + 1, nc(body) + nc(k.p))
    tail = { p = g, first = self_desc.first, nullable = kd.nullable, always = kd.always }
  else
    -- bounded: unroll opt_n optional copies
    tail = kd
    for _ = 1, opt_n do
      local body = compile(a, tail)
      local p = n.lazy and alt2(k.p, body) or alt2(body, k.p)
      local ai = info(a)
      tail = { p = p, first = ai.first and tail.first and set_union(ai.first, tail.first) or nil,
        nullable = kd.nullable, always = kd.always }
    end
  end
  local p = tail
  for _ = 1, min do
    local body = compile(a, p)
    local ai = info(a)
    p = { p = body, first = ai.nullable and (ai.first and p.first and set_union(ai.first, p.first)) or ai.first,
      nullable = ai.nullable and p.nullable, always = ai.always and p.always }
  end
  return p.p
end

local asserts = {
  bol = -B(1) + B("\n"),
  eol = -P(1) + #P("\n"),
  bos = -B(1),
  eos = -P(1),
  eosnl = -P(1) + P("\n") * -P(1),
}

function compile(n, k)
  local t = n.t
  if t == "set" then
    return seq2(set_pattern(n.set), k.p)
  elseif t == "seq" then
    -- fold from the right
    local conts = { [#n + 1] = k }
    for i = #n, 1, -1 do
      local kk = conts[i + 1]
      local p = compile(n[i], kk)
      local d = cont(n[i], kk)
      d.p = p
      conts[i] = d
    end
    return conts[1].p
  elseif t == "alt" then
    local p
    for _, c in ipairs(n) do
      local cp = compile(c, k)
      p = p and alt2(p, cp) or cp
    end
    return p
  elseif t == "rep" then
    return compile_rep(n, k)
  elseif t == "look" then
    local inner = compile(n[1], { p = TRUE_P, first = {}, nullable = true, always = true })
    if n.neg then return sized(-inner * k.p, sz(inner) + sz(k.p), nc(inner) + nc(k.p)) end
    return sized(#inner * k.p, sz(inner) + sz(k.p), nc(inner) + nc(k.p))
  elseif t == "assert" then
    return seq2(asserts[n.kind], k.p)
  end
  error("tide.regex: bad node " .. tostring(t))
end

---------------------------------------------------------------------------
-- Public API

local Regex = {}
Regex.__index = Regex

local TRUE_K = { p = TRUE_P, first = {}, nullable = true, always = true }

-- Compile a pattern. Returns a Regex or nil, err.
function M.compile(pat)
  if type(pat) ~= "string" then return nil, "regex pattern must be a string" end
  local ok, ast = pcall(parse, pat)
  if not ok then
    if type(ast) == "table" then return nil, ast.msg end
    return nil, tostring(ast)
  end
  local ok2, p = pcall(compile, ast, TRUE_K)
  if not ok2 then
    if type(p) == "table" then return nil, p.msg end
    return nil, "cannot compile regex " .. string.format("%q", pat) .. ": " .. tostring(p)
  end
  local ai = info(ast)
  local self = setmetatable({ source = pat, patt = p, nullable = ai.nullable }, Regex)
  if not self.nullable then
    -- characters that cannot start a match are skipped without trying p
    local skip = M.ANYCHAR
    local never = ai.first and set_negate(ai.first)
    if never and #never > 0 then
      local a, r = set_split_ascii(never)
      local sp = (#a > 0 and set_pattern(a) ^ 1 or P(false)) + (#r > 0 and set_pattern(r) or P(false))
      skip = sp + M.ANYCHAR
      self.gap = (sp + (-p * M.ANYCHAR)) ^ 1
    else
      self.gap = (-p * M.ANYCHAR) ^ 1
    end
    -- all matches, as flat {s1, e1, s2, e2, ...} (e exclusive)
    self.scan = Ct((Cp() * p * Cp() + skip) ^ 0)
    -- pieces for the Isolated behaviour: matches and the gaps between them
    self.pieces = Ct((C(p) + C(self.gap)) ^ 0)
  end
  return self
end

-- Literal string pattern (Split with {String = ...}).
function M.literal(str)
  local self = setmetatable({ source = str, patt = P(str), nullable = #str == 0 }, Regex)
  if not self.nullable then
    self.scan = Ct((Cp() * P(str) * Cp() + M.ANYCHAR) ^ 0)
    self.pieces = Ct((C(P(str)) + C((-P(str) * M.ANYCHAR) ^ 1)) ^ 0)
  end
  return self
end

local match = lpeg.match

local function next_char(s, i)
  local e = match(M.ANYCHAR, s, i)
  return e or (i + 1)
end

-- Anchored match at byte offset i (1-based): returns the end (exclusive) or nil.
function Regex:match_at(s, i)
  return match(self.patt * Cp(), s, i)
end

-- All non-overlapping matches, leftmost first, as a flat list {s1, e1, ...}
-- of 1-based start and exclusive end offsets (Oniguruma's find_iter rules
-- for empty matches: none right after the previous match).
function Regex:find_all(s)
  if self.scan then return match(self.scan, s) end
  local out = {}
  local anchored = self.anchored or (self.patt * Cp())
  self.anchored = anchored
  local pos, last_end = 1, nil
  local n = #s
  while pos <= n + 1 do
    local q, e = pos, nil
    while q <= n + 1 do
      e = match(anchored, s, q)
      if e then break end
      if q > n then break end
      q = next_char(s, q)
    end
    if not e then break end
    if e == q and last_end == e then
      if pos > n then break end
      pos = next_char(s, pos)
    else
      out[#out + 1] = q; out[#out + 1] = e
      pos = e; last_end = e
    end
  end
  return out
end

-- Split as Hugging Face's Split pre-tokenizer: returns the list of pieces
-- (strings) of s for behavior removed | isolated | merged_with_previous |
-- merged_with_next | contiguous, optionally inverted.
function Regex:split(s, behavior, invert)
  if s == "" then return {} end
  if behavior == "isolated" and not invert and self.pieces then
    return match(self.pieces, s)
  end
  local m = self:find_all(s)
  -- spans: {start, end, is_match} covering s
  local spans = {}
  local prev = 1
  for i = 1, #m, 2 do
    local a, b = m[i], m[i + 1]
    if a ~= prev then spans[#spans + 1] = { prev, a, false } end
    spans[#spans + 1] = { a, b, true }
    prev = b
  end
  if prev ~= #s + 1 then spans[#spans + 1] = { prev, #s + 1, false } end
  if invert then for _, sp in ipairs(spans) do sp[3] = not sp[3] end end
  local out = {}
  if behavior == "removed" then
    for _, sp in ipairs(spans) do if not sp[3] then out[#out + 1] = sp end end
  elseif behavior == "isolated" then
    out = spans
  elseif behavior == "merged_with_previous" then
    local pm = false
    for _, sp in ipairs(spans) do
      if sp[3] and not pm and #out > 0 then out[#out][2] = sp[2]
      else out[#out + 1] = { sp[1], sp[2], sp[3] } end
      pm = sp[3]
    end
  elseif behavior == "merged_with_next" then
    local pm = false
    local rev = {}
    for i = #spans, 1, -1 do
      local sp = spans[i]
      if sp[3] and not pm and #rev > 0 then rev[#rev][1] = sp[1]
      else rev[#rev + 1] = { sp[1], sp[2], sp[3] } end
      pm = sp[3]
    end
    for i = #rev, 1, -1 do out[#out + 1] = rev[i] end
  elseif behavior == "contiguous" then
    local pm = false
    for _, sp in ipairs(spans) do
      if sp[3] == pm and #out > 0 then out[#out][2] = sp[2]
      else out[#out + 1] = { sp[1], sp[2], sp[3] } end
      pm = sp[3]
    end
  else
    error("tide.regex: unknown split behavior " .. tostring(behavior), 2)
  end
  local res = {}
  for _, sp in ipairs(out) do
    if sp[2] > sp[1] then res[#res + 1] = s:sub(sp[1], sp[2] - 1) end
  end
  return res
end

return M
