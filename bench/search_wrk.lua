-- GET the paths listed one per line in $PATHS_FILE, in a shuffled order, with $API_KEY.
local paths = {}
for line in io.lines(os.getenv("PATHS_FILE")) do paths[#paths + 1] = line end
local auth = "Bearer " .. os.getenv("API_KEY")
local counter = 0
init = function(args)
  math.randomseed(os.time() + math.floor(os.clock() * 1000000))
  counter = math.random(1, #paths)
end
request = function()
  counter = counter + 1
  return wrk.format("GET", paths[(counter * 7919) % #paths + 1], {Authorization = auth})
end
dofile(os.getenv("BENCH_DIR") .. "/wrk/report.lua")
