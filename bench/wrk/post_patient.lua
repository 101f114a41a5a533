-- POST Patient (~1 KB) with $API_KEY.
local auth = "Bearer " .. os.getenv("API_KEY")
local f = io.open(os.getenv("BENCH_DIR") .. "/wrk/patient.json")
local body = f:read("*a")
f:close()
request = function()
  return wrk.format("POST", "/fhir/R4/Patient",
    {Authorization = auth, ["Content-Type"] = "application/fhir+json"}, body)
end
dofile(os.getenv("BENCH_DIR") .. "/wrk/report.lua")
