// The agent's console: sign in, click to call, the agent's interactions live, one
// interaction's timeline with its actions, Deferred Dial. gRPC-Web to the calldesk that served
// the page (@connectrpc/connect-web), messages from @calldesk/client (protoc-gen-es). No
// framework: the page is static HTML (index.html) that this script fills in.
import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import {
  CallProgress,
  EndReason,
  InteractionService,
  InteractionState,
  StartCallOutcome,
  type Interaction,
  type InteractionEvent,
} from "@calldesk/client";

// ---------------------------------------------------------------------------------------------
// Who the agent is

/** "token" when calldesk runs with --auth-tokens or --jwt-jwks (it says so in the page), else "development". */
const authMode =
  document.querySelector<HTMLMetaElement>('meta[name="calldesk-auth"]')?.content === "token"
    ? "token"
    : "development";
/** The token or agent id, for this tab only: sessionStorage, never localStorage or a cookie. */
const CREDENTIAL_KEY = `calldesk.${authMode}`;
let credential: string | null = sessionStorage.getItem(CREDENTIAL_KEY);

const identify: Interceptor = (next) => async (req) => {
  if (credential !== null) {
    if (authMode === "token") req.header.set("authorization", `Bearer ${credential}`);
    else req.header.set("x-agent-id", credential);
  }
  return next(req);
};

const client = createClient(
  InteractionService,
  createGrpcWebTransport({ baseUrl: location.origin, interceptors: [identify] }),
);

// ---------------------------------------------------------------------------------------------
// Small helpers

function el<T extends HTMLElement = HTMLElement>(id: string): T {
  const found = document.getElementById(id);
  if (!found) throw new Error(`#${id} is missing from the page`);
  return found as T;
}

const stateName = (s: InteractionState) => InteractionState[s] ?? String(s);
const progressName = (p: CallProgress) => CallProgress[p] ?? String(p);
const reasonName = (r: EndReason) => EndReason[r] ?? String(r);
const dateOf = (t: Timestamp | undefined) => (t ? timestampDate(t) : undefined);
const sleep = (ms: number, signal: AbortSignal) =>
  new Promise<void>((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    });
  });

/** Capped exponential backoff with jitter: 250 ms doubling to 5 s. */
class Backoff {
  private attempt = 0;
  next(): number {
    const ceiling = Math.min(5000, 250 * 2 ** this.attempt++);
    return ceiling / 2 + Math.random() * (ceiling / 2);
  }
  reset() {
    this.attempt = 0;
  }
}

/** Whether an error is the connection's (retry) rather than the request's (show it). */
function isTransient(err: ConnectError): boolean {
  return err.code === Code.Unavailable || err.code === Code.Unknown || err.code === Code.Internal
    || err.code === Code.Canceled || err.code === Code.DeadlineExceeded;
}

/** A protobuf message's fields, read by hand: length-delimited ones as bytes, varints as numbers. */
function fields(bytes: Uint8Array): Array<[number, Uint8Array | number]> {
  const out: Array<[number, Uint8Array | number]> = [];
  let i = 0;
  const varint = () => {
    let v = 0;
    for (let shift = 0; i < bytes.length && shift < 35; shift += 7) {
      const b = bytes[i++];
      v |= (b & 0x7f) << shift;
      if (!(b & 0x80)) break;
    }
    return v >>> 0;
  };
  while (i < bytes.length) {
    const key = varint();
    const wire = key & 7;
    if (wire === 2) {
      const len = varint();
      out.push([key >>> 3, bytes.subarray(i, i + len)]);
      i += len;
    } else if (wire === 0) out.push([key >>> 3, varint()]);
    else break;
  }
  return out;
}

const text = (v: Uint8Array | number) => (typeof v === "number" ? "" : new TextDecoder().decode(v));

/** The first status detail of `type` (e.g. `google.rpc.ErrorInfo`), as its fields. */
function detail(err: ConnectError, type: string) {
  for (const d of err.details) {
    if ("type" in d && d.type === type) return fields(d.value);
  }
  return undefined;
}

