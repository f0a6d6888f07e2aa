// Types of @sandboxd/client, written by hand after sandboxd/schema.py (the
// daemon publishes the same as JSON Schema in /openapi.json).  Checked by
// `npm run typecheck`: against the implementation (lib/*.js, JSDoc, checkJs)
// and against test/types.ts, which uses them as a caller would.

/** What a bytes field accepts: bytes, or a string sent as its UTF-8. */
export type BytesLike = Uint8Array | ArrayBuffer | string;

/** Per-run limits. Times in seconds, sizes in bytes; absent fields take the daemon's defaults. */
export interface Limits {
  /** CPU seconds (default 2). */
  cpu_time?: number;
  /** Wall-clock seconds (default 2 x cpu_time + 1). */
  wall_time?: number | null;
  /** Bytes (default 256 MiB, at least 4 MiB). */
  memory?: number;
  procs?: number;
  /** Bytes per stream (stdout, stderr); beyond it the run stops with output_limit. */
  output?: number;
  file_size?: number;
  open_files?: number;
  /** Bytes (default: = memory). */
  stack?: number | null;
}

/** Per-test overrides of a submission's limits. */
export type LimitsPatch = Pick<Limits, "cpu_time" | "wall_time" | "memory" | "procs" | "output" | "file_size">;

export interface FileIn {
  /** Relative to /box. */
  path: string;
  content?: BytesLike;
  /** Instead of content: a file of the store (Client.upload's hash). */
  sha256?: string;
  executable?: boolean;
}

export interface RunRequest {
  /** argv, never a shell string. */
  cmd: string[];
  env?: Record<string, string> | null;
  stdin?: BytesLike;
  /** Instead of stdin: a file of the store. */
  stdin_sha256?: string;
  files_in?: FileIn[];
  /** Paths relative to /box to copy out (at most 64). */
  files_out?: string[];
  limits?: Limits;
  cwd?: string;
  /** -1000..1000, default 0. */
  priority?: number;
  /** Seconds the run may wait in the queue. */
  queue_deadline?: number | null;
  /** Fleet only: run on a host carrying this tag. */
  host_tag?: string | null;
}

export interface Program {
  lang: string;
  /** The source, or source_sha256. */
  source?: BytesLike;
  source_sha256?: string;
  limits?: Limits;
}

export type CheckerKind = "exact" | "tokens" | "lines" | "float" | "custom";

export interface Checker {
  kind?: CheckerKind;
  abs_tol?: number;
  rel_tol?: number;
  /** Only for kind "custom". */
  program?: Program | null;
}

export interface TestCase {
  input?: BytesLike;
  /** null/absent: any output passes if the run is ok. */
  expected?: BytesLike | null;
  /** Instead of input / expected: files of the store. */
  input_sha256?: string;
  expected_sha256?: string;
  limits?: LimitsPatch | null;
}

export interface Submission {
  /** A language id from languages(). */
  lang: string;
  /** The source, or source_sha256 (a file of the store). */
  source?: BytesLike;
  source_sha256?: string;
  /** 1..1000 tests. */
  tests: TestCase[];
  files?: FileIn[];
  /** argv entries appended to the compile command. */
  compile_options?: string[];
  limits?: Limits;
  compile_limits?: Limits | null;
  checker?: Checker;
  interactor?: Program | null;
  priority?: number;
  stop_on_first_failure?: boolean;
  queue_deadline?: number | null;
  host_tag?: string | null;
}

export type RunStatus =
  | "ok"
  | "nonzero_exit"
  | "signaled"
  | "time_limit"
  | "memory_limit"
  | "output_limit"
  | "bad_syscall"
  | "internal_error";

export interface FileOut {
  path: string;
  content?: Uint8Array | null;
  /** Why the file was not copied (refused, missing, too big). */
  error?: string | null;
}

export interface RunResult {
  kind: "run";
  status: RunStatus;
  exit_code: number | null;
  signal: number | null;
  cpu_time: number;
  wall_time: number;
  memory: number;
  stdout: Uint8Array;
  stderr: Uint8Array;
  stdout_truncated: boolean;
  stderr_truncated: boolean;
  files: FileOut[];
  message: string;
}

export type Verdict = "AC" | "WA" | "TLE" | "MLE" | "OLE" | "RE" | "CE" | "IE";

