-- Argo CD health check for llmservice.dev/LLMService.
--
-- Installed as the argocd-cm key resource.customizations.health.llmservice.dev_LLMService
-- (manifests/argocd/argocd-cm-patch.yaml embeds this file: hack/gen-argocd.py). Argo CD sets the
-- global `obj` to the live object and reads the returned table's `status` and `message`.
--
-- It reads only what the operator writes (operator/llmservice_operator/status.py):
-- status.observedGeneration, status.conditions (Ready, Progressing, Degraded, each with its
-- observedGeneration), status.phase, status.replicas, status.endpoint, status.activeVersion.
--
-- Argo CD runs this in gopher-lua (Lua 5.1) with only the base and table libraries loaded, so
-- no string.* / math.* here: strings are built with `..` and tostring().
--
--   status not written, or written for an older generation      -> Progressing
--   Degraded=True (InvalidSpec, ServeDeployFailed, ...)          -> Degraded
--   Progressing=False (InsufficientCapacity): a change held       -> Progressing
--   Ready=True and Progressing not True                          -> Healthy
--   scaled to zero on purpose (spec.replicas 0, or autoscaling
--   with minReplicas 0 and status.replicas 0), nothing rolling   -> Suspended
--   anything else (creating, waiting for Serve, upgrading)       -> Progressing

local hs = {}

local function condition(status, ctype)
  if status == nil or type(status.conditions) ~= "table" then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if type(c) == "table" and c.type == ctype then
      return c
    end
  end
  return nil
end

local function is_true(c)
  return c ~= nil and c.status == "True"
end

local function text(value)
  if type(value) == "string" then
    return value
  end
  if type(value) == "number" then
    return tostring(value)
  end
  return ""
end

-- "Reason: message", or whichever of the two is set.
local function describe(c)
  if c == nil then
    return ""
  end
  local reason, message = text(c.reason), text(c.message)
  if reason ~= "" and message ~= "" then
    return reason .. ": " .. message
  end
  if message ~= "" then
    return message
  end
  return reason
end

local function join(a, b)
  if a == "" then
    return b
  end
  if b == "" then
    return a
  end
  return a .. "; " .. b
end

local spec = obj.spec or {}
local status = obj.status
local generation = nil
if obj.metadata ~= nil then
  generation = tonumber(obj.metadata.generation)
end

-- 1. Nothing the operator says counts until it has seen this generation of the spec.
local stale = status == nil or tonumber(status.observedGeneration) == nil
if not stale and generation ~= nil then
  if tonumber(status.observedGeneration) < generation then
    stale = true
  elseif type(status.conditions) == "table" then
    for _, c in ipairs(status.conditions) do
      local seen = type(c) == "table" and tonumber(c.observedGeneration) or nil
      if seen ~= nil and seen < generation then
        stale = true
      end
    end
  end
end
if stale then
  hs.status = "Progressing"
  if generation ~= nil then
    hs.message = "waiting for the operator to observe generation " .. tostring(generation)
  else
    hs.message = "waiting for the operator to observe the spec"
  end
  return hs
end

local ready = condition(status, "Ready")
local progressing = condition(status, "Progressing")
local degraded = condition(status, "Degraded")

-- 2. Degraded: Serve deploy failed, initializing timeout, or a spec the operator rejects.
--    Also when only phase/reason say so, so an InvalidSpec never reads as anything else.
local invalid = nil
for _, c in ipairs({ ready, progressing, degraded }) do
  if c ~= nil and c.reason == "InvalidSpec" then
    invalid = c
  end
end
if is_true(degraded) or invalid ~= nil or status.phase == "Failed" then
  hs.status = "Degraded"
  hs.message = describe(is_true(degraded) and degraded or invalid or ready)
  if hs.message == "" then
    hs.message = "LLMService failed"
  end
  return hs
end

-- 3. Held for capacity: the spec is not running yet, whatever still serves (not Healthy).
if progressing ~= nil and progressing.reason == "InsufficientCapacity" then
  hs.status = "Progressing"
  hs.message = describe(progressing)
  if is_true(ready) and text(status.activeVersion) ~= "" then
    hs.message = hs.message .. "; still serving version " .. text(status.activeVersion)
  end
  return hs
end

-- 4. Healthy: KubeRay's Ready (Serve app running with endpoints) and no rollout under way.
if is_true(ready) and not is_true(progressing) then
  hs.status = "Healthy"
  hs.message = text(ready.message)
  if hs.message == "" then
    hs.message = "serving"
  end
  if text(status.activeVersion) ~= "" then
    hs.message = hs.message .. "; version " .. text(status.activeVersion)
  end
  if text(status.endpoint) ~= "" then
    hs.message = hs.message .. "; " .. text(status.endpoint)
  end
  return hs
end

-- 5. Suspended: scaled to zero on purpose, and not in the middle of creating or upgrading.
local autoscaling = spec.autoscaling
local scaled_to_zero = tonumber(spec.replicas) == 0
if
  type(autoscaling) == "table"
  and tonumber(autoscaling.minReplicas) == 0
  and tonumber(status.replicas) == 0
then
  scaled_to_zero = true
end
local rolling = progressing ~= nil
  and is_true(progressing)
  and (progressing.reason == "Creating" or progressing.reason == "Upgrading")
if scaled_to_zero and not rolling then
  hs.status = "Suspended"
  if tonumber(spec.replicas) == 0 then
    hs.message = "scaled to zero (spec.replicas is 0)"
  else
    hs.message = "scaled to zero by the autoscaler (minReplicas 0); scales up on traffic"
  end
  return hs
end

-- 6. Everything else is on its way: creating, waiting for the Serve app, upgrading.
hs.status = "Progressing"
local message = ""
if is_true(progressing) then
  message = describe(progressing)
end
if ready ~= nil and not is_true(ready) then
  message = join(message, "not ready: " .. describe(ready))
elseif is_true(ready) then
  message = join(message, "still serving")
end
if message == "" then
  message = "waiting for the LLMService to become ready"
end
hs.message = message
return hs