/** `google.rpc.ErrorInfo`: its reason (field 1) and metadata (field 3, map entries). */
function errorInfo(err: ConnectError): { reason?: string; metadata: Record<string, string> } {
  const metadata: Record<string, string> = {};
  let reason: string | undefined;
  for (const [field, value] of detail(err, "google.rpc.ErrorInfo") ?? []) {
    if (field === 1) reason = text(value);
    if (field === 3 && typeof value !== "number") {
      const entry = fields(value);
      const key = entry.find(([f]) => f === 1);
      const val = entry.find(([f]) => f === 2);
      if (key) metadata[text(key[1])] = val ? text(val[1]) : "";
    }
  }
  return { reason, metadata };
}

/** `google.rpc.RetryInfo.retry_delay` in whole seconds (rounded up), if the status has one. */
function retryDelaySeconds(err: ConnectError): number | undefined {
  const delay = detail(err, "google.rpc.RetryInfo")?.find(([f]) => f === 1)?.[1];
  if (delay === undefined || typeof delay === "number") return undefined;
  const d = fields(delay);
  const seconds = Number(d.find(([f]) => f === 1)?.[1] ?? 0);
  const nanos = Number(d.find(([f]) => f === 2)?.[1] ?? 0);
  return Math.ceil(seconds + nanos / 1e9);
}

/** Shows `err` in the error line `target`: what happened in words, then code and message. */
function showError(target: HTMLElement, err: unknown) {
  const e = ConnectError.from(err);
  const { reason, metadata } = errorInfo(e);
  let headline: string;
  if (e.code === Code.InvalidArgument && e.rawMessage.startsWith("phone_number:")) {
    headline = "Bad number.";
  } else if (reason === "OUTSIDE_CALLING_HOURS") {
    const next = metadata["next_allowed_time"];
    headline = "Not called: it is outside calling hours where the number is"
      + (next ? `; it may be called from ${new Date(next).toLocaleString()}.` : ".");
  } else if (reason === "DO_NOT_CALL") {
    headline = `Not called: the number is on a do-not-call list (${metadata["list"] ?? "?"}).`;
  } else if (reason === "TRUNK_BUSY") {
    const after = retryDelaySeconds(e);
    headline = "Not called: the trunk is busy" + (after ? `; try again in ${after} s.` : ".");
  } else if (reason === "TOO_MANY_ACTIVE_CALLS") {
    headline = "Too many active calls (TOO_MANY_ACTIVE_CALLS): end or complete one first.";
  } else if (reason === "ORIGINATE_TIMEOUT") {
    headline = "The switch did not acknowledge the dial in time; nothing was placed.";
  } else if (e.code === Code.Unauthenticated) {
    headline = "Not signed in.";
  } else if (reason === "INVALID_STATE") {
    headline = "Not allowed in this state.";
  } else if (reason === "DIALPAD_EMPTY") {
    headline = "Nothing is staged.";
  } else if (isTransient(e)) {
    headline = "calldesk did not answer; try again.";
  } else {
    headline = "";
  }
  target.replaceChildren();
  if (headline) target.append(`${headline} `);
  const code = document.createElement("strong");
  code.textContent = Code[e.code]
    .replace(/([a-z])([A-Z])/g, "$1_$2")
    .toUpperCase();
  target.append(code, `: ${e.rawMessage}`);
}

function clearError(target: HTMLElement) {
  target.replaceChildren();
}

// ---------------------------------------------------------------------------------------------
// Connection state, shown in the header

let streamsDown = 0;
function setConnection(state: "connected" | "reconnecting" | "signed-out") {
  const badge = el("connection");
  badge.dataset.state = state;
  badge.textContent = state === "reconnecting" ? "reconnecting…" : state.replace("-", " ");
}
function streamDown() {
  streamsDown++;
  setConnection("reconnecting");
}
function streamUp() {
  streamsDown = Math.max(0, streamsDown - 1);
  if (streamsDown === 0) setConnection("connected");
}

// ---------------------------------------------------------------------------------------------
// The agent's interactions

/** Each interaction shown, the latest known, and since when it is in its state. */
const rows = new Map<string, { interaction: Interaction; since?: Date }>();
let selected: string | null = null;

function sinceOf(i: Interaction): Date | undefined {
  switch (i.state) {
    case InteractionState.DELIVERED:
      return dateOf(i.connectTime) ?? dateOf(i.createTime);
    case InteractionState.WRAP_UP:
      return dateOf(i.endTime) ?? dateOf(i.createTime);
    case InteractionState.COMPLETED:
      return dateOf(i.completeTime);
    default:
      return dateOf(i.createTime);
  }
}

