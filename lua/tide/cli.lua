-- tide.cli: the command line. `tide` alone opens the REPL; `tide CMD ...`
-- runs a command; every command answers --help.
local M = {}

-- Path of the running executable (arg[0] as main.c set it), for scripts and
-- tests that start another tide process; kept as arg[-1] like luajit does.
M.progname = (_G.arg and _G.arg[0]) or "tide"

local USAGE = [[
usage: tide [COMMAND] [ARGS]

  tide                      interactive REPL with the tide module loaded
  tide run FILE.lua [ARGS]  run a script or recipe (ARGS in the global `arg`)
  tide -e 'CODE'            evaluate Lua code with `tide` loaded
  tide version              print the version
  tide help [COMMAND]       this help, or a command's help

Commands:
%s
Every command accepts --help.]]

-- name -> { summary, usage, module (lazy) or fn }
M.commands = {}
local order = {}

function M.register(name, spec)
  if not M.commands[name] then order[#order + 1] = name end
  M.commands[name] = spec
end

local function command_list()
  local lines = {}
  for _, name in ipairs(order) do
    lines[#lines + 1] = string.format("  %-12s %s", name, M.commands[name].summary)
  end
  return table.concat(lines, "\n")
end

function M.usage() return string.format(USAGE, command_list()) end

local function run_file(file, args)
  local chunk, err = loadfile(file)
  if not chunk then
    io.stderr:write("tide run: ", err, "\n")
    return 1
  end
  -- script arguments: arg[0] = file, arg[1..] = args
  local a = { [0] = file, [-1] = M.progname }
  for i, v in ipairs(args) do a[i] = v end
  _G.arg = a
  local result = chunk(unpack(args))
  -- A recipe returns a table with a :run() method (tide.recipe); run it.
  if type(result) == "table" and type(result.run) == "function" then
    result = result:run(args)
  end
  if type(result) == "number" then return result end
  return 0
end

M.register("run", {
  summary = "run a Lua script or recipe",
  usage = "usage: tide run FILE.lua [ARGS...]\n\nRuns FILE with `tide` loadable by require; ARGS are in the global `arg` (arg[0] is FILE).\nIf FILE returns a recipe (a table with :run), the recipe is run.",
  fn = function(args)
    if #args < 1 then io.stderr:write("tide run: missing FILE (see tide run --help)\n") return 2 end
    local file = table.remove(args, 1)
    return run_file(file, args)
  end,
})

M.register("version", {
  summary = "print the version",
  usage = "usage: tide version",
  fn = function() print("tide " .. require("tide")._VERSION) return 0 end,
})

-- Commands implemented in other modules register themselves here lazily:
-- each entry names the module whose .main(args) runs it.
local lazy = {
  { "generate", "tide.cmd.generate", "generate text from a model" },
  { "ppl", "tide.cmd.ppl", "perplexity of a model on a text file" },
  { "tokenize", "tide.cmd.tokenize", "print the token ids of a text" },
  { "inspect", "tide.cmd.inspect", "list the tensors and metadata of a safetensors/GGUF file or model folder" },
  { "serve", "tide.cmd.serve", "serve a model over an OpenAI-compatible HTTP API" },
  { "synth", "tide.cmd.synth", "write a random-weight checkpoint of a preset shape (benchmarks)" },
  { "quantize", "tide.cmd.quantize", "quantize a model to a GGUF with a scheme (recipes/quant)" },
  { "kld", "tide.cmd.kld", "KL divergence, top-1 agreement and perplexity ratio of a model against a base" },
  { "ab", "tide.cmd.ab", "A/B trial of recipes on the serving engine, with CIs and verdicts" },
  { "sweep", "tide.cmd.sweep", "sweep one recipe setting (e.g. engine.max_seqs=1,2,4,8): throughput vs latency" },
  { "profile", "tide.cmd.profile", "per-op profile of decode steps and a Chrome trace" },
  { "plan", "tide.cmd.plan", "deployment planner: predict a recipe on other hardware (recipes/hardware)" },
  { "calibrate", "tide.cmd.calibrate", "measure this machine into a hardware profile for tide plan" },
  { "bench", "tide.cmd.bench", "quantization speed: decode/prefill vs roofline and llama.cpp (table + JSON)" },
}
for _, l in ipairs(lazy) do
  local ok = package.searchpath and package.searchpath(l[2], package.path)
  if ok then
    M.register(l[1], { summary = l[3], module = l[2] })
  end
end

local function dispatch(name, args)
  local spec = M.commands[name]
  if not spec then
    io.stderr:write("tide: unknown command '", name, "'\n\n", M.usage(), "\n")
    return 2
  end
  if args[1] == "--help" or args[1] == "-h" then
    if spec.module then
      local mod = require(spec.module)
      print(mod.usage or spec.summary)
    else
      print(spec.usage or spec.summary)
    end
    return 0
  end
  if spec.module then return require(spec.module).main(args) or 0 end
  return spec.fn(args) or 0
end

function M.main(argv)
  local cmd = argv[1]
  if cmd == nil then
    return require("tide.repl").run()
  end
  if cmd == "--help" or cmd == "-h" or cmd == "help" then
    if argv[2] and M.commands[argv[2]] then return dispatch(argv[2], { "--help" }) end
    print(M.usage())
    return 0
  end
  if cmd == "--version" then cmd = "version" end
  if cmd == "-e" then
    local code = argv[2]
    if not code then io.stderr:write("tide -e: missing CODE\n") return 2 end
    _G.tide = require "tide"
    local chunk, err = loadstring(code, "=(command line)")
    if not chunk then io.stderr:write("tide -e: ", err, "\n") return 1 end
    local rest = {}
    for i = 3, #argv do rest[#rest + 1] = argv[i] end
    _G.arg = rest
    chunk(unpack(rest))
    return 0
  end
  if cmd:match("%.lua$") and not M.commands[cmd] then
    -- `tide FILE.lua` is `tide run FILE.lua`
    local rest = {}
    for i = 2, #argv do rest[#rest + 1] = argv[i] end
    return run_file(cmd, rest)
  end
  local rest = {}
  for i = 2, #argv do rest[#rest + 1] = argv[i] end
  return dispatch(cmd, rest)
end

return M
