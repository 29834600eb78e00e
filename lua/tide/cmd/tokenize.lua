-- tide tokenize: print the token ids of a text.
local M = {}

M.usage = [[
usage: tide tokenize --tokenizer PATH (--text TEXT | --file FILE) [--no-special] [--json]

Encodes TEXT (or the contents of FILE) with the tokenizer at PATH (a
tokenizer.json file or a model folder) and prints the ids, separated by
spaces, or as a JSON array with --json. Special tokens of the post-processor
(e.g. BOS) are added unless --no-special is given.]]

function M.main(args)
  local path, text, file, special, json = nil, nil, nil, true, false
  local i = 1
  while i <= #args do
    local a = args[i]
    if a == "--tokenizer" then path = args[i + 1]; i = i + 1
    elseif a == "--text" then text = args[i + 1]; i = i + 1
    elseif a == "--file" then file = args[i + 1]; i = i + 1
    elseif a == "--no-special" then special = false
    elseif a == "--json" then json = true
    else
      io.stderr:write("tide tokenize: unknown argument '", tostring(a), "'\n\n", M.usage, "\n")
      return 2
    end
    i = i + 1
  end
  if not path or (text == nil) == (file == nil) then
    io.stderr:write("tide tokenize: need --tokenizer and one of --text or --file\n\n", M.usage, "\n")
    return 2
  end
  if file then
    local f, err = io.open(file, "rb")
    if not f then io.stderr:write("tide tokenize: ", err, "\n") return 1 end
    text = f:read("*a")
    f:close()
  end
  local tok, err = require("tide.tokenizer").load(path)
  if not tok then io.stderr:write("tide tokenize: ", err, "\n") return 1 end
  local ids = tok:encode(text, { add_special = special })
  if json then
    io.write("[", table.concat(ids, ","), "]\n")
  else
    io.write(table.concat(ids, " "), "\n")
  end
  return 0
end

return M