/** Takes `interaction` if it is newer than what is shown (by sequence). */
function upsert(interaction: Interaction, since?: Date) {
  const known = rows.get(interaction.id);
  if (known && known.interaction.sequence >= interaction.sequence) return;
  const stateChanged = !known || known.interaction.state !== interaction.state;
  rows.set(interaction.id, {
    interaction,
    since: stateChanged ? (since ?? sinceOf(interaction)) : known.since,
  });
  renderList();
  if (interaction.id === selected) renderDetail(interaction);
}

function elapsed(since: Date | undefined): string {
  if (!since) return "";
  const s = Math.max(0, Math.floor((Date.now() - since.getTime()) / 1000));
  const m = Math.floor(s / 60);
  return m > 0 ? `${m}m ${String(s % 60).padStart(2, "0")}s` : `${s}s`;
}

function renderList() {
  const body = el("interactions");
  const sorted = [...rows.values()].sort(
    (a, b) => (dateOf(b.interaction.createTime)?.getTime() ?? 0) - (dateOf(a.interaction.createTime)?.getTime() ?? 0),
  );
  body.replaceChildren(
    ...sorted.map(({ interaction: i, since }) => {
      const tr = document.createElement("tr");
      tr.dataset.id = i.id;
      tr.dataset.state = stateName(i.state);
      tr.classList.toggle("selected", i.id === selected);
      const cells = [
        stateName(i.state),
        progressName(i.progress),
        i.phoneNumber,
        i.callerId,
        i.associatedObject?.displayName ?? "",
        elapsed(since),
      ];
      for (const [n, text] of cells.entries()) {
        const td = document.createElement("td");
        td.textContent = text;
        td.className = ["state", "progress", "number", "caller-id", "object", "since"][n];
        tr.append(td);
      }
      tr.addEventListener("click", () => select(i.id));
      return tr;
    }),
  );
}

/** Lists the interactions there already are (every page), then keeps the newest of each. */
async function listAll(signal: AbortSignal) {
  let pageToken = "";
  do {
    const page = await client.listInteractions({ pageSize: 100, pageToken }, { signal });
    for (const i of page.interactions) upsert(i);
    pageToken = page.nextPageToken;
  } while (pageToken);
}

/** One WatchInteractions for the agent, plus ListInteractions for what came before; again
 * with backoff whenever the stream is lost (a restart, the network). */
async function followAgent(signal: AbortSignal) {
  const backoff = new Backoff();
  let up = true;
  while (!signal.aborted) {
    try {
      const events = client.watchInteractions({}, { signal })[Symbol.asyncIterator]();
      const first = events.next(); // subscribes before the list is read
      await listAll(signal);
      clearError(el("list-error"));
      if (!up) {
        up = true;
        streamUp();
      }
      backoff.reset();
      for (let ev = await first; !ev.done; ev = await events.next()) {
        if (ev.value.interaction) upsert(ev.value.interaction, dateOf(ev.value.time));
      }
    } catch (err) {
      if (signal.aborted) return;
      const e = ConnectError.from(err);
      if (!isTransient(e)) showError(el("list-error"), e);
      if (up) {
        up = false;
        streamDown();
      }
    }
    await sleep(backoff.next(), signal);
  }
}

// ---------------------------------------------------------------------------------------------
// One interaction: its timeline and its actions

let detailAbort: AbortController | null = null;
/** The last sequence shown on the timeline: resumed from, never shown twice. */
let lastShown = 0n;

function select(id: string) {
  if (selected === id) return;
  detailAbort?.abort();
  selected = id;
  lastShown = 0n;
  el("timeline").replaceChildren();
  clearError(el("action-error"));
  el("detail").hidden = false;
  el("detail-id").textContent = id;
  const known = rows.get(id);
  if (known) renderDetail(known.interaction);
  renderList();
  detailAbort = new AbortController();
  void followInteraction(id, detailAbort.signal);
}

