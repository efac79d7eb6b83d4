"""Elasticsearch's own rate for the app's read queries, and the web's for the same reads, with
wrk and one Lua generator: `make bench-app` runs it right before its Locust phases of the same
endpoints (stackkit/bench/app.py).

The bodies are the app's own (app/catalogue/search/queries.py, loaded from the checkout), each
built once around a placeholder that the Lua script replaces per request: a fresh random prefix
for autocomplete, two misspelt words for search. Elasticsearch is asked on the search host
itself (it binds loopback; other hosts reach it through the TLS proxy), over SSH as Ansible
reaches the host (stackkit.ssh); the web is asked from the controller through nginx over TLS,
with the same generator, connections and duration.

A search is what the app does for one request: the phrase round, and when it finds nothing, the
term round with the phrase round's suggestions. wrk runs one connection per thread, so the Lua
state of a thread sees its requests and answers strictly in turn and can chain the two rounds;
it times each search on a monotonic clock and reports searches, not HTTP requests.
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import json
import random
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
APP_CATALOGUE = ROOT / "app" / "catalogue"
Q = "@Q@"  # where the Lua script puts the words of one request
S = "@S@"  # where it puts the phrase round's suggestions
MARK = "STACKKIT-WRK "  # the line done() prints: the figures as JSON
ENDPOINTS = ("autocomplete", "search")


def app_queries() -> ModuleType:
    """The app's queries module, imported from the checkout under a private package name (the
    kit's environment has no Django; queries.py and its client need only requests)."""
    name = "_stackkit_app_catalogue"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, APP_CATALOGUE / "__init__.py", submodule_search_locations=[str(APP_CATALOGUE)]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return importlib.import_module(f"{name}.search.queries")


def bodies() -> dict[str, str]:
    """The request bodies the app sends, serialised as its client serialises them
    (json.dumps), with the placeholders in place of the user's words."""
    queries = app_queries()
    return {
        "autocomplete": json.dumps(queries.autocomplete_query(Q)),
        "phrase": json.dumps(queries.phrase_query(Q)),
        "term": json.dumps(queries.term_query(Q, [])),
        "term_suggested": json.dumps(queries.term_query(Q, [S])),
    }


def lua_string(text: str) -> str:
    """A Lua long string literal holding `text` exactly."""
    level = 0
    while f"]{'=' * level}]" in text:
        level += 1
    return f"[{'=' * level}[{text}]{'=' * level}]"


