-- wrk script: favorite and unfavorite random articles as random users.
-- Reads bench/.wrk-mix.txt: the first line holds tokens, the second slugs,
-- both space-separated.
local tokens, slugs = {}, {}
local file = io.open(os.getenv("MIX_FILE") or "bench/.wrk-mix.txt")
local first = true
for line in file:lines() do
  for item in line:gmatch("%S+") do
    if first then table.insert(tokens, item) else table.insert(slugs, item) end
  end
  first = false
end
file:close()
math.randomseed(7)

request = function()
  local method = (math.random(2) == 1) and "POST" or "DELETE"
  local path = "/api/articles/" .. slugs[math.random(#slugs)] .. "/favorite"
  local headers = { ["Authorization"] = "Token " .. tokens[math.random(#tokens)] }
  return wrk.format(method, path, headers)
end
