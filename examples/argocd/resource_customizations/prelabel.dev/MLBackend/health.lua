-- Argo CD health of a Prelabel MLBackend, read from the status the operator writes.
-- Healthy: Ready. Progressing: being deleted, not yet seen by the operator, or still starting
-- (backend pods coming up, registration waiting for them). Degraded: anything that needs a person
-- (missing Secret, refused key, incompatible labeling config, Label Studio unreachable, RBAC...).
-- Pre-labeling (spec.prelabel) never changes the health, only the message: a run over a big project
-- can take hours and must not hold later sync waves back, and a failed task is data to look at, not
-- a broken deployment. Its progress shows as e.g. "; pre-labeling Progressing 180/200".
-- Training (spec.training, status.training) never changes the health either, only the message: a
-- run (Waiting, Training, Evaluating) can take an hour and must not hold later sync waves back, and
-- a run that failed or was refused leaves the model that served serving (the candidate is only
-- promoted by the gate), so nothing is broken: "; training Failed (job yolo-train-3)". A promoted
-- version rolls the Deployment, which stays Available while it rolls.
local hs = {}
local starting = {DeploymentNotAvailable = true, WaitingForBackend = true, NotChecked = true}

if obj.metadata.deletionTimestamp ~= nil then
  hs.status = "Progressing"
  hs.message = "Deleting: the operator is removing the Label Studio registrations"
  return hs
end
if obj.status == nil or obj.status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report a status"
  return hs
end
local generation = obj.metadata.generation or 0
if obj.status.observedGeneration == nil or obj.status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to apply generation " .. generation
  return hs
end

local ready = nil
for _, condition in ipairs(obj.status.conditions) do
  if condition.type == "Ready" then
    ready = condition
  end
end
if ready == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Ready condition"
elseif ready.status == "True" then
  hs.status = "Healthy"
  hs.message = "Registered at " .. (obj.status.url or "?") .. " in " .. (obj.status.projectsSummary or "?") .. " projects"
  local prelabel = obj.status.prelabel
  if prelabel ~= nil and prelabel.phase ~= nil then
    hs.message = hs.message .. "; pre-labeling " .. prelabel.phase .. " " .. (prelabel.summary or "")
  end
  local training = obj.status.training
  if training ~= nil and training.phase ~= nil and training.phase ~= "Idle" then
    hs.message = hs.message .. "; training " .. tostring(training.phase)
    if training.phase == "Promoted" and training.version ~= nil then
      hs.message = hs.message .. " " .. tostring(training.version)
    elseif training.job ~= nil then
      hs.message = hs.message .. " (job " .. tostring(training.job) .. ")"
    end
  end
elseif starting[ready.reason] then
  hs.status = "Progressing"
  hs.message = ready.reason .. ": " .. (ready.message or "")
else
  hs.status = "Degraded"
  hs.message = ready.reason .. ": " .. (ready.message or "")
end
return hs
