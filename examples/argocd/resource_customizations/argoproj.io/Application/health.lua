-- Application health for sync waves in an app of apps (Argo CD stopped assessing Application health
-- by default in 1.8). A parent waits in a wave until each child Application is Healthy, and its sync
-- fails on a Degraded one. Healthy: the child has synced and its resources are Healthy. Progressing:
-- not synced yet, syncing, waiting to retry a failed attempt (its syncPolicy.retry), or its health
-- not compared since its last sync yet. Degraded: its last sync failed for good (retries spent),
-- with Argo CD's message, so a half-applied child is never called Healthy; the parent's retry goes
-- on once the child is fixed.
local hs = {status = "Progressing", message = "Waiting for the first sync"}
if obj.status == nil then
  return hs
end
local op = obj.status.operationState
if op ~= nil then
  if op.phase == "Failed" or op.phase == "Error" then
    hs.status = "Degraded"
    hs.message = "Sync " .. op.phase .. ": " .. (op.message or "")
    return hs
  end
  if op.phase == "Running" or op.phase == "Terminating" then
    if (op.retryCount or 0) > 0 then
      hs.message = "Retrying a failed sync: " .. (op.message or "")
    else
      hs.message = "Syncing: " .. (op.message or "")
    end
    return hs
  end
  -- A health compared before the sync ended describes the state before it (Argo CD refreshes right
  -- after a sync; until then a re-synced child could still look Healthy from before).
  if op.finishedAt ~= nil and obj.status.reconciledAt ~= nil and obj.status.reconciledAt < op.finishedAt then
    hs.message = "Waiting for the health after the sync"
    return hs
  end
elseif obj.status.sync == nil or obj.status.sync.status ~= "Synced" then
  return hs
end
if obj.status.health ~= nil and obj.status.health.status ~= nil then
  hs.status = obj.status.health.status
  hs.message = obj.status.health.message or ""
end
return hs
