-- Argo CD health of a quiver CollectionAlias: Healthy when it serves spec.collection.
local hs = {}
local status = obj.status
if status == nil then
  hs.status = "Progressing"
  hs.message = "waiting for the operator"
  return hs
end
local switched = nil
for _, c in ipairs(status.conditions or {}) do
  if c.type == "Switched" then
    switched = c
  end
end
if switched ~= nil and switched.status == "True" then
  hs.status = "Healthy"
  hs.message = "serving " .. (status.current or "")
elseif switched ~= nil and switched.reason == "TargetFailed" then
  -- The target failed; the alias still serves its previous collection (if any).
  hs.status = "Degraded"
  hs.message = switched.message
else
  hs.status = "Progressing"
  hs.message = status.message or "waiting for the target to be verified"
end
return hs