export interface TestResult {
  index: number;
  verdict: Verdict;
  time: number;
  wall_time: number;
  memory: number;
  exit_code: number | null;
  signal: number | null;
  /** A preview (4 KiB). */
  stdout: Uint8Array;
  stderr: Uint8Array;
  message: string;
}

export interface SubmissionResult {
  kind: "submission";
  verdict: Verdict;
  compile: RunResult | null;
  tests: TestResult[];
  time: number;
  memory: number;
  message: string;
  /** A Judge0/Piston job's runs in full; empty for a judged submission. */
  runs: RunResult[];
}

/** The daemon's error codes (docs/protocol.md; sandboxd/errors.py CODES). */
export type ErrorCode =
  | "bad_request"
  | "not_found"
  | "queue_full"
  | "queue_deadline"
  | "cancelled"
  | "draining"
  | "unauthorized"
  | "forbidden"
  | "conflict"
  | "internal";

/** Codes of the client itself: no reply came, or a reply that is not sandboxd's JSON. */
export type ClientErrorCode = "disconnected" | "invalid_reply" | "closed";

export interface WireError {
  code: ErrorCode;
  message: string;
  retry_after?: number | null;
}

export type JobState = "queued" | "running" | "done" | "cancelled" | "failed" | "lost";

export interface JobInfo {
  job: string;
  kind: "run" | "submission";
  state: JobState;
  result?: RunResult | SubmissionResult | null;
  error?: WireError | null;
  /** Fleet: the host that ran the job. */
  host?: string | null;
  created_at?: number | null;
  finished_at?: number | null;
}

export interface Language {
  id: string;
  name: string;
  compiled: boolean;
  source: string;
  version?: string;
  [key: string]: unknown;
}

export interface Readiness {
  ready: boolean;
  reason?: string;
}

/** Seconds. `{ deadline: 0 }` (or `retry: false`) turns retries off. */
export interface RetryPolicy {
  /** From the first failure of an outage, after which a failure is final (60). */
  deadline?: number;
  /** Before the first retry (0.1). */
  first?: number;
  /** Each further wait grows by this (2). */
  factor?: number;
  /** Longest wait between attempts unless the server's Retry-After says more (5). */
  cap?: number;
}

export interface ClientOptions {
  /** Sent as `Authorization: Bearer <token>`. */
  token?: string;
  retry?: RetryPolicy | false;
  /** Another fetch (default: globalThis.fetch). */
  fetch?: typeof fetch;
}

export interface CallOptions {
  /** Aborts the call, its retries and their waits; the promise rejects with the signal's reason. */
  signal?: AbortSignal;
}

export interface StartOptions extends CallOptions {
  /** Default: a fresh random key, re-sent on every retry. `false`: none (a dropped connection is then final). */
  idempotencyKey?: string | false;
  /** The daemon POSTs the finished JobInfo here. */
  callbackUrl?: string;
}

export interface WaitOptions extends CallOptions {
  /** Seconds; default: until the job is final. */
  timeout?: number;
}

/** One event of submitEvents(): the job queued, a test finished, the result (the last). */
export type SubmissionEvent =
  | { type: "accepted"; job: string }
  | { type: "test"; test: TestResult }
  | { type: "result"; result: SubmissionResult };

export declare const FINAL_STATES: ReadonlySet<JobState>;
export declare const DEFAULT_RETRY: Readonly<Required<RetryPolicy>>;

export declare class SandboxdError extends Error {
  constructor(
    code: ErrorCode | ClientErrorCode | string,
    message: string,
    extra?: { status?: number | null; retryAfter?: number | null; cause?: unknown },
  );
  /** The wire code, a ClientErrorCode, or the HTTP status as text for a reply that is not sandboxd's. */
  readonly code: ErrorCode | ClientErrorCode | string;
  /** The daemon's message alone (`message` is "code: detail"). */
  readonly detail: string;
  /** The HTTP status, null when no reply came. */
  readonly status: number | null;
  /** Seconds the server asked to wait (queue_full, draining). */
  readonly retryAfter: number | null;
}

