-- GET Patient?family=X over family names listed one per line in $FAMILIES_FILE.
local families = {}
for line in io.lines(os.getenv("FAMILIES_FILE")) do families[#families + 1] = line end
local auth = "Bearer " .. os.getenv("API_KEY")
local counter = 0
request = function()
  counter = counter + 1
  local family = families[(counter * 7919) % #families + 1]
  return wrk.format("GET", "/fhir/R4/Patient?family=" .. family, {Authorization = auth})
end
dofile(os.getenv("BENCH_DIR") .. "/wrk/report.lua")
