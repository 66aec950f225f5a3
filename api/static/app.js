// xbot dashboard: plain JavaScript, no build step. Talks to the API with the token kept in
// sessionStorage and follows one bot live over its WebSocket feed.
"use strict";

const TOKEN_KEY = "xbot.apiToken";
const $ = (id) => document.getElementById(id);

// ---- DOM helpers (textContent only: tweet text and logs are untrusted) ----------------------
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "className") node.className = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function formatTime(value) {
  if (!value) return "—";
  const date = new Date(value);
  if (Number.isNaN(date.getTime())) return String(value);
  const seconds = Math.round((date.getTime() - Date.now()) / 1000);
  const abs = Math.abs(seconds);
  let relative;
  if (abs < 60) relative = `${abs}s`;
  else if (abs < 3600) relative = `${Math.round(abs / 60)}m`;
  else if (abs < 86400) relative = `${Math.round(abs / 3600)}h`;
  else relative = `${Math.round(abs / 86400)}d`;
  return seconds >= 0 ? `in ${relative}` : `${relative} ago`;
}

function timeEl(value) {
  return el(
    "time",
    { className: value ? "relative" : "", datetime: value || "", title: value ? new Date(value).toLocaleString() : "" },
    formatTime(value),
  );
}

function notice(message, isError) {
  const box = $("notice");
  box.textContent = message || "";
  box.className = isError ? "error" : "";
  box.hidden = !message;
}

// ---- API ---------------------------------------------------------------------------------------
class Unauthorized extends Error {}

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${token()}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (response.status === 401) throw new Unauthorized("The API token was refused.");
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (!response.ok) throw new Error((data && data.error) || `${response.status} ${response.statusText}`);
  return data;
}

function handleError(error) {
  if (error instanceof Unauthorized) {
    sessionStorage.removeItem(TOKEN_KEY);
    notice(error.message, true);
    route();
    return;
  }
  notice(error.message, true);
}

// ---- X account ----------------------------------------------------------------------------------
// What the bot's X connection looks like (GET /bots gives `x_connection`; never a token).
function connectionState(bot) {
  const health = bot.x_connection || {};
  if (health.needs_reauthorization) return { label: "needs re-authorization", className: "needs_reauthorization", action: "Reconnect" };
  if (!bot.has_tokens) return { label: "not connected", className: "stopped", action: "Connect X account" };
  if (!health.connected) return { label: "expired", className: "needs_reauthorization", action: "Reconnect" };
  const who = bot.x_username ? `@${bot.x_username}` : "connected";
  return { label: who, className: "running", action: "Reconnect" };
}

function connectionDetails(bot) {
  const health = bot.x_connection || {};
  const parts = [];
  if (health.expires_in !== null && health.expires_in !== undefined && bot.has_tokens) {
    parts.push(health.expires_in > 0 ? `token expires in ${Math.round(health.expires_in / 60)} min` : "token expired");
    if (health.refreshable) parts.push("refreshed automatically");
  }
  if (health.scopes) parts.push(`scopes: ${health.scopes.join(" ")}`);
  if (health.missing_scopes && health.missing_scopes.length) parts.push(`missing: ${health.missing_scopes.join(" ")}`);
  if (bot.token_note) parts.push(bot.token_note);
  return parts.join(" · ");
}

async function connectAccount(botId) {
  try {
    const started = await api("POST", `/bots/${encodeURIComponent(botId)}/connect`);
    location.assign(started.authorize_url); // X's consent page; X sends the browser back to the callback
  } catch (error) {
    handleError(error);
  }
}

function connectButton(bot) {
  const state = connectionState(bot);
  return el("button", { type: "button", className: "connect", onclick: () => connectAccount(bot.id) }, state.action);
}

// ---- views ---------------------------------------------------------------------------------------
let current = null; // the open bot page, or null

function show(id) {
  for (const view of ["login", "bots-view", "bot-view"]) $(view).hidden = view !== id;
  $("forget-token").hidden = id === "login";
}

