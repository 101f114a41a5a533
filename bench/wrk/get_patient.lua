-- GET Patient/{id} over ids listed one per line in $IDS_FILE, with $API_KEY.
local ids = {}
for line in io.lines(os.getenv("IDS_FILE")) do ids[#ids + 1] = line end
local auth = "Bearer " .. os.getenv("API_KEY")
local counter = 0
request = function()
  counter = counter + 1
  local id = ids[(counter * 7919) % #ids + 1]
  return wrk.format("GET", "/fhir/R4/Patient/" .. id, {Authorization = auth})
end
dofile(os.getenv("BENCH_DIR") .. "/wrk/report.lua")
