// Element's crypto stack (matrix-js-sdk with Rust crypto) as a test peer.
//
// Protocol, one JSON object per line:
//   stdin line 1: {"homeserver", "user_id", "password", "isolation": "only_signed" | "all"}
//   stdout line 1: {"event": "ready", "user_id", "device_id"} or {"event": "failed", "error"}
//   then requests {"id", "cmd", ...} answered by {"id", "ok": true, "result"} or
//   {"id", "ok": false, "error"}. Requests may overlap (a wait while sending).
// stdout carries only protocol lines: everything the SDK logs goes to stderr.

import readline from "node:readline";

const protocolOut = (message) => process.stdout.write(JSON.stringify(message) + "\n");
for (const level of ["log", "info", "debug", "trace", "warn"]) {
    console[level] = (...args) => console.error(...args);
}

// Imported after the console is redirected: the SDK logs while loading.
const sdk = await import("matrix-js-sdk");
const { logger } = await import("matrix-js-sdk/lib/logger.js");
const { OnlySignedDevicesIsolationMode, AllDevicesIsolationMode, CryptoEvent } = await import(
    "matrix-js-sdk/lib/crypto-api/index.js"
);
logger.setLevel(process.env.ELEMENT_CLIENT_LOG_LEVEL || "warn");

// Failures that may resolve once keys arrive; any other reason is a verdict.
// HISTORICAL_MESSAGE_*: a message sent before this device logged in, whose key it does
// not have (yet). That is what Element shows as « L'historique des messages n'est pas
// disponible sur cet appareil »; matrix-js-sdk decrypts it again when the key arrives.
const TRANSIENT_FAILURES = new Set([
    "MEGOLM_UNKNOWN_INBOUND_SESSION_ID",
    "OLM_UNKNOWN_MESSAGE_INDEX",
    "UNKNOWN_SENDER_DEVICE",
    "HISTORICAL_MESSAGE_NO_KEY_BACKUP",
    "HISTORICAL_MESSAGE_BACKUP_UNCONFIGURED",
    "HISTORICAL_MESSAGE_WORKING_BACKUP",
]);

// A message that arrived before its sender's device keys fails with UNKNOWN_SENDER_DEVICE
// and matrix-js-sdk 37.5 never tries it again; Element's timeline does once the keys are
// known. The harness retries such events when devices update and while a test waits.
const RETRY_WHEN_DEVICES_KNOWN = new Set(["UNKNOWN_SENDER_DEVICE"]);

async function retryUnknownSenderDevice(roomId = null) {
    const rooms = roomId ? [client.getRoom(roomId)].filter(Boolean) : client.getRooms();
    for (const room of rooms) {
        for (const event of room.getLiveTimeline().getEvents()) {
            if (
                event.isDecryptionFailure() &&
                RETRY_WHEN_DEVICES_KNOWN.has(event.decryptionFailureReason) &&
                !event.isBeingDecrypted()
            ) {
                await event.attemptDecryption(client.getCrypto(), { isRetry: true });
            }
        }
    }
}

const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
const iterator = lines[Symbol.asyncIterator]();

let client;
let ownUserId;
const waiters = new Set(); // callbacks run on every decrypted or failed event

function describe(event) {
    const failure = event.isDecryptionFailure() ? event.decryptionFailureReason : null;
    const content = failure ? null : event.getContent();
    return {
        event_id: event.getId(),
        room_id: event.getRoomId(),
        sender: event.getSender(),
        type: event.getType(),
        encrypted: event.isEncrypted(),
        body: content && typeof content.body === "string" ? content.body : null,
        failure,
    };
}

function notify(event) {
    for (const waiter of [...waiters]) waiter(event);
}

function timelineEvents(roomId) {
    const room = client.getRoom(roomId);
    return room ? room.getLiveTimeline().getEvents() : [];
}

function withTimeout(ms, what) {
    return new Promise((_, reject) =>
        setTimeout(() => reject(new Error(`timeout after ${ms} ms: ${what}`)), ms).unref(),
    );
}

async function waitForRoomEncryption(roomId, timeoutMs) {
    // Sending before the room's encryption state is known would send in clear.
    const deadline = Date.now() + timeoutMs;
    while (!client.getRoom(roomId)?.hasEncryptionStateEvent()) {
        if (Date.now() > deadline) throw new Error(`room ${roomId} not known as encrypted`);
        await new Promise((resolve) => setTimeout(resolve, 20));
    }
}

// Resolves with the first message matching `substring` that decrypts, or with the first
// definitive failure; on timeout, with every undecryptable event seen in the room.
function waitMessage({ room_id, predicate = "", sender = null, timeout = 10 }) {
    return new Promise((resolve) => {
        const failures = new Map();
        let timer;
        const retry = setInterval(() => {
            retryUnknownSenderDevice(room_id).catch((error) => console.error(error));
        }, 250);
        const finish = (result) => {
            waiters.delete(check);
            clearTimeout(timer);
            clearInterval(retry);
            resolve(result);
        };
        const check = (event) => {
            if (event.getRoomId() !== room_id || event.getSender() === ownUserId) return;
            if (sender && event.getSender() !== sender) return;
            if (event.isBeingDecrypted() || event.shouldAttemptDecryption()) return;
            const info = describe(event);
            if (info.failure) {
                failures.set(info.event_id, info);
                if (!TRANSIENT_FAILURES.has(info.failure)) finish({ status: "failed", ...info });
            } else if (info.type === "m.room.message" && info.body?.includes(predicate)) {
                finish({ status: "decrypted", ...info });
            }
        };
        timer = setTimeout(
            () => finish({ status: "timeout", failures: [...failures.values()] }),
            timeout * 1000,
        );
        waiters.add(check);
        for (const event of timelineEvents(room_id)) check(event);
    });
}