function renderDetail(i: Interaction) {
  const ended = i.endReason !== EndReason.UNSPECIFIED ? ` · ${reasonName(i.endReason)}` : "";
  const detail = i.endDetail ? ` (${i.endDetail})` : "";
  const transfer = i.transferTarget
    ? ` · to ${i.transferTarget}${i.transferDetail ? ` (${i.transferDetail})` : ""}` : "";
  const from = i.transferredFrom ? ` · transferred from ${i.transferredFrom}` : "";
  el("detail-summary").textContent =
    `${stateName(i.state)} · ${progressName(i.progress)}${ended}${detail}${transfer}${from} · ${i.phoneNumber}` +
    (i.callerId ? ` · from ${i.callerId}` : "") +
    (i.associatedObject?.displayName ? ` · ${i.associatedObject.displayName}` : "") +
    (i.disposition ? ` · disposition: ${i.disposition}` : "");
  el("detail").dataset.state = stateName(i.state);
  const live = [InteractionState.DELIVERY_PENDING, InteractionState.DELIVERED, InteractionState.HOLD];
  el("end-button").hidden = !live.includes(i.state);
  const connected = i.state === InteractionState.DELIVERED && i.progress === CallProgress.CONNECTED;
  const consulting = i.state === InteractionState.HOLD && i.progress === CallProgress.CONSULTING;
  const consultRinging = i.state === InteractionState.HOLD && i.progress === CallProgress.TRANSFERRING;
  el("hold-button").hidden = !connected;
  el("resume-button").hidden = !(i.state === InteractionState.HOLD && i.progress === CallProgress.HELD);
  el("transfer-actions").hidden = !connected;
  el("complete-transfer-button").hidden = !consulting;
  el("cancel-consult-button").hidden = !(consulting || consultRinging);
  el("complete-form").hidden = i.state !== InteractionState.WRAP_UP;
}

function showEvent(ev: InteractionEvent) {
  if (ev.sequence <= lastShown) return; // already on screen
  lastShown = ev.sequence;
  const li = document.createElement("li");
  li.value = Number(ev.sequence);
  li.dataset.seq = String(ev.sequence);
  const time = dateOf(ev.time)?.toLocaleTimeString() ?? "";
  const reason = ev.interaction && ev.interaction.endReason !== EndReason.UNSPECIFIED
    ? ` · ${reasonName(ev.interaction.endReason)}` : "";
  li.textContent = `${time}  ${stateName(ev.state)} · ${progressName(ev.progress)}${reason}`;
  el("timeline").append(li);
  if (ev.interaction) {
    upsert(ev.interaction, dateOf(ev.time));
    renderDetail(ev.interaction);
  }
}

/** WatchInteraction from the last sequence shown; again with backoff when the stream is lost,
 * so that after a restart the timeline goes on with no gap and no duplicate. */
async function followInteraction(id: string, signal: AbortSignal) {
  const backoff = new Backoff();
  let up = true;
  while (!signal.aborted) {
    try {
      const stream = client.watchInteraction({ interactionId: id, afterSequence: lastShown }, { signal });
      for await (const ev of stream) {
        if (!up) {
          up = true;
          streamUp();
        }
        backoff.reset();
        showEvent(ev);
      }
      if (!up) streamUp();
      return; // ended with OK: the interaction is COMPLETED
    } catch (err) {
      if (signal.aborted) {
        if (!up) streamUp();
        return;
      }
      const e = ConnectError.from(err);
      if (!isTransient(e)) {
        showError(el("action-error"), e);
        if (!up) streamUp();
        return;
      }
      if (up) {
        up = false;
        streamDown();
      }
    }
    await sleep(backoff.next(), signal);
  }
}

/** Runs an action of the selected interaction from `button`, its errors shown beside it. */
async function act(button: HTMLButtonElement, run: (id: string) => Promise<Interaction>) {
  if (!selected) return;
  const errors = el("action-error");
  clearError(errors);
  button.disabled = true;
  try {
    upsert(await run(selected));
  } catch (err) {
    showError(errors, err);
  } finally {
    button.disabled = false;
  }
}

// ---------------------------------------------------------------------------------------------
// Click to call and Deferred Dial

/** The request id of the call being placed: one per click, kept for a retry of the same
 * click (a double click, a lost answer), so that it dials once. */
let pendingRequestId: string | null = null;

function addFieldRow(key = "", value = "") {
  const row = document.createElement("div");
  row.className = "field-row";
  const k = Object.assign(document.createElement("input"), { placeholder: "key", value, className: "field-key" });
  k.value = key;
  const v = Object.assign(document.createElement("input"), { placeholder: "value", className: "field-value" });
  v.value = value;
  const remove = Object.assign(document.createElement("button"), { type: "button", textContent: "×", className: "secondary" });
  remove.addEventListener("click", () => row.remove());
  row.append(k, v, remove);
  el("custom-fields").append(row);
}

