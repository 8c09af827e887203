import EvServer
import RedisSessionStore

#if canImport(Glibc)
import Glibc
#endif

// GET /demo: one self-contained page (inline CSS and JS, no external assets, no framework) that shows what the
// session routes do, for a person clicking through the load balancer. It is only a client of the JSON routes
// (GET /session, GET /views, ...), so it shows nothing a curl could not.
//
// Security choices:
// - The page never shows the session id: /session hands it to the script, which displays at most the first
//   6 hex digits of its SHA-256 (24 bits: enough to see that "regenerate" changed it, useless to hijack it).
// - A strict Content-Security-Policy with a fresh nonce per response for the one <style> and the one <script>:
//   no 'unsafe-inline', no eval, no other origin, no inline style attributes; fetch only to this origin. A nonce
//   rather than a hash because this module has no SHA-256 of its own (swift-crypto is not a dependency of the
//   executable); the page is built per request anyway (a string splice) and sent with `Cache-Control: no-store`
//   so a nonce is never reused from a cache.
// - All session data reaches the DOM through `textContent`, never `innerHTML`: values written with POST /session
//   are attacker-controlled strings.

/// The `GET /demo` page.
enum DemoPage {
    /// Registers `GET /demo` on `app`. The route never creates a session: a request without a session leaves
    /// it uninitialized even when `--save-uninitialized` is on (an existing session is read and kept as is).
    static func register(on app: Application) {
        app.get("/demo") { request, response in
            // A new session would be stored (and its cookie sent) with saveUninitialized; the page itself has no
            // business creating one: the buttons do. `unset` drops it from this request without a store call.
            if let session = request.sessionIfPresent, session.isNew { session.unset() }
            let nonce = makeNonce()
            response.headers.replace("Content-Type", "text/html; charset=utf-8")
            response.headers.replace("Content-Security-Policy", contentSecurityPolicy(nonce: nonce))
            response.headers.replace("Cache-Control", "no-store")
            response.headers.replace("X-Content-Type-Options", "nosniff")
            response.headers.replace("Referrer-Policy", "no-referrer")
            response.send(html(nonce: nonce))
        }
    }