// Rust crypto only knows the devices of users it tracks (who share an encrypted room
// with us); the first key query after a join may still be in flight, hence the wait.
async function deviceStatus({ user_id, device_id, timeout = 10 }) {
    const crypto = client.getCrypto();
    const deadline = Date.now() + timeout * 1000;
    let status = await crypto.getDeviceVerificationStatus(user_id, device_id);
    while (!status && Date.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 50));
        status = await crypto.getDeviceVerificationStatus(user_id, device_id);
    }
    if (!status) return { known: false };
    const identity = await crypto.getUserVerificationStatus(user_id);
    return {
        known: true,
        signedByOwner: status.signedByOwner,
        crossSigningVerified: status.crossSigningVerified,
        localVerified: status.localVerified,
        isVerified: status.isVerified(),
        ownerCrossSigningVerified: identity.isCrossSigningVerified(),
    };
}

const commands = {
    async join({ room_id }) {
        const room = await client.joinRoom(room_id);
        return { room_id: room.roomId };
    },
    async send({ room_id, body, timeout = 10 }) {
        await waitForRoomEncryption(room_id, timeout * 1000);
        const response = await client.sendEvent(room_id, "m.room.message", {
            msgtype: "m.text",
            body,
        });
        return { event_id: response.event_id };
    },
    wait_message: waitMessage,
    device_status: deviceStatus,
    // How Element's push rules (the homeserver's rule set, evaluated by matrix-js-sdk on
    // the decrypted event, as Element does for encrypted rooms) treat one event.
    async push_actions({ room_id, event_id }) {
        const room = client.getRoom(room_id);
        const event = room?.findEventById(event_id);
        if (!event) throw new Error(`event ${event_id} not in the timeline of ${room_id}`);
        const { actions, rule } = client.pushProcessor.actionsAndRuleForEvent(event);
        return {
            notify: Boolean(actions?.notify),
            highlight: Boolean(actions?.tweaks?.highlight),
            rule_id: rule?.rule_id ?? null,
            room_highlight_count: room.getUnreadNotificationCount("highlight") ?? 0,
        };
    },
    async messages({ room_id }) {
        return { events: timelineEvents(room_id).map(describe) };
    },
    async stop() {
        client.stopClient();
        return {};
    },
};

async function start({ homeserver, user_id, password, isolation = "only_signed" }) {
    const login = sdk.createClient({ baseUrl: homeserver });
    const session = await login.loginRequest({
        type: "m.login.password",
        identifier: { type: "m.id.user", user: user_id },
        password,
        initial_device_display_name: "Element (tests)",
    });
    client = sdk.createClient({
        baseUrl: homeserver,
        userId: session.user_id,
        deviceId: session.device_id,
        accessToken: session.access_token,
    });
    ownUserId = session.user_id;
    await client.initRustCrypto({ useIndexedDB: false });
    const crypto = client.getCrypto();
    await crypto.bootstrapCrossSigning({
        authUploadDeviceSigningKeys: async (makeRequest) => {
            try {
                await makeRequest(null);
            } catch (error) {
                if (error?.httpStatus !== 401) throw error;
                await makeRequest({
                    type: "m.login.password",
                    identifier: { type: "m.id.user", user: session.user_id },
                    password,
                    session: error.data?.session,
                });
            }
        },
    });
    crypto.setDeviceIsolationMode(
        isolation === "all"
            ? new AllDevicesIsolationMode(false)
            : new OnlySignedDevicesIsolationMode(),
    );
    client.on(sdk.MatrixEventEvent.Decrypted, notify);
    client.on(CryptoEvent.DevicesUpdated, () => {
        retryUnknownSenderDevice().catch((error) => console.error(error));
    });
    client.on(sdk.RoomEvent.Timeline, (event) => {
        if (!event.isEncrypted()) notify(event);
    });
    const prepared = new Promise((resolve, reject) => {
        client.on(sdk.ClientEvent.Sync, (state) => {
            if (state === "PREPARED") resolve();
            if (state === "ERROR") reject(new Error("first sync failed"));
        });
    });
    await client.startClient({ initialSyncLimit: 20 });
    await Promise.race([prepared, withTimeout(30000, "first sync")]);
    return { user_id: session.user_id, device_id: session.device_id };
}

async function handle(request) {
    const command = commands[request.cmd];
    if (!command) return protocolOut({ id: request.id, ok: false, error: `unknown ${request.cmd}` });
    try {
        const result = await command(request);
        protocolOut({ id: request.id, ok: true, result });
    } catch (error) {
        protocolOut({ id: request.id, ok: false, error: String(error?.stack || error) });
    }
    if (request.cmd === "stop") process.exit(0);
}

const first = await iterator.next();
try {
    protocolOut({ event: "ready", ...(await start(JSON.parse(first.value))) });
} catch (error) {
    protocolOut({ event: "failed", error: String(error?.stack || error) });
    process.exit(1);
}
for await (const line of iterator) {
    if (line.trim()) handle(JSON.parse(line));
}
// stdin closed: the test is gone.
client.stopClient();
process.exit(0);
