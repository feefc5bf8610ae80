// Type declarations for the Switchyard client (src/index.js). Wire contract:
// docs/protocol.md. The envelope and subscription fields keep the protocol's names.

export type Priority = "critical" | "high" | "normal" | "low";

/** A stored event as delivered (docs/protocol.md section 2). */
export interface Envelope {
  id: string;
  type: string;
  topic: string;
  priority: Priority;
  timestamp: string;
  source: string;
  target: string | null;
  correlation_id: string | null;
  agent_id: string | null;
  task_id: string | null;
  payload: unknown;
  metadata: Record<string, unknown>;
  ttl_ms: number | null;
  cursor: number;
}

/** An event to publish: `type` or `topic` is required; the rest has defaults. */
export interface EventInput {
  id?: string;
  type?: string;
  topic?: string;
  priority?: Priority | Uppercase<Priority>;
  timestamp?: string;
  source?: string;
  target?: string | null;
  correlation_id?: string | null;
  agent_id?: string | null;
  task_id?: string | null;
  payload?: unknown;
  metadata?: Record<string, unknown>;
  ttl_ms?: number | null;
}

export interface Filter {
  event_types?: string[];
  topics?: string[];
  sources?: string[];
  targets?: string[];
  priorities?: Priority[];
  agent_ids?: string[];
  task_ids?: string[];
  min_priority?: Priority;
}

export type Delivery =
  | { type: "event"; event: Envelope; attempt: number }
  | { type: "replay_complete"; lastCursor: number }
  | { type: "dropped"; count: number; reason: "slow_consumer" | "client_buffer" | string }
  | { type: "gap"; fromCursor: number; toCursor: number; reason: string };

export interface SubscribeOptions {
  /** Unique on the connection; default a UUIDv7 (kept across reconnects). */
  id?: string;
  type?: "all" | "pattern" | "filtered" | "conditional";
  patterns?: string[] | string;
  filter?: Filter;
  /** A CEL expression (docs/conditions.md). */
  condition?: string;
  /** At-least-once delivery: acknowledge each event with `ack`. */
  ack?: boolean;
  /** State kept by the server across connections and restarts; implies `ack`. */
  durable?: string;
  /** Replay stored matches after this cursor first. */
  fromCursor?: number;
  /** Replay stored matches from this RFC 3339 time first. */
  since?: string;
  coalesce?: { key: string; window_ms?: number };
  ackTimeoutMs?: number;
  maxAttempts?: number;
  maxInFlight?: number;
  /** Deliveries go here instead of the async iterator. */
  onDelivery?: (delivery: Delivery) => void;
  /** Deliveries buffered for a reader that is behind (default 10000). */
  bufferLimit?: number;
  [protocolField: string]: unknown;
}

export declare const ErrorCode: {
  readonly INVALID_JSON: "invalid_json";
  readonly UNKNOWN_COMMAND: "unknown_command";
  readonly INVALID_EVENT: "invalid_event";
  readonly INVALID_SUBSCRIPTION: "invalid_subscription";
  readonly INVALID_PATTERN: "invalid_pattern";
  readonly INVALID_CONDITION: "invalid_condition";
  readonly UNKNOWN_SUBSCRIPTION: "unknown_subscription";
  readonly UNKNOWN_EVENT: "unknown_event";
  readonly UNSUPPORTED_FRAME: "unsupported_frame";
  readonly PAYLOAD_TOO_LARGE: "payload_too_large";
  readonly RATE_LIMITED: "rate_limited";
  readonly TOO_MANY_SUBSCRIPTIONS: "too_many_subscriptions";
  readonly UNAUTHORIZED: "unauthorized";
  readonly FORBIDDEN: "forbidden";
  readonly INTERNAL: "internal";
  readonly UNAVAILABLE: "unavailable";
  readonly TIMEOUT: "timeout";
  readonly CLOSED: "closed";
  readonly FAILED: "failed";
  readonly DISCONNECTED: "disconnected";
  readonly UNEXPECTED: "unexpected";
};
export type ErrorCodeValue = (typeof ErrorCode)[keyof typeof ErrorCode];