LUA = r"""-- Written by stackkit/bench/wrk.py for one run of wrk; see there.
local endpoint, target, path = ENDPOINT, TARGET, PATH
local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } stackkit_timespec;
int clock_gettime(int clock, stackkit_timespec *ts);
]]
local ts = ffi.new("stackkit_timespec")
local function now_us()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1e6 + tonumber(ts.tv_nsec) / 1e3
end

local LETTERS = "abcdefghijklmnopqrstuvwxyz"
local function letter()
  local i = math.random(#LETTERS)
  return LETTERS:sub(i, i)
end

-- A prefix of 3 to 6 random letters: almost never asked before, so no cache holds it.
function new_prefix()
  local out = {}
  for i = 1, math.random(3, 6) do out[i] = letter() end
  return table.concat(out)
end

-- A word of the index with one letter changed after the first (the suggester keeps the first).
function misspell(word)
  local at = math.random(2, #word)
  local was, new = word:sub(at, at), letter()
  while new == was do new = letter() end
  return word:sub(1, at - 1) .. new .. word:sub(at + 1)
end

function new_search()
  local a, b = WORDS[math.random(#WORDS)], WORDS[math.random(#WORDS)]
  return misspell(a) .. " " .. misspell(b)
end

local function fill(template, q, s)
  local out = template:gsub("@Q@", function() return q end)
  if s then out = out:gsub("@S@", function() return s end) end
  return out
end

-- The distinct suggested words of a term-suggester answer, best first, as the app's
-- suggested_words() reads them (JSON escapes kept: they go back into JSON as they are).
function suggested(body)
  local words, seen = {}, {}
  local suggest = body:match('"suggest"%s*:%s*(.*)$') or ""
  for options in suggest:gmatch('"options"%s*:%s*%[(.-)%]') do
    for word in options:gmatch('"text"%s*:%s*"(.-)"') do
      if not seen[word] then
        seen[word] = true
        words[#words + 1] = word
      end
    end
  end
  return words
end

function hits_total(body)
  return tonumber(body:match('"hits"%s*:%s*{%s*"total"%s*:%s*(%d+)') or "0")
end

local threads = {}
function setup(thread)
  thread:set("id", #threads + 1)
  threads[#threads + 1] = thread
end

function init(args)
  math.randomseed(os.time() * 1000 + (id or 0))
  searches = {}
end

local headers = { ["Content-Type"] = "application/json" }
local q, pending, started = nil, nil, 0

local function url_words(text)
  return (text:gsub(" ", "+"))
end

function request()
  if target == "web" then
    if endpoint == "autocomplete" then
      return wrk.format("GET", path .. "autocomplete?q=" .. new_prefix())
    end
    return wrk.format("GET", path .. "search?q=" .. url_words(new_search()))
  end
  if endpoint == "autocomplete" then
    return wrk.format("POST", path, headers, fill(AUTOCOMPLETE, new_prefix()))
  end
  if pending then
    local body = pending
    pending = nil
    return wrk.format("POST", path, headers, body)
  end
  q = new_search()
  started = now_us()
  pending = false
  return wrk.format("POST", path, headers, fill(PHRASE, q))
end

if target == "es" and endpoint == "search" then
  function response(status, headers, body)
    if pending == false and status == 200 and hits_total(body) == 0 then
      local words = suggested(body)
      if #words > 0 then
        pending = fill(TERM_SUGGESTED, q, table.concat(words, " "))
      else
        pending = fill(TERM, q)
      end
      return
    end
    pending = nil
    searches[#searches + 1] = now_us() - started
  end
end

local function percentile(sorted, p)
  if #sorted == 0 then return 0 end
  return sorted[math.max(1, math.floor(p / 100 * #sorted + 0.5))]
end

function done(summary, latency, requests)
  local e = summary.errors
  local out = {
    requests = summary.requests, duration_us = summary.duration,
    connect_errors = e.connect, read_errors = e.read, write_errors = e.write,
    status_errors = e.status, timeouts = e.timeout,
    p50_us = latency:percentile(50), p99_us = latency:percentile(99), max_us = latency.max,
  }
  if target == "es" and endpoint == "search" then
    local all = {}
    for _, thread in ipairs(threads) do
      for _, v in ipairs(thread:get("searches")) do all[#all + 1] = v end
    end
    table.sort(all)
    out.searches = #all
    out.search_p50_us = percentile(all, 50)
    out.search_p99_us = percentile(all, 99)
    out.search_max_us = all[#all] or 0
  end
  local fields = {}
  for k, v in pairs(out) do fields[#fields + 1] = string.format('"%s": %.0f', k, v) end
  io.write("MARK{" .. table.concat(fields, ", ") .. "}\n")
end
"""


def lua_script(endpoint: str, target: str, path: str, words: list[str]) -> str:
    """The generator for one endpoint (autocomplete, search) and one target: es (bodies POSTed
    to PATH, the alias's _search) or web (GETs under PATH, the site's /api/)."""
    if endpoint not in ENDPOINTS or target not in ("es", "web"):
        raise ValueError(f"no generator for {endpoint} on {target}")
    templates = bodies()
    header = [
        f"ENDPOINT = {lua_string(endpoint)}",
        f"TARGET = {lua_string(target)}",
        f"PATH = {lua_string(path)}",
        f"AUTOCOMPLETE = {lua_string(templates['autocomplete'])}",
        f"PHRASE = {lua_string(templates['phrase'])}",
        f"TERM = {lua_string(templates['term'])}",
        f"TERM_SUGGESTED = {lua_string(templates['term_suggested'])}",
        "WORDS = {" + ", ".join(lua_string(w) for w in words) + "}",
    ]
    return "\n".join(header) + "\n" + LUA.replace("MARK", MARK)


def vocabulary(titles_terms: list[str], count: int = 200) -> list[str]:
    """Words worth misspelling: alphabetic, 5 letters or more (one changed letter leaves them
    recognisable to the suggester), at most `count`. Made-up ones when the index has none."""
    words = [w for w in titles_terms if re.fullmatch(r"[a-z]{5,}", w)][:count]
    if len(words) < 2:
        rng = random.Random(24)
        words = [
            "".join(rng.choice("bdfgklmnprstvz") + rng.choice("aeiou") for _ in range(4))
            for _ in range(50)
        ]
    return words