async function placeCall(event: SubmitEvent) {
  event.preventDefault();
  const button = el<HTMLButtonElement>("call-button");
  if (button.disabled) return;
  const errors = el("call-error");
  clearError(errors);
  button.disabled = true;
  pendingRequestId ??= crypto.randomUUID();
  const customFields: Record<string, string> = {};
  for (const row of el("custom-fields").querySelectorAll(".field-row")) {
    const key = row.querySelector<HTMLInputElement>(".field-key")?.value.trim() ?? "";
    if (key) customFields[key] = row.querySelector<HTMLInputElement>(".field-value")?.value ?? "";
  }
  const value = (id: string) => el<HTMLInputElement>(id).value.trim();
  try {
    const response = await client.startCall({
      phoneNumber: value("phone"),
      initialObject: {
        id: value("object-id"),
        type: value("object-type"),
        displayName: value("object-name"),
        displayType: value("object-display-type"),
        customFields,
      },
      // Empty: the agent's default, or the closest of its numbers (local presence).
      callerId: el<HTMLSelectElement>("caller-id").value,
      requestId: pendingRequestId,
    });
    pendingRequestId = null;
    if (response.outcome === StartCallOutcome.DEFERRED) {
      await refreshDialpad();
    } else if (response.interaction) {
      upsert(response.interaction);
      select(response.interaction.id);
    }
  } catch (err) {
    const e = ConnectError.from(err);
    // A lost answer may still have dialed: the retry keeps the id. A refusal did not.
    if (!isTransient(e) || errorInfo(e).reason === "ORIGINATE_TIMEOUT") pendingRequestId = null;
    showError(errors, e);
  } finally {
    button.disabled = false;
  }
}

async function refreshDialpad() {
  const errors = el("dialpad-error");
  try {
    const pad = await client.getDialpad({});
    const staged = el("dialpad-staged");
    if (pad.phoneNumber) {
      const object = pad.initialObject?.displayName ? ` · ${pad.initialObject.displayName}` : "";
      const from = pad.callerId ? ` · from ${pad.callerId}` : "";
      staged.textContent = `Staged: ${pad.phoneNumber}${object}${from}`;
      staged.classList.remove("muted");
    } else {
      staged.textContent = "Nothing staged.";
      staged.classList.add("muted");
    }
    el("dial-button").hidden = !pad.phoneNumber;
    clearError(errors);
  } catch (err) {
    showError(errors, err);
  }
}

/** The caller IDs the agent may present (ListCallerIds): the dialer's choice, hidden if none. */
async function refreshCallerIds() {
  const select = el<HTMLSelectElement>("caller-id");
  try {
    const { callerIds, defaultCallerId } = await client.listCallerIds({});
    const automatic = document.createElement("option");
    automatic.value = "";
    automatic.textContent =
      callerIds.length > 1 ? "Closest to the customer" : defaultCallerId ? `Default (${defaultCallerId})` : "Default";
    const numbers = callerIds.map((n) => Object.assign(document.createElement("option"), { value: n, textContent: n }));
    select.replaceChildren(automatic, ...numbers);
    el("caller-id-field").hidden = callerIds.length === 0;
  } catch (err) {
    // Calls still work with the default: say why the choice is missing.
    el("caller-id-field").hidden = true;
    showError(el("call-error"), err);
  }
}

let dialRequestId: string | null = null;
async function dialStaged() {
  const button = el<HTMLButtonElement>("dial-button");
  const errors = el("dialpad-error");
  clearError(errors);
  button.disabled = true;
  dialRequestId ??= crypto.randomUUID();
  try {
    const response = await client.dialStaged({ requestId: dialRequestId });
    dialRequestId = null;
    if (response.interaction) {
      upsert(response.interaction);
      select(response.interaction.id);
    }
    await refreshDialpad();
  } catch (err) {
    const e = ConnectError.from(err);
    if (!isTransient(e) || errorInfo(e).reason === "ORIGINATE_TIMEOUT") dialRequestId = null;
    showError(errors, e);
  } finally {
    button.disabled = false;
  }
}

// ---------------------------------------------------------------------------------------------
// Signing in and out

let session: AbortController | null = null;

