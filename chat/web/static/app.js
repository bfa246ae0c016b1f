// The web client's page: one WebSocket to the gateway (docs/WEB.md), text into the DOM as text only.
// Every string from the wire goes through textContent or a text node, never innerHTML.

const $ = (id) => document.getElementById(id);
const SESSION_KEY = "lanchat-session";  // per tab: what a new gateway needs to go on without a gap
const NAME_KEY = "lanchat-name";  // per browser: the name, kept for the next visit
const ASKED_KEY = "lanchat-notifications-asked";
const URL_RE = /\bhttps?:\/\/[^\s<>"']+/g;
const NAME_COLOURS = [31, 32, 33, 34, 35, 36, 91, 92, 93, 94, 95, 96];  // as chat/ui/format.py

const state = {
  ws: null, name: "", token: "", historyId: "", serverCurrent: "", active: "", connected: false,
  quitting: false, retry: 0, typedWho: 0, recall: [], recallAt: 0, hello: null, outbox: [],
};
const convs = new Map();  // key ("#room", or "@" + a name's key) -> conversation
const pending = new Map();  // id -> {line, conv, entry}: sent, not acknowledged yet

// --------------------------------------------------------------------------- names and colours

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

function crc32(text) {
  let crc = 0xffffffff;
  for (const byte of new TextEncoder().encode(text)) crc = CRC_TABLE[(crc ^ byte) & 0xff] ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

const nameKey = (name) => name.normalize("NFKC").toLowerCase();
const colourClass = (name) => "c" + NAME_COLOURS[crc32(nameKey(name)) % NAME_COLOURS.length];

// --------------------------------------------------------------------------- conversations

function conversation(key, kind, title) {
  let conv = convs.get(key);
  if (!conv) {
    const log = document.createElement("div");
    log.className = "conv-log";
    log.hidden = true;
    $("log").append(log);
    conv = { key, kind, title, log, entries: [], unread: 0, mentions: 0, lastSeq: 0, exhausted: false, loading: false,
             topic: "", members: new Set(), lastDay: "", older: null };
    if (kind === "room") {
      conv.older = document.createElement("button");
      conv.older.type = "button";
      conv.older.className = "older";
      conv.older.textContent = "Load older messages";
      conv.older.addEventListener("click", () => loadOlder(conv));
      log.append(conv.older);
    }
    convs.set(key, conv);
    renderList();
  }
  return conv;
}

const roomConv = (room) => conversation(room, "room", room);
const pmConv = (name) => conversation("@" + nameKey(name), "pm", name);

function activate(key) {
  const conv = convs.get(key);
  if (!conv) return;
  state.active = key;
  for (const other of convs.values()) other.log.hidden = other !== conv;
  conv.unread = conv.mentions = 0;
  $("title").textContent = conv.title;
  $("topic").textContent = conv.topic;
  $("members-title").textContent = conv.kind === "room" ? `Members of ${conv.title}` : "Private conversation";
  renderList();
  renderMembers();
  scrollDown(true);
  if (conv.kind === "room" && state.connected) send({ type: "who", room: conv.key });
  $("conversations").classList.remove("open");
  save();
}

function renderList() {
  const list = $("conv-list");
  list.replaceChildren();
  for (const conv of convs.values()) {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    if (conv.kind === "pm") button.classList.add("private");
    button.setAttribute("aria-current", String(conv.key === state.active));
    const label = document.createElement("span");
    label.textContent = conv.title;
    button.append(label);
    if (conv.unread) {
      const badge = document.createElement("span");
      badge.className = conv.mentions ? "unread mention" : "unread";
      badge.textContent = unreadMarker(conv);
      const mentioning = conv.mentions ? `, ${conv.mentions} mentioning you` : "";
      badge.setAttribute("aria-label", `${conv.unread} unread${mentioning}`);
      button.append(badge);
    }
    button.addEventListener("click", () => { activate(conv.key); $("message").focus(); });
    item.append(button);
    list.append(item);
  }
}

// As the terminal client's status line: "5" unread, "2!" when those 2 mention you, "5,2!" when 2 of 5 do.
function unreadMarker(conv) {
  if (!conv.mentions) return String(conv.unread);
  return conv.mentions === conv.unread ? `${conv.mentions}!` : `${conv.unread},${conv.mentions}!`;
}

function renderMembers() {
  const conv = convs.get(state.active);
  const list = $("member-list");
  list.replaceChildren();
  const names = conv ? (conv.kind === "room" ? [...conv.members].sort((a, b) => nameKey(a) < nameKey(b) ? -1 : 1)
                                             : [state.name, conv.title]) : [];
  for (const name of names) {
    const item = document.createElement("li");
    item.textContent = name;
    item.classList.add(colourClass(name));
    if (nameKey(name) === nameKey(state.name)) item.classList.add("me");
    list.append(item);
  }
}

// --------------------------------------------------------------------------- the log

function dayOf(ts) {
  return new Date(ts).toLocaleDateString(undefined, { weekday: "long", year: "numeric", month: "long", day: "numeric" });
}

function timeOf(ts) {
  return new Date(ts).toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" });
}

function withLinks(parent, text) {
  let at = 0;
  for (const match of text.matchAll(URL_RE)) {
    parent.append(document.createTextNode(text.slice(at, match.index)));
    const link = document.createElement("a");
    link.href = match[0];  // http(s) only: the pattern never matches javascript: or data:
    link.textContent = match[0];
    link.target = "_blank";
    link.rel = "noopener noreferrer";
    parent.append(link);
    at = match.index + match[0].length;
  }
  parent.append(document.createTextNode(text.slice(at)));
}

// An entry: {ts, kind, name, text, room?, seq?, id?, status: "pending"|"failed"|""}
function lineElement(entry) {
  const line = document.createElement("div");
  line.className = "line";
  const time = document.createElement("span");
  time.className = "time";
  time.textContent = entry.status === "pending" ? "--:--" : entry.status === "failed" ? "!!:!!" : timeOf(entry.ts);
  if (entry.ts) time.title = new Date(entry.ts).toLocaleString();
  line.append(time);
  const body = document.createElement("span");
  body.className = "text";
  const nick = document.createElement("span");
  nick.className = `nick ${colourClass(entry.name || "")}`;
  nick.textContent = entry.name || "";
  const k = entry.kind;
  if (k === "msg" || k === "pm") {
    nick.textContent = `<${entry.name}>`;
    line.append(nick);
    withLinks(body, entry.text);
  } else if (k === "action") {
    body.append("* ", nick, " ");
    withLinks(body, entry.text);
  } else if (k === "notice") {
    line.classList.add("notice");
    if (entry.level === "error") line.classList.add("error");
    body.textContent = `-!- ${entry.text}`;
  } else {
    line.classList.add("status");
    const words = {
      join: "--> NAME has joined the chat", enter: `--> NAME has joined ${entry.room}`,
      part: `<-- NAME has left ${entry.room}`, topic: "NAME set the topic: ",
      leave: `<-- NAME has left the chat${entry.text === "timeout" ? " (timed out)" : ""}`,
    }[k] || `NAME (${k}): `;
    const [before, after] = words.split("NAME");
    body.append(before, nick, after);
    if (k === "topic" || !(k in { join: 1, enter: 1, part: 1, leave: 1 })) withLinks(body, entry.text);
  }
  if (entry.status) line.classList.add(entry.status);
  if (entry.mention === true) line.classList.add("mention");  // the client core's mention rule, one for all
  line.append(body);
  entry.element = line;
  return line;
}

function dayElement(day) {
  const sep = document.createElement("div");
  sep.className = "day";
  sep.setAttribute("role", "separator");
  const label = document.createElement("span");
  label.textContent = day;
  sep.append(label);
  return sep;
}

function atBottom() {
  const log = $("log");
  return log.scrollHeight - log.scrollTop - log.clientHeight < 40;
}

function scrollDown(force) {
  const log = $("log");
  if (force || state.stick) log.scrollTop = log.scrollHeight;
}

function append(conv, entry) {
  state.stick = atBottom();
  const day = entry.ts ? dayOf(entry.ts) : conv.lastDay;
  if (day && day !== conv.lastDay) {
    conv.log.append(dayElement(day));
    conv.lastDay = day;
  }
  conv.entries.push(entry);
  conv.log.append(lineElement(entry));
  if (conv.key !== state.active || document.hidden) {
    if (entry.kind === "msg" || entry.kind === "action" || entry.kind === "pm") {
      if (conv.key !== state.active) conv.unread += 1;
      if (conv.key !== state.active && entry.mention === true) conv.mentions += 1;
      renderList();
    }
  }
  if (conv.key === state.active) scrollDown(false);
}

function prepend(conv, entries) {
  const log = $("log");
  const fromBottom = log.scrollHeight - log.scrollTop;
  conv.entries = [...entries, ...conv.entries];
  conv.log.replaceChildren(...(conv.older ? [conv.older] : []));
  conv.lastDay = "";
  for (const entry of conv.entries) {
    const day = entry.ts ? dayOf(entry.ts) : conv.lastDay;
    if (day && day !== conv.lastDay) { conv.log.append(dayElement(day)); conv.lastDay = day; }
    conv.log.append(lineElement(entry));
  }
  log.scrollTop = log.scrollHeight - fromBottom;  // stay on the line the reader was at
}

function loadOlder(conv) {
  if (!conv || conv.kind !== "room" || conv.exhausted || conv.loading) return;
  conv.loading = true;
  send({ type: "older", room: conv.key, count: 50 });
}

function notice(text, level) {
  const conv = convs.get(state.active) || roomConv("#general");
  append(conv, { ts: Date.now(), kind: "notice", text, level });
}

function notify(title, text) {
  if (!document.hidden || !("Notification" in window) || Notification.permission !== "granted") return;
  new Notification(title, { body: text });
}

// --------------------------------------------------------------------------- what the gateway says

const HANDLERS = {
  status(m) {
    setState(m.state);
    if (m.state === "connected") {
      state.connected = true;
      state.name = m.name;
      localStorage.setItem(NAME_KEY, m.name);
      $("login").hidden = true;
      $("app").hidden = false;
      const conv = convs.get(state.active);
      if (conv && conv.kind === "room") send({ type: "who", room: conv.key });
      $("message").focus();
    } else {
      state.connected = false;
    }
  },
  session(m) { state.token = m.token; state.historyId = m.history_id; save(); },
  ask_name(m) {
    $("login").hidden = false;
    $("app").hidden = true;
    $("login-error").textContent = m.reason || "";
    $("name").focus();
  },
  rooms(m) {
    for (const room of m.rooms) roomConv(room);
    for (const conv of [...convs.values()]) {
      if (conv.kind === "room" && !m.rooms.includes(conv.key)) { conv.log.remove(); convs.delete(conv.key); }
    }
    const changed = m.current !== state.serverCurrent;
    state.serverCurrent = m.current;
    if (changed && m.current) activate(m.current);
    else if (!convs.has(state.active) && convs.size) activate(m.current || convs.keys().next().value);
    renderList();
    save();
  },
  event(m) {
    const conv = roomConv(m.room);
    conv.lastSeq = Math.max(conv.lastSeq, m.seq);
    if (m.kind === "topic") { conv.topic = m.text; if (conv.key === state.active) $("topic").textContent = m.text; }
    if (m.kind === "join" || m.kind === "enter") conv.members.add(m.name);
    if (m.kind === "leave" || m.kind === "part") {
      for (const known of [...conv.members]) if (nameKey(known) === nameKey(m.name)) conv.members.delete(known);
    }
    if (conv.key === state.active && m.kind !== "msg" && m.kind !== "action") renderMembers();
    append(conv, { ts: m.ts, kind: m.kind, name: m.name, text: m.text, room: m.room, seq: m.seq, mention: m.mention === true });
    if (m.mention === true) notify(`${m.name} in ${m.room}`, m.text);
    save();
  },
  older(m) {
    const conv = roomConv(m.room);
    conv.loading = false;
    if (!m.events.length) { conv.exhausted = true; conv.older.hidden = true; return; }
    prepend(conv, m.events.map((e) => ({ ts: e.ts, kind: e.kind, name: e.name, text: e.text, room: e.room, seq: e.seq,
                                         mention: e.mention === true })));
  },
  private(m) {
    const conv = pmConv(m.name);
    append(conv, { ts: m.ts, kind: "pm", name: m.name, text: m.text });
    notify(`${m.name} (private)`, m.text);
  },
  sent(m) {
    const conv = m.kind === "pm" ? pmConv(m.to) : roomConv(m.room || state.serverCurrent);
    const entry = { ts: 0, kind: m.kind, name: state.name, text: m.text, status: "pending", mine: true };
    pending.set(m.id, { line: { id: m.id, kind: m.kind, text: m.text, room: m.room, to: m.to }, conv, entry });
    append(conv, entry);
    save();
  },
  acked(m) {
    const sent = pending.get(m.id);
    if (!sent) return;
    pending.delete(m.id);
    sent.entry.ts = m.ts;
    sent.entry.status = "";
    if (m.seq && sent.conv.kind === "room") sent.conv.lastSeq = Math.max(sent.conv.lastSeq, m.seq);
    sent.entry.element.replaceWith(lineElement(sent.entry));
    save();
  },
  failed(m) {
    const sent = pending.get(m.id);
    if (!sent) return;
    pending.delete(m.id);
    sent.entry.status = "failed";
    sent.entry.element.replaceWith(lineElement(sent.entry));
    save();
  },
  roster(m) {
    if (m.room) {
      const conv = roomConv(m.room);
      conv.members = new Set(m.names);
      if (conv.key === state.active) renderMembers();
    }
    if (state.typedWho > 0) {
      state.typedWho -= 1;
      notice(`online${m.room ? " in " + m.room : ""} (${m.names.length}): ${m.names.join(", ")}`);
    }
  },
  room_list(m) {
    const rooms = m.rooms.map((r) => `${r.room} (${r.members})${r.topic ? " - " + r.topic : ""}`);
    notice(`rooms (${rooms.length}): ${rooms.join(", ")}`);
  },
  notice(m) { notice(m.text, m.level); },
  error(m) { notice(`${m.reason} (${m.code})`, "error"); },
  exit(m) {
    if (m.reason) notice(m.reason, m.code === 0 ? "info" : "error");
    if (m.reason && !$("login").hidden) $("login-error").textContent = m.reason;
    if (m.code === 1) return;  // the broker could not be reached: the WebSocket closes, and the page tries again
    state.quitting = true;
    setState(m.code === 0 ? "left" : "refused");
    sessionStorage.removeItem(SESSION_KEY);
  },
};

function setState(text) {
  const label = $("state");
  label.textContent = text;
  label.className = `state ${text}`;
}

// --------------------------------------------------------------------------- the WebSocket

function send(message) {
  if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify(message));
  else if (message.type === "line") state.outbox.push(message);  // typed while away: sent on return
}

function save() {
  if (!state.token) return;
  const rooms = {};
  for (const conv of convs.values()) if (conv.kind === "room") rooms[conv.key] = conv.lastSeq;
  const lines = [...pending.values()].map((p) => p.line);
  sessionStorage.setItem(SESSION_KEY, JSON.stringify({
    name: state.name, token: state.token, history_id: state.historyId, rooms, current: state.serverCurrent,
    pending: lines,
  }));
}

function resumeState() {
  try {
    const kept = JSON.parse(sessionStorage.getItem(SESSION_KEY) || "null");
    return kept && kept.token && Object.keys(kept.rooms || {}).length ? kept : null;
  } catch (_) {
    return null;
  }
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/ws`);
  state.ws = ws;
  ws.addEventListener("open", () => {
    state.retry = 0;
    const kept = resumeState();
    if (kept) {
      const { name, ...resume } = kept;
      send({ type: "hello", name, resume });
    } else {
      send(state.hello);
    }
    const typed = state.outbox.splice(0);  // the session queues them until it is in
    for (const message of typed) send(message);
  });
  ws.addEventListener("message", (msg) => {
    let batch;
    try { batch = JSON.parse(msg.data); } catch (_) { return; }
    for (const m of batch) {
      const handle = HANDLERS[m.type];
      if (handle) handle(m);  // a type this page does not know is ignored (docs/WEB.md: additive)
    }
  });
  ws.addEventListener("close", () => {
    state.connected = false;
    if (state.quitting) return;
    setState("lost");
    const delay = Math.min(5000, 250 * 2 ** state.retry++);
    setTimeout(connect, delay);  // a gateway or broker restart: come back and catch up
  });
}

// --------------------------------------------------------------------------- the user

function submitLine(text) {
  const conv = convs.get(state.active);
  if (/^\/who(sonline)?(\s|$)/i.test(text)) state.typedWho += 1;
  const message = { type: "line", text };
  if (conv && conv.kind === "room") message.room = conv.key;
  if (conv && conv.kind === "pm") message.to = conv.title;
  send(message);
}

function askNotificationsOnce() {
  if (!("Notification" in window) || localStorage.getItem(ASKED_KEY)) return;
  localStorage.setItem(ASKED_KEY, "1");
  if (Notification.permission === "default") Notification.requestPermission().catch(() => {});
}

function setUp() {
  $("name").value = localStorage.getItem(NAME_KEY) || "";
  $("login-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const name = $("name").value.trim();
    if (!name) return;
    $("login-error").textContent = "";
    askNotificationsOnce();
    if (state.ws && state.ws.readyState === WebSocket.OPEN) {
      send({ type: "line", text: name });  // the session asked for a name again
    } else {
      state.hello = { type: "hello", name, room: "#general" };
      connect();
    }
  });
  $("input-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const input = $("message");
    const text = input.value;
    if (!text.trim()) return;
    submitLine(text);
    state.recall.push(text);
    state.recallAt = state.recall.length;
    input.value = "";
  });
  $("message").addEventListener("keydown", (e) => {
    const input = e.target;
    if (e.key === "ArrowUp" && state.recallAt > 0 && (input.value === "" || input.selectionStart === 0)) {
      e.preventDefault();
      state.recallAt -= 1;
      input.value = state.recall[state.recallAt];
    } else if (e.key === "ArrowDown" && state.recallAt < state.recall.length) {
      e.preventDefault();
      state.recallAt += 1;
      input.value = state.recall[state.recallAt] || "";
    }
  });
  $("join-form").addEventListener("submit", (e) => {
    e.preventDefault();
    let room = $("join-room").value.trim();
    if (!room) return;
    if (!room.startsWith("#")) room = "#" + room;
    send({ type: "line", text: `/join ${room}` });
    $("join-room").value = "";
  });
  $("log").addEventListener("scroll", () => {
    if ($("log").scrollTop === 0) loadOlder(convs.get(state.active));  // scrolled to the top
  });
  for (const [button, panel] of [["toggle-nav", "conversations"], ["toggle-members", "members"]]) {
    $(button).addEventListener("click", () => {
      const open = $(panel).classList.toggle("open");
      $(button).setAttribute("aria-expanded", String(open));
    });
  }
  document.addEventListener("visibilitychange", () => { if (!document.hidden) renderList(); });
  if (resumeState()) connect();  // a reload of this tab: go on with its session
  else $("name").focus();
}

setUp();
