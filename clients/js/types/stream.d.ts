// Type declarations for the event-stream store and React hook (src/stream.js).
import type { Client, ClientOptions, ConnectionState, Envelope, SubscribeOptions, SwitchyardError } from "./index.js";

export interface EventStreamOptions extends ClientOptions {
  /** Use this client instead of making one (it is then not closed by the stream). */
  client?: Client;
  subscription?: Omit<SubscribeOptions, "onDelivery">;
  /** Events kept, newest kept (default 50). */
  maxEvents?: number;
  /** Latest stored matches shown first (default `maxEvents`; 0: live only). */
  history?: number;
}

export interface EventStreamSnapshot {
  /** Oldest first (by cursor), at most `maxEvents`, each once. */
  events: Envelope[];
  state: ConnectionState | "idle";
  isConnected: boolean;
  isReplaying: boolean;
  error: SwitchyardError | null;
  subscriptionId: string | null;
  reconnectInMs?: number | null;
  attempt?: number;
}

export interface EventStream {
  subscribe(listener: () => void): () => void;
  getSnapshot(): EventStreamSnapshot;
  start(): void;
  change(subscription: SubscribeOptions, options?: { fromCursor?: number }): Promise<string | null>;
  reconnect(): void;
  clear(): void;
  close(): void;
  readonly client: Client | null;
}

export declare function createEventStream(options?: EventStreamOptions): EventStream;
export declare function historyStart(client: Client, spec: Record<string, unknown>, limit: number): Promise<number | null>;

/** The parts of React the hook uses (pass `React` itself). */
export interface ReactLike {
  useState<S>(init: () => S): [S, unknown];
  useEffect(effect: () => void | (() => void), deps: unknown[]): void;
  useSyncExternalStore<T>(subscribe: (l: () => void) => () => void, get: () => T, server?: () => T): T;
}

export declare function useEventStream(
  React: ReactLike,
  options: EventStreamOptions,
): EventStreamSnapshot & {
  reconnect(): void;
  clear(): void;
  setSubscription(subscription: SubscribeOptions): Promise<string | null>;
};
