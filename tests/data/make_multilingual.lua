-- Deterministic multilingual + code sample for the tokenizer comparisons.
-- usage: luajit tests/data/make_multilingual.lua [OUT]  (default tests/data/multilingual.json)
-- Writes a JSON array of paragraphs (each encoded separately by consumers).
local out = arg and arg[1] or "tests/data/multilingual.json"

local seed = 12345
local function rnd(n) -- LCG, 1..n
  seed = (seed * 1103515245 + 12345) % 2147483648
  return (math.floor(seed / 65536) % n) + 1
end
local function pick(t) return t[rnd(#t)] end

local function utf8(cp)
  if cp < 0x80 then return string.char(cp)
  elseif cp < 0x800 then return string.char(0xC0 + math.floor(cp / 64), 0x80 + cp % 64)
  elseif cp < 0x10000 then
    return string.char(0xE0 + math.floor(cp / 4096), 0x80 + math.floor(cp / 64) % 64, 0x80 + cp % 64)
  else
    return string.char(0xF0 + math.floor(cp / 262144), 0x80 + math.floor(cp / 4096) % 64,
      0x80 + math.floor(cp / 64) % 64, 0x80 + cp % 64)
  end
end

local snippets = {
  cjk = { "今天天气很好，我们去公园散步吧。", "机器学习是人工智能的一个分支，研究计算机如何从数据中学习。",
    "東京都は日本の首都であり、人口は約1400万人です。", "カタカナとひらがなを混ぜた文章：コンピューターはとても便利です。",
    "한국어 문장도 포함합니다. 서울은 대한민국의 수도입니다.", "《三体》是刘慈欣创作的长篇科幻小说，讲述了地球文明与三体文明的故事。",
    "漢字・仮名交じり文（かんじかなまじりぶん）", "中文标点：“引号”、‘单引号’；冒号：问号？感叹号！" },
  cyr = { "Привет, мир! Как дела?", "Москва — столица России, крупнейший город страны.",
    "Съешь же ещё этих мягких французских булок, да выпей чаю.", "Україна, Київ, Ґанок; Беларусь: Мінск.",
    "ЁЛКА и ёлка, ПРОПИСНЫЕ и строчные буквы." },
  arabic = { "مرحبا بالعالم! كيف حالك اليوم؟", "اللغة العربية هي لغة سامية يتحدث بها أكثر من ٤٠٠ مليون شخص.",
    "بِسْمِ اللَّهِ الرَّحْمَٰنِ الرَّحِيمِ", "الأرقام العربية: ٠١٢٣٤٥٦٧٨٩ و ۱۲۳۴۵۶۷۸۹۰", "שלום עולם, עברית גם כן." },
  thai = { "สวัสดีครับ ยินดีต้อนรับสู่ประเทศไทย", "ภาษาไทยไม่มีการเว้นวรรคระหว่างคำ ทำให้การตัดคำเป็นเรื่องยาก",
    "กรุงเทพมหานคร อมรรัตนโกสินทร์ มหินทรายุธยา", "नमस्ते दुनिया, हिन्दी भाषा देवनागरी लिपि में लिखी जाती है।",
    "ಕನ್ನಡ ತಮಿಳ್ தமிழ் മലയാളം ગુજરાતી ਪੰਜਾਬੀ বাংলা" },
  emoji = { "👍🏽 👩‍💻 👨‍👩‍👧‍👦 🏳️‍🌈 ❤️ 🇯🇵🇺🇸", "🙂🙃😀😂🤣 🧑🏿‍🚀 👋🏻👋🏼👋🏽👋🏾👋🏿",
    "Flags: 🇩🇪 🇫🇷 🏴󠁧󠁢󠁳󠁣󠁴󠁿 keycaps: 1️⃣ #️⃣ *️⃣", "✨🔥💯 ☕️ ⚠️ ©️ ®️ ™️" },
  combining = { "e\204\129 vs é, n\204\131 vs ñ, a\204\138 vs å", "Z\205\148a\204\135l\204\145g\204\146o\204\167 text",
    "Vietnamese: Tiếng Việt có dấu: ả ã ạ ầ ẩ ẫ ậ", "Ångström, naïve, café, coöperate, façade, résumé",
    "ﬁ ligature, ＦＵＬＬＷＩＤＴＨ ｔｅｘｔ, ①②③, ½ ¾, x² y³, Ⅻ" },
  latin = { "The quick brown fox jumps over the lazy dog.", "Don't stop believing; it's what we'll do, isn't it?",
    "Größenwahn und Fußgängerübergänge in Österreich.", "¿Dónde está la biblioteca? ¡Aquí!",
    "L'été dernier, j'ai visité Paris — c'était magnifique…", "Zażółć gęślą jaźń. Čeština: Příliš žluťoučký kůň.",
    "Ελληνικά: Η γρήγορη καφέ αλεπού πηδάει πάνω από το τεμπέλικο σκυλί.", "Türkçe: İstanbul'da ılık bir gün." },
}

local code = {
  "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
  "for (int i = 0; i < n; ++i) {\n\tsum += a[i] * b[i];\n}\n",
  "local function f(x) return x ^ 2 + 3 * x - 1 end -- comment\n",
  "SELECT id, name FROM users WHERE age >= 18 AND email LIKE '%@example.org';\n",
  "const re = /^(?:[a-z0-9!#$%&'*+/=?^_`{|}~-]+)$/i; // regex\n",
  "fn main() {\n    let v: Vec<u64> = (1..=10).map(|x| x * x).collect();\n    println!(\"{:?}\", v);\n}\n",
  "<div class=\"note\">&lt;tag&gt; &amp; entities</div>\n",
  "{\"key\": [1, 2.5e-3, true, null], \"nested\": {\"a\": \"b\"}}\n",
  "    if (x != NULL && x->next) { /* deref */ y = *x->next; }\r\n",
  "#!/bin/sh\nset -eu\necho \"$HOME\" | sed 's/a/b/g' >> /tmp/out.log 2>&1\n",
}

local odd_ws = { " ", "  ", "\t", "\r\n", "\n", "\r", "\194\133", "\226\128\168", "\226\128\169", "\194\160",
  "\227\128\128", "\226\128\137", "\11", "\12", "   \n", " \t \r\n", "\226\128\139", "\239\187\191" }

local kinds = { "cjk", "cyr", "arabic", "thai", "emoji", "combining", "latin" }

local function digits(n)
  local t = {}
  for i = 1, n do t[i] = string.char(47 + rnd(10)) end
  return table.concat(t)
end

-- random code points from a few blocks (letters, marks, symbols, numbers)
local blocks = { {0x00A0, 0x024F}, {0x0370, 0x03FF}, {0x0400, 0x04FF}, {0x0590, 0x06FF}, {0x0900, 0x0DFF},
  {0x0E00, 0x0EFF}, {0x1E00, 0x1FFF}, {0x2000, 0x2BFF}, {0x3000, 0x30FF}, {0x4E00, 0x9FFF}, {0xAC00, 0xD7A3},
  {0xFF00, 0xFFEF}, {0x1F300, 0x1FAFF}, {0x1D400, 0x1D7FF}, {0x10000, 0x1007F} }
local function randchars(n)
  local t = {}
  for i = 1, n do
    local b = pick(blocks)
    t[i] = utf8(b[1] + rnd(b[2] - b[1] + 1) - 1)
  end
  return table.concat(t)
end

local paras = {}
local size = 0
while size < 240 * 1024 do
  local parts = {}
  local n = 3 + rnd(8)
  for i = 1, n do
    local r = rnd(20)
    local s
    if r <= 11 then s = pick(snippets[pick(kinds)])
    elseif r <= 14 then s = pick(code)
    elseif r == 15 then s = digits(rnd(40)) .. pick({ "", ".", ",", " ", "x" }) .. digits(rnd(8))
    elseif r == 16 then s = randchars(rnd(12))
    else s = pick(odd_ws) .. pick(snippets[pick(kinds)]) end
    parts[#parts + 1] = s
    parts[#parts + 1] = pick(odd_ws)
  end
  local p = table.concat(parts)
  paras[#paras + 1] = p
  size = size + #p + 3
end
local f = assert(io.open(out, "wb"))
f:write(require("cjson").encode(paras))
f:close()
print(string.format("%s: %d paragraphs, %d bytes", out, #paras, size))