    /// The policy: nothing by default; the nonce'd style and script; fetch to this origin; no framing, no base,
    /// no forms. `img-src data:` only for the empty favicon (which saves the browser a 404 round trip).
    static func contentSecurityPolicy(nonce: String) -> String {
        "default-src 'none'; script-src 'nonce-\(nonce)'; style-src 'nonce-\(nonce)'; connect-src 'self'; "
            + "img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    }

    /// 128 random bits as 32 lowercase hex digits (a valid CSP nonce: hex is a subset of base64).
    static func makeNonce() -> String {
        var generator = SystemRandomNumberGenerator()
        let digits = Array("0123456789abcdef".utf8)
        var out = [UInt8]()
        out.reserveCapacity(32)
        for _ in 0..<2 {
            var word = generator.next() as UInt64
            for _ in 0..<16 {
                out.append(digits[Int(word & 15)])
                word >>= 4
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// The page with `nonce` on its `<style>` and `<script>`.
    static func html(nonce: String) -> String {
        head + "<style nonce=\"\(nonce)\">" + style + "</style>\n</head>\n" + body
            + "<script nonce=\"\(nonce)\">" + script + "</script>\n</body>\n</html>\n"
    }

    // MARK: - The page

    private static let head = #"""
        <!doctype html>
        <html lang="en">
        <head>
        <meta charset="utf-8">
        <meta name="viewport" content="width=device-width, initial-scale=1">
        <meta name="color-scheme" content="light dark">
        <title>EvServer · session demo</title>
        <link rel="icon" href="data:,">

        """#

    private static let style = #"""

        :root {
          --bg: #f6f7f9; --card: #ffffff; --ink: #1d2430; --muted: #677185; --line: #e2e6ee;
          --accent: #2f6fec; --accent-ink: #ffffff; --ok: #1f8a4c; --bad: #c2362b;
          --chip: #eef2fb; --chip-on: #2f6fec;
        }
        @media (prefers-color-scheme: dark) {
          :root {
            --bg: #12151b; --card: #1a1f27; --ink: #e6e9ef; --muted: #9aa3b5; --line: #2a313d;
            --accent: #5b8ef5; --accent-ink: #0b0e13; --ok: #4cc38a; --bad: #f07167;
            --chip: #232a36; --chip-on: #5b8ef5;
          }
        }
        * { box-sizing: border-box; }
        body {
          margin: 0; background: var(--bg); color: var(--ink);
          font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
        }
        main { max-width: 880px; margin: 0 auto; padding: 32px 20px 48px; }
        h1 { font-size: 1.6rem; margin: 0 0 4px; letter-spacing: -0.01em; }
        h2 { font-size: 0.8rem; text-transform: uppercase; letter-spacing: 0.08em; color: var(--muted); margin: 0 0 8px; }
        .lead { margin: 0 0 24px; color: var(--muted); }
        .grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(220px, 1fr)); gap: 16px; margin-bottom: 16px; }
        .card { background: var(--card); border: 1px solid var(--line); border-radius: 12px; padding: 16px 18px; }
        .big { font-size: 2.4rem; font-weight: 650; margin: 0; line-height: 1.15; font-variant-numeric: tabular-nums; }
        .muted { color: var(--muted); font-size: 0.9rem; margin: 6px 0 0; }
        .chips { display: flex; flex-wrap: wrap; gap: 6px; margin-top: 10px; min-height: 26px; }
        .chip { background: var(--chip); border-radius: 999px; padding: 2px 10px; font-size: 0.85rem; }
        .chip.current { background: var(--chip-on); color: var(--accent-ink); }
        dl { display: grid; grid-template-columns: auto 1fr; gap: 4px 12px; margin: 0; }
        dt { color: var(--muted); }
        dd { margin: 0; font-variant-numeric: tabular-nums; }
        .nowrap { white-space: nowrap; }
        #hops { white-space: pre-line; }
        code, pre { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 0.9rem; }
        pre { margin: 0; white-space: pre-wrap; word-break: break-word; max-height: 260px; overflow: auto; }
        .actions { display: flex; flex-wrap: wrap; gap: 10px; margin: 8px 0 16px; }
        button {
          font: inherit; font-weight: 600; border: 1px solid var(--accent); background: var(--accent);
          color: var(--accent-ink); padding: 8px 18px; border-radius: 8px; cursor: pointer;
        }
        button.secondary { background: transparent; color: var(--accent); }
        button:disabled { opacity: 0.55; cursor: progress; }
        button:focus-visible { outline: 3px solid var(--chip-on); outline-offset: 2px; }
        .route { font-weight: 400; opacity: 0.8; font-size: 0.8rem; margin-left: 6px; }
        ol { list-style: none; margin: 0; padding: 0; }
        li { display: grid; grid-template-columns: 3.2em 1fr auto; gap: 8px; padding: 5px 0; border-top: 1px solid var(--line); }
        li:first-child { border-top: 0; }
        .status-ok { color: var(--ok); font-weight: 600; }
        .status-bad { color: var(--bad); font-weight: 600; }
        .error { color: var(--bad); min-height: 1.5em; margin: 0 0 8px; }
        footer { color: var(--muted); font-size: 0.85rem; margin-top: 20px; }
        input {
          font: inherit; padding: 7px 10px; border: 1px solid var(--line); border-radius: 8px;
          background: var(--card); color: var(--ink); min-width: 10em;
        }
        #devices-card { margin-bottom: 16px; }
        li.device { grid-template-columns: 5em 1fr auto; }
        li.device.current { font-weight: 600; }

        """#

    private static let body = #"""
        <body>
        <main>
          <h1>EvServer session demo</h1>
          <p class="lead">One session in Redis, shared by every instance behind the load balancer.
            Each button calls its route, then the page redraws from <code>GET /session</code>.</p>

          <div class="grid">
            <section class="card" aria-labelledby="h-instance">
              <h2 id="h-instance">Answered by</h2>
              <p class="big" id="instance">…</p>
              <p class="muted" id="hops">the instance that sent the last answer</p>
              <p class="muted">instances seen on this page:</p>
              <div class="chips" id="seen"></div>
            </section>
            <section class="card" aria-labelledby="h-views">
              <h2 id="h-views">Views</h2>
              <p class="big" id="views">0</p>
              <p class="muted">the session's <code>views</code>, incremented by <code>GET /views</code></p>
            </section>
            <section class="card" aria-labelledby="h-session">
              <h2 id="h-session">Session</h2>
              <dl>
                <dt>state</dt><dd id="state">…</dd>
                <dt>fingerprint</dt><dd><code id="fingerprint">—</code></dd>
                <dt>expires in</dt><dd id="ttl" class="nowrap">—</dd>
                <dt>cookie</dt><dd id="cookie">—</dd>
              </dl>
            </section>
          </div>

          <div class="actions" role="group" aria-label="Session actions">
            <button id="visit" data-method="GET" data-path="/">visit<span class="route">GET /</span></button>
            <button id="count" data-method="GET" data-path="/views">count<span class="route">GET /views</span></button>
            <button id="regenerate" class="secondary" data-method="POST" data-path="/session/regenerate">regenerate<span class="route">POST /session/regenerate</span></button>
            <button id="logout" class="secondary" data-method="POST" data-path="/logout">log out<span class="route">POST /logout</span></button>
          </div>
          <p class="error" id="error" role="alert"></p>

          <section class="card" id="devices-card" aria-labelledby="h-devices">
            <h2 id="h-devices">Your devices</h2>
            <p class="muted" id="who">not signed in</p>
            <div class="actions" role="group" aria-label="User actions">
              <input id="user" aria-label="user name" value="alice" maxlength="64" autocomplete="username">
              <button id="signin" data-method="POST" data-path="/signin" data-user="1">sign in<span class="route">POST /signin</span></button>
              <button id="signout-others" class="secondary" data-method="POST" data-path="/signout-everywhere">log out the others<span class="route">POST /signout-everywhere</span></button>
              <button id="signout" class="secondary" data-method="POST" data-path="/signout">sign out<span class="route">POST /signout</span></button>
            </div>
            <ol id="devices" aria-live="polite"></ol>
          </section>

          <div class="grid">
            <section class="card" aria-labelledby="h-data">
              <h2 id="h-data">Session data</h2>
              <pre id="data">{}</pre>
            </section>
            <section class="card" aria-labelledby="h-log">
              <h2 id="h-log">Requests</h2>
              <ol id="log" aria-live="polite"></ol>
            </section>
          </div>

          <footer>The session id never appears on this page; the fingerprint is the first 6 hex digits of its
            SHA-256. Cookies are HttpOnly: the page cannot read them, only the server can.</footer>
        </main>

        """#

    private static let script = #"""

        "use strict";
        (() => {
          const $ = (id) => document.getElementById(id);
          const seen = [];
          let ttlLeft = null;

          // Display only: 24 bits of SHA-256, or of FNV-1a where crypto.subtle is missing (plain HTTP to a
          // non-loopback host is not a secure context).
          async function fingerprint(id) {
            const bytes = new TextEncoder().encode(id);
            if (window.crypto && crypto.subtle) {
              const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
              return Array.from(digest.slice(0, 3), (b) => b.toString(16).padStart(2, "0")).join("");
            }
            let h = 0x811c9dc5;
            for (const b of bytes) { h ^= b; h = Math.imul(h, 0x01000193) >>> 0; }
            return (h >>> 8).toString(16).padStart(6, "0");
          }

          function duration(seconds) {
            if (seconds === null || seconds === undefined) return "—";
            const s = Math.max(0, Math.floor(seconds));
            const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
            if (h > 0) return `${h} h ${String(m).padStart(2, "0")} m ${String(r).padStart(2, "0")} s`;
            if (m > 0) return `${m} m ${String(r).padStart(2, "0")} s`;
            return `${r} s`;
          }

          function showInstance(name) {
            if (!name) return;
            $("instance").textContent = name;
            if (!seen.includes(name)) { seen.push(name); seen.sort(); }
            const chips = $("seen");
            chips.replaceChildren(...seen.map((n) => {
              const chip = document.createElement("span");
              chip.className = n === name ? "chip current" : "chip";
              chip.textContent = n;
              return chip;
            }));
          }

          function logLine(label, status, instance, ms) {
            const item = document.createElement("li");
            const code = document.createElement("span");
            code.className = status >= 200 && status < 400 ? "status-ok" : "status-bad";
            code.textContent = status ? String(status) : "failed";
            const what = document.createElement("span");
            what.textContent = label;
            const where = document.createElement("span");
            where.className = "muted";
            where.textContent = `${instance || "?"} · ${Math.round(ms)} ms`;
            item.append(code, what, where);
            const log = $("log");
            log.prepend(item);
            while (log.children.length > 8) log.lastElementChild.remove();
          }

          async function request(method, path, body) {
            const started = performance.now();
            let response;
            try {
              const headers = { "Accept": "application/json" };
              if (body !== undefined) headers["Content-Type"] = "application/json";
              response = await fetch(path, {
                method, credentials: "same-origin", cache: "no-store", headers,
                body: body === undefined ? undefined : JSON.stringify(body),
              });
            } catch (error) {
              logLine(`${method} ${path}`, 0, null, performance.now() - started);
              throw new Error(`${method} ${path}: ${error.message}`);
            }
            const instance = response.headers.get("X-Instance");
            logLine(`${method} ${path}`, response.status, instance, performance.now() - started);
            if (!response.ok) throw new Error(`${method} ${path} answered ${response.status}`);
            return { response, instance };
          }

          async function redraw() {
            const { response, instance } = await request("GET", "/session");
            const session = await response.json();
            showInstance(session.instance);
            const data = session.data || {};
            $("views").textContent = String(Number(data.views || 0));
            $("data").textContent = JSON.stringify(data, null, 2);
            if (session.id) {
              $("state").textContent = "stored in Redis";
              $("fingerprint").textContent = await fingerprint(session.id);
              ttlLeft = typeof session.ttl === "number" ? session.ttl : null;
              const expires = session.cookie && session.cookie.expires;
              $("cookie").textContent = expires ? `expires ${new Date(expires).toLocaleString()}` : "until the browser closes";
            } else {
              $("state").textContent = "none yet";
              $("fingerprint").textContent = "—";
              $("cookie").textContent = "—";
              ttlLeft = null;
            }
            $("ttl").textContent = duration(ttlLeft);
            await redrawDevices(data.evserverUser && data.evserverUser.name);
            return instance || session.instance;
          }

          // The signed-in user's sessions (GET /devices): a handle each (never an id), the client, the last use.
          async function redrawDevices(user) {
            const list = $("devices");
            document.body.dataset.user = user || "";
            if (!user) {
              $("who").textContent = "not signed in";
              list.replaceChildren();
              return;
            }
            const { response } = await request("GET", "/devices");
            const answer = await response.json();
            const devices = answer.devices || [];
            $("who").textContent = `signed in as ${user} · ${devices.length} device${devices.length === 1 ? "" : "s"}`;
            list.replaceChildren(...devices.map((device) => {
              const item = document.createElement("li");
              item.className = device.current ? "device current" : "device";
              item.dataset.current = device.current ? "1" : "0";
              const handle = document.createElement("code");
              handle.textContent = String(device.handle || "").slice(0, 6);
              const client = document.createElement("span");
              const c = device.client || {};
              client.textContent = `${c.agent || "unknown client"}${c.ip ? " · " + c.ip : ""}` +
                (device.current ? " (this device)" : "");
              const when = document.createElement("span");
              when.className = "muted";
              const idle = typeof device.lastActiveAt === "number" ? (Date.now() - device.lastActiveAt) / 1000 : null;
              when.textContent = idle === null ? "" : `active ${duration(idle)} ago`;
              item.append(handle, client, when);
              return item;
            }));
          }

          async function act(button) {
            const buttons = document.querySelectorAll("button[data-path]");
            buttons.forEach((b) => { b.disabled = true; });
            document.body.dataset.busy = "1";
            $("error").textContent = "";
            try {
              const body = button.dataset.user ? { user: $("user").value } : undefined;
              const { instance } = await request(button.dataset.method, button.dataset.path, body);
              showInstance(instance);
              const redrawnBy = await redraw();
              $("hops").textContent = `${button.dataset.method} ${button.dataset.path} → ${instance || "?"}\n` +
                `GET /session → ${redrawnBy || "?"}`;
            } catch (error) {
              $("error").textContent = error.message;
            } finally {
              buttons.forEach((b) => { b.disabled = false; });
              delete document.body.dataset.busy;
            }
          }

          document.querySelectorAll("button[data-path]").forEach((button) => {
            button.addEventListener("click", () => act(button));
          });
          setInterval(() => {
            if (ttlLeft === null) return;
            ttlLeft = Math.max(0, ttlLeft - 1);
            $("ttl").textContent = duration(ttlLeft);
          }, 1000);
          document.body.dataset.busy = "1";
          redraw()
            .catch((error) => { $("error").textContent = error.message; })
            .finally(() => { delete document.body.dataset.busy; });
        })();

        """#
}
