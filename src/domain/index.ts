/**
 * `companion-runtime/domain`: the pure decisions alone (integrity, pinning from a hub, the GGUF header, the model policy
 * and memory fit, lifecycle, admission, resource policy, the restart circuit, the request gate) and
 * their typed errors. No I/O, no services.
 */
export * as Admission from "./Admission.js"
export * as Budget from "./Budget.js"
export * as Circuit from "./Circuit.js"
export {
  AdmissionError,
  type AdmissionReason,
  CircuitOpenError,
  HubError,
  type DomainError,
  type DomainReason,
  IntegrityError,
  type IntegrityReason,
  LifecycleError,
  type LifecycleReason,
  type Refusal,
  ResourceError,
  type ResourceReason
} from "./Errors.js"
export * as Gguf from "./Gguf.js"
export { GgufError, type GgufReason } from "./Gguf.js"
export * as Hub from "./Hub.js"
export * as Integrity from "./Integrity.js"
export * as Lifecycle from "./Lifecycle.js"
export * as MemoryFit from "./MemoryFit.js"
export * as ModelPolicy from "./ModelPolicy.js"
export { PolicyError } from "./ModelPolicy.js"
export * as RequestGate from "./RequestGate.js"
export * as ResourcePolicy from "./ResourcePolicy.js"