async function signIn(event: SubmitEvent) {
  event.preventDefault();
  const input = el<HTMLInputElement>(authMode === "token" ? "token" : "agent-id");
  const typed = input.value.trim();
  const errors = el("signin-error");
  clearError(errors);
  if (!typed) {
    errors.textContent = authMode === "token" ? "Paste your token." : "Type your agent id.";
    return;
  }
  credential = typed;
  const button = el<HTMLButtonElement>("signin-button");
  button.disabled = true;
  try {
    await client.listInteractions({ pageSize: 1 }); // is the credential good?
    sessionStorage.setItem(CREDENTIAL_KEY, typed);
    input.value = "";
    startDesk();
  } catch (err) {
    credential = null;
    showError(errors, err);
  } finally {
    button.disabled = false;
  }
}

function startDesk() {
  el("signin").hidden = true;
  el("desk").hidden = false;
  el("sign-out").hidden = false;
  el("agent").textContent = authMode === "token" ? "signed in with a token" : `agent ${credential}`;
  streamsDown = 0;
  setConnection("connected");
  session = new AbortController();
  void followAgent(session.signal);
  void refreshDialpad();
  void refreshCallerIds();
}

function signOut() {
  session?.abort();
  detailAbort?.abort();
  sessionStorage.removeItem(CREDENTIAL_KEY);
  credential = null;
  rows.clear();
  selected = null;
  el("interactions").replaceChildren();
  el("caller-id").replaceChildren();
  el("caller-id-field").hidden = true;
  el("detail").hidden = true;
  el("desk").hidden = true;
  el("signin").hidden = false;
  el("sign-out").hidden = true;
  el("agent").textContent = "";
  setConnection("signed-out");
}

// ---------------------------------------------------------------------------------------------
// Wiring

function main() {
  el("token-field").hidden = authMode !== "token";
  el("agent-field").hidden = authMode === "token";
  el<HTMLFormElement>("signin-form").addEventListener("submit", signIn);
  el("sign-out").addEventListener("click", signOut);
  el<HTMLFormElement>("call-form").addEventListener("submit", placeCall);
  el("add-field").addEventListener("click", () => addFieldRow());
  el("dial-button").addEventListener("click", dialStaged);
  el("dialpad-refresh").addEventListener("click", refreshDialpad);
  const button = (id: string) => el<HTMLButtonElement>(id);
  button("end-button").addEventListener("click", () =>
    act(button("end-button"), (id) => client.endCall({ interactionId: id })));
  button("hold-button").addEventListener("click", () =>
    act(button("hold-button"), (id) => client.holdCall({ interactionId: id })));
  button("resume-button").addEventListener("click", () =>
    act(button("resume-button"), (id) => client.resumeCall({ interactionId: id })));
  const target = () => el<HTMLInputElement>("transfer-target").value.trim();
  button("transfer-button").addEventListener("click", () =>
    act(button("transfer-button"), (id) => client.transferCall({ interactionId: id, target: target() })));
  button("consult-button").addEventListener("click", () =>
    act(button("consult-button"), (id) => client.consultCall({ interactionId: id, target: target() })));
  button("conference-button").addEventListener("click", () =>
    act(button("conference-button"), (id) => client.conferenceCall({ interactionId: id, target: target() })));
  button("complete-transfer-button").addEventListener("click", () =>
    act(button("complete-transfer-button"), (id) => client.completeTransfer({ interactionId: id })));
  button("cancel-consult-button").addEventListener("click", () =>
    act(button("cancel-consult-button"), (id) => client.cancelConsult({ interactionId: id })));
  el<HTMLFormElement>("complete-form").addEventListener("submit", (event) => {
    event.preventDefault();
    void act(button("complete-button"), (id) =>
      client.completeInteraction({
        interactionId: id,
        disposition: el<HTMLInputElement>("disposition").value.trim(),
        notes: el<HTMLTextAreaElement>("notes").value,
      }));
  });
  // Time in state moves on by itself.
  setInterval(() => {
    for (const tr of el("interactions").querySelectorAll<HTMLTableRowElement>("tr")) {
      const cell = tr.querySelector(".since");
      const row = rows.get(tr.dataset.id ?? "");
      if (cell && row) cell.textContent = elapsed(row.since);
    }
  }, 1000);
  if (credential !== null) startDesk();
  else setConnection("signed-out");
}

main();
