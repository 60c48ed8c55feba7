-- Argo CD health of a quiver CollectionAlias: Healthy when it serves its target through ready
-- endpoints; Degraded when the target failed, nothing answers, or its Service name is taken.
local hs = {}
if obj.metadata ~= nil and obj.metadata.deletionTimestamp ~= nil then
  hs.status = "Progressing"
  hs.message = "being deleted"
  return hs
end
local status = obj.status
if status == nil then
  hs.status = "Progressing"
  hs.message = "waiting for the operator"
  return hs
end
local conditions = {}
for _, c in ipairs(status.conditions or {}) do
  conditions[c.type] = c
end
-- "Switched" is the name an operator before the flip rename gave the condition.
local flipped = conditions["Flipped"] or conditions["Switched"]
local ready = conditions["Ready"]
if ready ~= nil and ready.status ~= "True" and (ready.reason == "NoReadyEndpoints" or ready.reason == "ServiceConflict") then
  hs.status = "Degraded"
  hs.message = ready.message
elseif flipped ~= nil and flipped.status == "True" then
  hs.status = "Healthy"
  hs.message = "serving " .. (status.current or "")
elseif flipped ~= nil and flipped.reason == "TargetFailed" then
  -- The target failed; the alias still serves its previous collection (if any).
  hs.status = "Degraded"
  hs.message = flipped.message
else
  hs.status = "Progressing"
  hs.message = status.message or "waiting for the target to be verified"
end
return hs