export declare class SwitchyardError extends Error {
  readonly code: ErrorCodeValue | string;
  readonly requestId?: unknown;
  /** The HTTP status, for errors learnt over HTTP (`unauthorized`: 401). */
  readonly status?: number;
  constructor(code: string, message?: string, extra?: { requestId?: unknown; status?: number });
  static fromServer(error: { code?: string; message?: string; request_id?: unknown }): SwitchyardError;
}

export interface Published {
  eventId: string;
  cursor: number;
  duplicate: boolean;
}
export type BatchResult = ({ ok: true } & Published) | { ok: false; error: SwitchyardError };

export type ConnectionState = "connecting" | "connected" | "reconnecting" | "failed" | "closed";
export interface StateChange {
  state: ConnectionState;
  /** reconnecting: failures in a row, and the wait before the next attempt. */
  attempt?: number;
  delayMs?: number;
  url?: string;
  /** failed: why. */
  error?: SwitchyardError;
}

export interface BackoffPolicy {
  initialMs: number;
  maxMs: number;
  multiplier: number;
  /** 0.2 spreads each delay over ±20 %. */
  jitter: number;
}

export interface ClientOptions {
  url?: string;
  /** Several nodes of one cluster: tried in order, then round robin. */
  urls?: string[];
  /** Sent as `?token=` on the upgrade (browsers cannot set headers there). */
  token?: string;
  /** A WebSocket constructor (default: the global one; Node 18–21: e.g. the `ws` package). */
  WebSocket?: unknown;
  /** For `unauthorized` diagnosis and history (default: the global fetch). */
  fetch?: typeof fetch;
  backoff?: Partial<BackoffPolicy>;
  /** Reconnect attempts in a row before giving up; default never. */
  maxAttempts?: number | null;
  /** How long a call waits for its reply, across reconnects (default 30000). */
  requestTimeoutMs?: number;
  connectTimeoutMs?: number;
  /** Publishes awaiting their answer at once (default 64); more wait for a slot. */
  publishWindow?: number;
  onState?: (change: StateChange) => void;
  onError?: (error: SwitchyardError | Error) => void;
}

export declare class Subscription implements AsyncIterable<Delivery> {
  readonly id: string;
  /** True until `replay_complete` when a replay (or a resume) runs. */
  readonly replaying: boolean;
  readonly lastCursor: number | null;
  next(): Promise<IteratorResult<Delivery, undefined>>;
  [Symbol.asyncIterator](): AsyncIterator<Delivery, undefined>;
  /** Only the events, as envelopes. */
  events(): AsyncGenerator<Envelope, void>;
  ack(event: Envelope | string): void;
  nack(event: Envelope | string, options?: { requeue?: boolean; delayMs?: number }): void;
  unsubscribe(): Promise<void>;
}

export declare class Client {
  constructor(options: ClientOptions);
  readonly state: ConnectionState;
  readonly urls: string[];
  onState(listener: (change: StateChange) => void): () => void;
  onError(listener: (error: SwitchyardError | Error) => void): () => void;
  connected(timeoutMs?: number): Promise<void>;
  publish(event: EventInput): Promise<Published>;
  publishBatch(events: EventInput[]): Promise<BatchResult[]>;
  subscribe(options?: SubscribeOptions): Promise<Subscription>;
  unsubscribe(id: string): Promise<void>;
  ping(): Promise<string>;
  /** Any command of the protocol; resolves with its reply. */
  request(frame: Record<string, unknown>, options?: { retry?: boolean; timeoutMs?: number }): Promise<any>;
  reconnect(): void;
  close(): void;
}

export declare const DEFAULT_PUBLISH_WINDOW: 64;
export declare const DEFAULT_BACKOFF: Readonly<BackoffPolicy>;
export declare function backoffDelay(attempt: number, random?: number, policy?: Partial<BackoffPolicy>): number;
export declare function nextAttempt(index: number, urlCount: number, failures: number): { index: number; wait: number | null };
export declare function subscriptionSpec(options?: SubscribeOptions): Record<string, unknown>;
export declare function uuidv7(): string;
export declare function allowedPriorities(spec: { filter?: Filter }): Priority[];
export declare class ResumeState {
  constructor(spec: Record<string, unknown>, createdAt: string);
  accept(event: Partial<Envelope>, attempt?: number): "deliver" | "skip" | "reack";
  replayComplete(): void;
  resolved(eventId: string): void;
  resumePoint(): { from_cursor?: number; since?: string };
}
