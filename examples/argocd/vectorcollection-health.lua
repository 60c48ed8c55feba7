-- Argo CD health of a quiver VectorCollection, from its status and conditions. A previous
-- target that was drained stays Ready (its replicas serve again at once, for a rollback), so
-- it is Healthy.
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
if obj.metadata.generation ~= nil and status.observedGeneration ~= obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "the operator has not yet seen the latest spec"
  return hs
end
local conditions = {}
for _, c in ipairs(status.conditions or {}) do
  conditions[c.type] = c
end
local function is_true(name)
  return conditions[name] ~= nil and conditions[name].status == "True"
end
local phase = status.phase or "Pending"
if is_true("Degraded") then
  hs.status = "Degraded"
  hs.message = phase .. ": " .. (conditions["Degraded"].message or "")
elseif is_true("Ready") and is_true("Verified") then
  hs.status = "Healthy"
  hs.message = "verified, " .. tostring(status.readyReplicas or 0) .. " replicas ready"
else
  hs.status = "Progressing"
  hs.message = phase
  if status.message ~= nil then
    hs.message = phase .. ": " .. status.message
  end
end
return hs
