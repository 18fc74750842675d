/**
 * The in-flight slots and the FIFO queue in front of them: who waits, in what order, and how a
 * freed slot passes straight to the head of the queue. Effect's `Semaphore` does not promise that
 * waiters are served in arrival order, and a slot given back and taken again would let a newcomer
 * overtake the queue; this hands it over instead.
 *
 * The gate is plain state that lives inside its owner's `Ref`. Each function here is one step,
 * applied within one atomic update of that Ref; completing a waiter's Deferred inside the update
 * is how a slot changes hands without a window. This is the only code of the project that
 * completes Deferreds by hand. The counts are the domain's (`Admission`): the decision to admit or
 * to queue is `RequestGate.enter`'s, made before `enqueue` is called.
 */
import { Deferred, Either, Exit, FiberId } from "effect"
import * as Admission from "../../domain/Admission.js"

export interface Waiter<A, E> {
  readonly deferred: Deferred.Deferred<A, E>
  /** Set when a freed slot was handed to this waiter. */
  granted: boolean
}

export interface SlotGate<A, E> {
  readonly admission: Admission.AdmissionState
  /** FIFO: the head gets the next free slot. */
  readonly waiters: ReadonlyArray<Waiter<A, E>>
  /** Completed when in-flight work reaches zero, for a drain waiting on it. */
  readonly idle: Deferred.Deferred<void> | undefined
}

/** An invariant of the gate broke: a bug, not a failure to report. */
const must = <B, F>(result: Either.Either<B, F>): B =>
  Either.getOrElse(result, () => {
    throw new Error("SlotGate: a step the gate's own state allowed was refused")
  })

export const make = <A, E>(limits: Admission.AdmissionLimits): SlotGate<A, E> => ({
  admission: Admission.makeAdmissionState(limits),
  waiters: [],
  idle: undefined
})

/** Join the back of the queue; `admission` already counts the place (from `RequestGate.enter`). */
export const enqueue = <A, E>(gate: SlotGate<A, E>, admission: Admission.AdmissionState): readonly [Waiter<A, E>, SlotGate<A, E>] => {
  const waiter: Waiter<A, E> = { deferred: Deferred.unsafeMake(FiberId.none), granted: false }
  return [waiter, { ...gate, admission, waiters: [...gate.waiters, waiter] }]
}

/**
 * A slot is given back. With `handOver` (the runtime still serves) it goes straight to the head of
 * the queue, which leaves the queue holding it; otherwise it is freed, and a drain waiting for the
 * last one is told.
 */
export const release = <A, E>(gate: SlotGate<A, E>, handOver: A | undefined): SlotGate<A, E> => {
  const [head, ...rest] = gate.waiters
  if (head !== undefined && handOver !== undefined) {
    head.granted = true
    Deferred.unsafeDone(head.deferred, Exit.succeed(handOver))
    return { ...gate, admission: must(Admission.recordDequeue(gate.admission)), waiters: rest }
  }
  const admission = must(Admission.recordComplete(gate.admission))
  if (admission.inFlight === 0 && gate.idle !== undefined) Deferred.unsafeDone(gate.idle, Exit.void)
  return { ...gate, admission }
}

/**
 * The runtime has become ready with requests waiting for it (loaded on demand): the head of the
 * queue gets every free slot, each moving from the queue to in flight.
 */
export const fill = <A, E>(gate: SlotGate<A, E>, handOver: A): SlotGate<A, E> => {
  let admission = gate.admission
  const waiters = [...gate.waiters]
  while (waiters.length > 0 && admission.inFlight < admission.maxInFlight) {
    const head = waiters.shift()!
    head.granted = true
    Deferred.unsafeDone(head.deferred, Exit.succeed(handOver))
    admission = must(Admission.recordAdmit(must(Admission.recordDequeue(admission))))
  }
  return { ...gate, admission, waiters }
}

/**
 * A waiter leaves without running (timed out, interrupted). Still queued: it leaves the queue.
 * Already handed a slot (the hand-over and its departure raced): `true`, the caller must give that
 * slot back. Refused meanwhile: nothing.
 */
export const leave = <A, E>(gate: SlotGate<A, E>, waiter: Waiter<A, E>): readonly [boolean, SlotGate<A, E>] => {
  if (!gate.waiters.includes(waiter)) return [waiter.granted, gate]
  return [false, { ...gate, admission: must(Admission.recordDequeue(gate.admission)), waiters: gate.waiters.filter((w) => w !== waiter) }]
}

/** Everyone queued is refused with `error` (the runtime is leaving `ready`). */
export const refuseAll = <A, E>(gate: SlotGate<A, E>, error: E): SlotGate<A, E> => {
  for (const waiter of gate.waiters) Deferred.unsafeDone(waiter.deferred, Exit.fail(error))
  return { ...gate, waiters: [], admission: { ...gate.admission, queued: 0 } }
}

/** A Deferred completed when nothing is in flight: at once if nothing is now. */
export const whenIdle = <A, E>(gate: SlotGate<A, E>): readonly [Deferred.Deferred<void>, SlotGate<A, E>] => {
  const idle = Deferred.unsafeMake<void>(FiberId.none)
  if (gate.admission.inFlight === 0) Deferred.unsafeDone(idle, Exit.void)
  return [idle, { ...gate, idle }]
}

/** No drain is waiting any more. */
export const forgetIdle = <A, E>(gate: SlotGate<A, E>): SlotGate<A, E> => ({ ...gate, idle: undefined })