@dataclass
class Figures:
    requests: int  # HTTP requests wrk completed
    seconds: float
    errors: int  # connect, read, write, timeouts and non-2xx/3xx answers
    rps: float  # app-level requests a second: searches for Elasticsearch's search
    p50: float  # ms, per app-level request
    p99: float
    max: float
    rounds: float = 1.0  # Elasticsearch requests per app-level request

    def as_dict(self) -> dict:
        return {k: round(v, 2) if isinstance(v, float) else v for k, v in vars(self).items()}


def parse(output: str) -> Figures:
    """wrk's output with the line the script's done() prints."""
    line = next((ln for ln in output.splitlines() if ln.startswith(MARK)), None)
    if line is None:
        raise ValueError(f"no {MARK.strip()} line in wrk's output:\n{output[-2000:]}")
    data = json.loads(line.removeprefix(MARK))
    seconds = data["duration_us"] / 1e6
    errors = sum(
        int(data[k])
        for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts")
    )
    if "searches" in data:
        searches = int(data["searches"])
        return Figures(
            requests=int(data["requests"]),
            seconds=seconds,
            errors=errors,
            rps=searches / seconds if seconds else 0.0,
            p50=data["search_p50_us"] / 1000,
            p99=data["search_p99_us"] / 1000,
            max=data["search_max_us"] / 1000,
            rounds=int(data["requests"]) / searches if searches else 0.0,
        )
    return Figures(
        requests=int(data["requests"]),
        seconds=seconds,
        errors=errors,
        rps=int(data["requests"]) / seconds if seconds else 0.0,
        p50=data["p50_us"] / 1000,
        p99=data["p99_us"] / 1000,
        max=data["max_us"] / 1000,
    )


def command(script: str, url: str, connections: int, duration: int) -> list[str]:
    """One thread per connection: a thread's Lua state then pairs each answer with its request."""
    return [
        "wrk",
        f"--threads={connections}",
        f"--connections={connections}",
        f"--duration={duration}s",
        "--timeout=10s",
        f"--script={script}",
        url,
    ]


def run_local(script: str, url: str, connections: int, duration: int) -> Figures:
    directory = ROOT / "build" / "bench"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "wrk-web.lua"
    path.write_text(script)
    result = subprocess.run(
        command(str(path), url, connections, duration),
        capture_output=True,
        text=True,
        check=True,
    )
    return parse(result.stdout)


# -- on the search host --------------------------------------------------------------------------
class Refused(Exception):
    """The search host lacks wrk and may not be changed."""


def ensure_wrk(conn, name: str, disposable: bool) -> str:
    """wrk on the host: there already, or installed with apt on a disposable host only."""
    if conn.run("command -v wrk", warn=True, hide=True).ok:
        return "present"
    if not disposable:
        raise Refused(
            f"{name} has no wrk and its inventory does not set stackkit_disposable: true;"
            f" install wrk there yourself or leave the Elasticsearch figures out"
        )
    conn.sudo(
        "env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=120 wrk",
        hide=True,
    )
    return "installed"


TERMS_QUERY = {"size": 0, "aggs": {"words": {"terms": {"field": "title.terms", "size": 500}}}}
# Runs on the search host (Python is there for Ansible): the index's commonest title words.
TERMS_SCRIPT = """
import json, sys, urllib.request
url, body = sys.argv[1], sys.argv[2].encode()
request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
answer = json.load(urllib.request.urlopen(request, timeout=10))
print(json.dumps([b["key"] for b in answer["aggregations"]["words"]["buckets"]]))
"""


def title_words(conn, es_url: str, alias: str) -> list[str]:
    result = conn.run(
        shlex.join(
            ["python3", "-c", TERMS_SCRIPT, f"{es_url}/{alias}/_search", json.dumps(TERMS_QUERY)]
        ),
        hide=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_remote(conn, script: str, url: str, connections: int, duration: int) -> Figures:
    remote = conn.run("mktemp --suffix=.lua", hide=True).stdout.strip()
    try:
        conn.put(io.BytesIO(script.encode()), remote)
        result = conn.run(shlex.join(command(remote, url, connections, duration)), hide=True)
    finally:
        conn.run(f"rm -f {shlex.quote(remote)}", hide=True, warn=True)
    return parse(result.stdout)
