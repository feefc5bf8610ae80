// The Switchyard client for browsers and Node (docs/clients.md, "TypeScript").
export { Client, DEFAULT_PUBLISH_WINDOW, subscriptionSpec, uuidv7 } from "./client.js";
export { Subscription } from "./subscription.js";
export { SwitchyardError, ErrorCode } from "./errors.js";
export { backoffDelay, nextAttempt, DEFAULT_BACKOFF } from "./backoff.js";
export { ResumeState, allowedPriorities } from "./resume.js";