function route() {
  if (current) current.close();
  current = null;
  if (!token()) {
    show("login");
    $("token-input").focus();
    return;
  }
  const match = location.hash.match(/^#\/bots\/([^/]+)$/);
  if (match) {
    show("bot-view");
    current = new BotPage(decodeURIComponent(match[1]));
  } else {
    show("bots-view");
    current = new BotList();
  }
}

class BotList {
  constructor() {
    this.timer = setInterval(() => this.load(), 5000);
    this.load();
  }

  close() {
    clearInterval(this.timer);
  }

  async load() {
    this.loadModels();
    try {
      const bots = await api("GET", "/bots");
      $("bots-empty").hidden = bots.length > 0;
      $("bots-body").replaceChildren(
        ...bots.map((bot) =>
          el("tr", { "data-bot-id": bot.id },
            el("td", {}, el("a", { href: `#/bots/${encodeURIComponent(bot.id)}` }, bot.id)),
            el("td", {}, bot.name),
            el("td", {}, bot.plan_tier, bot.dry_run ? " · dry run" : "", bot.approval_required ? " · approval" : ""),
            el("td", {}, runningBadge(bot.isRunning)),
            el("td", {}, bot.isRunning ? timeEl(bot.nextAlarmTime) : "—"),
            el("td", { className: "x-account" },
              el("span", { className: `badge ${connectionState(bot).className}`, title: connectionDetails(bot) }, connectionState(bot).label)),
            el("td", {}, connectButton(bot)),
          ),
        ),
      );
    } catch (error) {
      handleError(error);
    }
  }
}

BotList.prototype.loadModels = async function loadModels() {
  try {
    const [configs, prompts] = await Promise.all([api("GET", "/llm-configs"), api("GET", "/prompts")]);
    $("llm-configs-empty").hidden = configs.length > 0;
    $("llm-configs-body").replaceChildren(
      ...configs.map((config) =>
        el("tr", { "data-llm-config-id": config.id },
          el("td", {}, config.id),
          el("td", {}, config.name),
          el("td", {}, config.model),
          el("td", {}, config.base_url || "OPENAI_BASE_URL"),
          el("td", {}, config.temperature ?? "—"),
          el("td", {}, config.max_tokens ?? "—"),
          el("td", {}, config.has_api_key ? "stored" : "none"),
        ),
      ),
    );
    $("prompts-empty").hidden = prompts.length > 0;
    $("prompts-body").replaceChildren(
      ...prompts.map((prompt) =>
        el("tr", { "data-prompt-id": prompt.id },
          el("td", {}, prompt.id),
          el("td", {}, prompt.name),
          el("td", {}, `v${prompt.version}`),
          el("td", {}, prompt.placeholders.map((name) => `{${name}}`).join(" ")),
          el("td", { className: "template-text" }, prompt.system_text),
        ),
      ),
    );
  } catch (error) {
    handleError(error);
  }
};

// Which template (name, version) and model wrote a draft, and what the vision model saw.
function provenance(reply) {
  const parts = [`draft #${reply.id}`];
  if (reply.prompt_template_id) {
    const name = reply.prompt_template_name || `template #${reply.prompt_template_id}`;
    parts.push(`${name} v${reply.prompt_version}`);
  } else parts.push("persona prompt");
  if (reply.llm_model) parts.push(reply.llm_model + (reply.llm_config_id ? ` (config #${reply.llm_config_id})` : ""));
  return parts.join(" · ");
}

function runningBadge(isRunning) {
  if (isRunning === null || isRunning === undefined) return el("span", { className: "badge" }, "unknown");
  return el("span", { className: `badge ${isRunning ? "running" : "stopped"}` }, isRunning ? "Running" : "Stopped");
}

function schedule(task) {
  if (task.cron_expression) return `cron ${task.cron_expression}`;
  if (task.interval_seconds) return `every ${task.interval_seconds}s`;
  return `every ${task.interval_minutes}m`;
}

// The reply policy's fields as the form shows them: [name, kind, label]. Kinds: "int" and "num"
// (a "?" suffix: empty = no limit), "bool", "list" (comma-separated), "str?".
const POLICY_FIELDS = [
  ["max_replies_per_day", "int?", "Replies per day"],
  ["max_replies_per_author_per_day", "int?", "Replies per author per day"],
  ["author_cooldown_seconds", "int", "Cooldown per author (s)"],
  ["max_replies_per_conversation", "int?", "Replies per conversation"],
  ["max_thread_depth", "int?", "Max thread depth"],
  ["max_mention_age_hours", "num?", "Max mention age (h)"],
  ["never_answer_user_ids", "list", "Never answer (X user ids)"],
  ["skip_operator_bots", "bool", "Never answer my other bots"],
  ["opt_out_words", "list", "Opt-out words"],
  ["allow_keywords", "list", "Only mentions with"],
  ["deny_keywords", "list", "Never mentions with"],
  ["languages", "list", "Languages (empty = any)"],
  ["min_followers", "int", "Min followers"],
  ["min_account_age_days", "int", "Min account age (days)"],
  ["gate_enabled", "bool", "Should-respond gate"],
  ["gate_model", "str?", "Gate model"],
  ["allow_links", "bool", "Drafts may contain links"],
  ["allow_mentions", "bool", "Drafts may @mention others"],
  ["allow_cashtags", "bool", "Drafts may contain cashtags"],
  ["banned_words", "list", "Banned words in drafts"],
  ["daily_token_budget", "int?", "Daily LLM token budget"],
  ["daily_x_spend_usd", "num?", "Daily X spend budget ($)"],
];

function policyInput(name, kind, value) {
  const id = `policy-${name}`;
  if (kind === "bool") {
    const box = el("input", { type: "checkbox", id, name });
    box.checked = Boolean(value);
    return box;
  }
  const input = el("input", { type: kind.startsWith("int") || kind.startsWith("num") ? "number" : "text", id, name });
  if (kind.startsWith("num")) input.step = "any";
  if (kind.endsWith("?")) input.placeholder = "no limit";
  input.value = kind === "list" ? (value || []).join(", ") : value === null || value === undefined ? "" : String(value);
  return input;
}

function readPolicyForm() {
  const body = {};
  for (const [name, kind] of POLICY_FIELDS) {
    const input = $(`policy-${name}`);
    const raw = input.value.trim();
    if (kind === "bool") body[name] = input.checked;
    else if (kind === "list") body[name] = raw ? raw.split(",").map((part) => part.trim()).filter(Boolean) : [];
    else if (raw === "" && kind.endsWith("?")) body[name] = null;
    else if (kind.startsWith("int") || kind.startsWith("num")) body[name] = Number(raw);  // the API checks it
    else body[name] = raw;
  }
  return body;
}

class BotPage {
  constructor(botId) {
    this.botId = botId;
    this.closed = false;
    this.logIds = new Set();
    this.pending = {};
    this.socket = null;
    this.retry = 500;
    $("bot-title").textContent = botId;
    $("bot-subtitle").textContent = "";
    $("logs").replaceChildren();
    $("tasks-body").replaceChildren();
    $("executions-body").replaceChildren();
    $("replies").replaceChildren();
    $("policy-fields").replaceChildren();
    $("skipped-body").replaceChildren();
    $("policy-form").onsubmit = (event) => {
      event.preventDefault();
      this.savePolicy();
    };
    $("start-btn").onclick = () => this.control("start");
    $("stop-btn").onclick = () => this.control("stop");
    $("connect-btn").onclick = () => connectAccount(this.botId);
    $("x-connection").replaceChildren();
    // Drafts appear from the generate_replies task: look for new ones now and then.
    this.timer = setInterval(() => this.loadReplies(), 10000);
    this.reloadAll();
    this.connect();
  }

  close() {
    this.closed = true;
    clearInterval(this.timer);
    if (this.socket) this.socket.close();
  }

  path(suffix) {
    return `/bots/${encodeURIComponent(this.botId)}${suffix}`;
  }

  reloadAll() {
    this.loadBot();
    this.loadStatusAndTasks();
    this.loadExecutions();
    this.loadLogs();
    this.loadReplies();
    this.loadPolicy();
    this.loadSkipped();
  }

  async loadPolicy() {
    try {
      const [policy, spend] = await Promise.all([api("GET", this.path("/reply-policy")), api("GET", this.path("/spend"))]);
      this.showPolicy(policy);
      const budget = spend.daily_token_budget === null ? "no token budget" : `budget ${spend.daily_token_budget}`;
      $("spend").textContent = `Today: ${spend.tokens_in + spend.tokens_out} LLM tokens (${budget}),`
        + ` ~$${spend.llm_cost_usd.toFixed(4)} LLM, ~$${spend.x_spend_usd.toFixed(3)} X`;
    } catch (error) {
      handleError(error);
    }
  }

  showPolicy(policy) {
    $("policy-fields").replaceChildren(...POLICY_FIELDS.map(([name, kind, label]) =>
      el("label", { className: "policy-field", for: `policy-${name}` }, el("span", {}, label), policyInput(name, kind, policy[name]))));
    const others = policy.operator_bot_ids || [];
    $("policy-operator-bots").textContent = others.length ? `My other bots (X ids): ${others.join(", ")}` : "";
  }

  async savePolicy() {
    try {
      this.showPolicy(await api("PUT", this.path("/reply-policy"), readPolicyForm()));
      notice("Reply policy saved.");
    } catch (error) {
      handleError(error);  // the form keeps what was typed
    }
  }

  async loadSkipped() {
    try {
      const page = await api("GET", this.path("/mentions/skipped?limit=50"));
      $("skipped-empty").hidden = page.items.length > 0;
      $("skipped-body").replaceChildren(...page.items.map((item) =>
        el("tr", { "data-post-id": item.x_post_id },
          el("td", {}, item.x_post_id),
          el("td", {}, item.author_username ? `@${item.author_username}` : item.author_x_user_id || ""),
          el("td", {}, item.text),
          el("td", {}, el("span", { className: "badge small" }, item.skipped_code)),
          el("td", { className: "muted" }, item.skipped_reason),
        )));
    } catch (error) {
      handleError(error);
    }
  }

  // Coalesce bursts of events into one fetch per kind.
  soon(name, fn) {
    if (this.pending[name]) return;
    this.pending[name] = setTimeout(() => {
      delete this.pending[name];
      if (!this.closed) fn.call(this);
    }, 150);
  }

  async loadBot() {
    try {
      const bot = await api("GET", this.path(""));
      $("bot-title").textContent = `${bot.name} (${bot.id})`;
      const flags = [bot.plan_tier, bot.dry_run && "dry run", bot.approval_required && "approval required",
        bot.auth_state !== "ok" && bot.auth_state, bot.x_username && `@${bot.x_username}`].filter(Boolean);
      $("bot-subtitle").textContent = flags.join(" · ");
      const state = connectionState(bot);
      $("x-connection").replaceChildren(
        "X account: ",
        el("span", { className: `badge ${state.className}`, id: "x-account-state" }, state.label),
        " ",
        el("span", { className: "muted" }, connectionDetails(bot)),
      );
      $("connect-btn").textContent = state.action;
    } catch (error) {
      handleError(error);
    }
  }

  setStatus(isRunning, alarm) {
    const badge = $("bot-status");
    badge.textContent = isRunning ? "Running" : "Stopped";
    badge.className = `badge ${isRunning ? "running" : "stopped"}`;
    $("bot-next").replaceChildren(...(isRunning && alarm ? ["next run ", timeEl(alarm)] : []));
    $("start-btn").disabled = isRunning;
    $("stop-btn").disabled = !isRunning;
  }

  async loadStatusAndTasks() {
    try {
      const [status, tasks] = await Promise.all([api("GET", this.path("/status")), api("GET", this.path("/tasks"))]);
      this.setStatus(status.isRunning, status.nextAlarmTime);
      const live = new Map(status.tasks.map((task) => [task.id, task]));
      $("tasks-body").replaceChildren(...tasks.map((task) => this.taskRow(task, live.get(task.id), status)));
    } catch (error) {
      handleError(error);
    }
  }

  taskRow(task, live, status) {
    let state = task.is_active ? (task.is_paused ? "paused" : "scheduled") : "inactive";
    if (live && status.isRunning) state = live.state;
    if (status.runningTasks.includes(task.id)) state = "running";
    const nextDue = live && status.isRunning ? live.nextDueAt : task.next_planned_run_at;
    return el("tr", { "data-task-id": task.id },
      el("td", {}, task.id),
      el("td", {}, task.name || task.task_type, task.name ? el("div", { className: "muted" }, task.task_type) : null),
      el("td", {}, schedule(task)),
      el("td", {}, task.priority),
      el("td", {}, el("span", { className: `badge ${state}`, title: (live && live.stateReason) || "" }, state)),
      el("td", {}, timeEl(nextDue)),
      el("td", {}, timeEl(task.last_successful_run_at)),
      el("td", {}, `${task.consecutive_failures} / ${task.error_threshold}`),
      el("td", { className: "actions" },
        el("button", { type: "button", className: "run", disabled: !status.isRunning, onclick: () => this.taskAction(task.id, "run") }, "Run now"),
        task.is_paused
          ? el("button", { type: "button", className: "resume", onclick: () => this.taskAction(task.id, "resume") }, "Resume")
          : el("button", { type: "button", className: "pause", onclick: () => this.taskAction(task.id, "pause") }, "Pause"),
      ),
    );
  }

  async taskAction(taskId, action) {
    try {
      const result = await api("POST", this.path(`/tasks/${taskId}/${action}`));
      notice(action === "run" ? result.message : "");
      this.loadStatusAndTasks();
    } catch (error) {
      handleError(error);
    }
  }

  async control(action) {
    try {
      const result = await api("POST", this.path(`/${action}`));
      notice(result.message === "No tasks to schedule" ? result.message : "");
      this.loadStatusAndTasks();
    } catch (error) {
      handleError(error);
    }
  }

  async loadExecutions() {
    try {
      const page = await api("GET", this.path("/executions?limit=20"));
      $("executions-body").replaceChildren(
        ...page.items.map((run) =>
          el("tr", { "data-execution-id": run.id },
            el("td", {}, run.id),
            el("td", {}, run.task_type),
            el("td", {}, el("span", { className: `badge ${run.status}` }, run.status)),
            el("td", {}, run.attempt_number),
            el("td", {}, timeEl(run.started_at)),
            el("td", {}, run.duration_ms === null ? "—" : `${run.duration_ms} ms`),
            el("td", { className: "muted" }, run.error_message || ""),
          ),
        ),
      );
    } catch (error) {
      handleError(error);
    }
  }

  async loadLogs() {
    try {
      const page = await api("GET", this.path("/logs?limit=50"));
      for (const entry of page.items.reverse()) this.addLog(entry.id, entry.created_at, entry.level, entry.content);
    } catch (error) {
      handleError(error);
    }
  }

  addLog(id, timestamp, level, content, live) {
    const key = String(id);
    if (this.logIds.has(key)) return;
    this.logIds.add(key);
    const list = $("logs");
    list.prepend(
      el("li", { "data-log-id": key, "data-live": live, className: `level-${level}` },
        el("time", { datetime: timestamp }, new Date(timestamp).toLocaleTimeString()),
        el("span", { className: `level level-${level}` }, level),
        content,
      ),
    );
    while (list.children.length > 200) list.lastElementChild.remove();
  }

  async loadReplies() {
    try {
      const page = await api("GET", this.path("/replies?status=pending_approval&limit=50"));
      $("replies-empty").hidden = page.items.length > 0;
      $("replies").replaceChildren(...page.items.map((reply) => this.replyCard(reply)));
    } catch (error) {
      handleError(error);
    }
  }

  replyCard(reply) {
    const text = el("textarea", { maxlength: 1000, "aria-label": "Reply text" });
    text.value = reply.text || "";
    const act = async (method, suffix, body) => {
      try {
        await api(method, this.path(`/replies/${reply.id}${suffix}`), body);
        notice("");
        this.loadReplies();
      } catch (error) {
        handleError(error);
      }
    };
    const author = reply.mention_author_username ? `@${reply.mention_author_username}: ` : "";
    return el("div", { className: "reply", "data-reply-id": reply.id },
      el("blockquote", {}, author, reply.mention_text || ""),
      reply.image_description ? el("p", { className: "muted image-description" }, `Images: ${reply.image_description}`) : null,
      reply.vision_error ? el("p", { className: "muted vision-error" }, reply.vision_error) : null,
      text,
      el("div", { className: "row" },
        el("span", { className: "muted provenance" }, provenance(reply)),
        el("button", { type: "button", className: "save", onclick: () => act("PATCH", "", { text: text.value }) }, "Save text"),
        el("button", { type: "button", className: "reject", onclick: () => act("POST", "/reject") }, "Reject"),
        el("button", { type: "button", className: "approve primary", onclick: async () => {
          if (text.value !== (reply.text || "")) await act("PATCH", "", { text: text.value });
          await act("POST", "/approve");
        } }, "Approve"),
      ),
    );
  }

  // ---- live feed ----
  connect() {
    if (this.closed) return;
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const url = `${scheme}://${location.host}${this.path("/ws")}?token=${encodeURIComponent(token())}`;
    const socket = new WebSocket(url);
    this.socket = socket;
    socket.onopen = () => {
      this.retry = 500;
      $("feed-state").textContent = "live";
      $("feed-state").className = "badge small live";
    };
    socket.onmessage = (message) => this.onEvent(JSON.parse(message.data));
    socket.onclose = () => {
      $("feed-state").textContent = "offline";
      $("feed-state").className = "badge small";
      if (this.closed) return;
      setTimeout(() => this.connect(), this.retry);
      this.retry = Math.min(this.retry * 2, 10000);
    };
  }

  onEvent(event) {
    switch (event.type) {
      case "connection_ack":
        this.setStatus(event.initialSchedulerStatus.isRunning, event.initialSchedulerStatus.currentAlarmTime);
        break;
      case "scheduler_status_update":
        this.setStatus(event.isRunning, event.currentAlarmTime);
        this.soon("tasks", this.loadStatusAndTasks);
        break;
      case "entity_update":
        if (event.entityType === "task_execution") this.soon("executions", this.loadExecutions);
        this.soon("tasks", this.loadStatusAndTasks);
        this.soon("replies", this.loadReplies);
        this.soon("skipped", this.loadSkipped);
        break;
      case "log":
        // Stored rows carry their id (the same as GET /logs gives); workflow-only lines do not.
        this.addLog(event.id ?? `live-${event.seq}`, event.timestamp, event.level, event.content, true);
        break;
      case "resync":
        this.reloadAll();
        break;
      default:
        break; // ping, pong
    }
  }
}

// ---- start ---------------------------------------------------------------------------------------
document.addEventListener("DOMContentLoaded", () => {
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token-input").value.trim());
    $("token-input").value = "";
    notice("");
    route();
  });
  $("forget-token").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    route();
  });
  window.addEventListener("hashchange", route);
  // Back from X's consent page through /oauth/x/callback: say so once, and drop the marker.
  const params = new URLSearchParams(location.search);
  if (params.get("x_connect") === "connected") {
    notice("X account connected.");
    history.replaceState(null, "", `/${location.hash}`);
  }
  // Relative times ("in 58s") stay current between updates.
  setInterval(() => {
    for (const node of document.querySelectorAll("time.relative")) node.textContent = formatTime(node.getAttribute("datetime"));
  }, 1000);
  route();
});
