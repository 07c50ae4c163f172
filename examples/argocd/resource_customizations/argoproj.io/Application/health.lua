-- Application health from its status, so sync waves wait for child Applications to be Healthy
-- (Argo CD stopped assessing Application health by default in 1.8).
local hs = {status = "Progressing", message = ""}
if obj.status ~= nil and obj.status.health ~= nil then
  hs.status = obj.status.health.status
  hs.message = obj.status.health.message or ""
end
return hs