export declare class Client {
  constructor(baseUrl: string, options?: ClientOptions);
  readonly baseUrl: string;
  run(req: RunRequest, options?: StartOptions): Promise<RunResult>;
  submit(sub: Submission, options?: StartOptions): Promise<SubmissionResult>;
  /** The submission's progress as it happens (Server-Sent Events); ends after the `result` event. */
  submitEvents(sub: Submission, options?: StartOptions): AsyncGenerator<SubmissionEvent, void, undefined>;
  /** Store `data` in the file store unless it is there; its SHA-256 (hex), to name it by. */
  upload(data: BytesLike, options?: CallOptions): Promise<string>;
  /** Whether the file store holds the file of this SHA-256 (hex). */
  hasFile(sha256: string, options?: CallOptions): Promise<boolean>;
  /** The stored file's bytes, checked against the hash; SandboxdError "not_found" if not stored. */
  download(sha256: string, options?: CallOptions): Promise<Uint8Array>;
  startRun(req: RunRequest, options?: StartOptions): Promise<JobInfo>;
  startSubmission(sub: Submission, options?: StartOptions): Promise<JobInfo>;
  job(id: string, options?: CallOptions): Promise<JobInfo>;
  wait(id: string, options?: WaitOptions): Promise<JobInfo>;
  cancel(id: string, options?: CallOptions): Promise<JobInfo>;
  languages(options?: CallOptions): Promise<Language[]>;
  status(options?: CallOptions): Promise<Record<string, unknown>>;
  health(options?: CallOptions): Promise<boolean>;
  ready(options?: CallOptions): Promise<Readiness>;
}

/** Bytes as text (UTF-8; invalid sequences become U+FFFD). */
export declare function text(bytes: Uint8Array | null | undefined): string;

// --- Live sessions (GET /v1/sessions, docs/sessions.md) ----------------------

/** The signals a session may send to its program. */
export type SessionSignal = "INT" | "TERM" | "HUP" | "QUIT" | "USR1" | "USR2" | "KILL";

/** What to run: the start message (schema SessionStart). */
export interface SessionStart {
  /** A language id of GET /v1/languages. */
  language: string;
  /** The main file's text (or give the program in `files`). */
  source?: string;
  files?: FileIn[];
  /** Arguments after the language's run command. */
  argv?: string[];
  /** Written to stdin before anything the session writes. */
  stdin?: string;
  /** A run's limits; wall_time is capped by the daemon's session maximum length. */
  limits?: Limits;
  /** Seconds with no input and no output before the session ends (capped by the daemon's). */
  idle_timeout?: number;
  /** Default: when the language compiles. */
  compile?: boolean;
}

/** Why a session ended. */
export type SessionReason =
  | "exit"
  | "compile_error"
  | "killed"
  | "idle"
  | "max_session"
  | "output_limit"
  | "closed"
  | "error";

export interface SessionEnd {
  /** The run's result (stdout/stderr empty: they were streamed); the compile's on a compile error. */
  result: RunResult;
  reason: SessionReason;
}

export interface SessionOptions {
  /** Bearer token: a header in Node, the start message's `token` in a browser. */
  token?: string;
  /** Program output as it comes, in order. */
  onOutput?: (stream: "stdout" | "stderr", data: Uint8Array) => void;
  /** Every control message of the server (compiled, started, result, error). */
  onEvent?: (msg: { type: string; [k: string]: unknown }) => void;
}

export declare class Session {
  /** The end: resolves with the result, rejects with a SandboxdError (a refusal, or the socket lost). */
  readonly result: Promise<SessionEnd>;
  /** Resolves when the program runs (after a compile). */
  readonly started: Promise<void>;
  /** The compile step's result, once it ran. */
  readonly compiled: RunResult | null;
  /** To stdin; resolves once the socket's buffer has room again. */
  write(data: Uint8Array | ArrayBuffer | string): Promise<void>;
  eof(): void;
  signal(signal: SessionSignal): void;
  kill(): void;
  /** Leave: the daemon kills the run. */
  close(): void;
}

/** Open a live session on a daemon or coordinator (http(s)://host:port) and start `start`. */
export declare function session(baseUrl: string, start: SessionStart, options?: SessionOptions): Promise<Session>;

/** The ws(s):// session URL of a daemon or coordinator's base URL. */
export declare function sessionUrl(baseUrl: string): string;
