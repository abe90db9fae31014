"""The streaming client: one exact-length request to an OpenAI-compatible ``/v1/completions``.

Exact lengths without a tokenizer: the prompt is a list of token ids (random, seeded per request,
so no two requests share a prefix and prefix caching cannot shorten a prefill), and
``max_tokens = min_tokens = output_len`` with ``ignore_eos`` makes vLLM produce exactly
``output_len`` tokens.  The response is streamed (server-sent events); every chunk that carries a
choice is one token arrival (vLLM sends one chunk per token by default).

:func:`send_request` never raises for a server fault: a non-200 answer, a timeout, a dropped
stream or a refused connection becomes the record's ``status`` (see ``docs/measure.md``), so a
run keeps every request it sent.
"""
from __future__ import annotations

import asyncio
import json
import time
import zlib
from dataclasses import dataclass

import aiohttp
import numpy as np

STATUSES = ("ok", "short", "http_error", "timeout", "dropped", "connect_error", "bad_response", "interrupted",
            "client_error")


class BadResponse(Exception):
    """A streamed chunk that is not the JSON object an OpenAI-compatible server sends."""


def parse_chunk(data: bytes, n: int) -> dict:
    """The JSON object of the ``n``-th ``data:`` line; raises :class:`BadResponse` naming what it got."""
    try:
        chunk = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise BadResponse(f"chunk {n}: not UTF-8 ({exc.reason} at byte {exc.start}): {data[:80]!r}") from None
    except ValueError as exc:
        raise BadResponse(f"chunk {n}: not JSON ({exc}): {data[:80]!r}") from None
    if not isinstance(chunk, dict):
        raise BadResponse(f"chunk {n}: a JSON {type(chunk).__name__}, expected an object: {data[:80]!r}")
    if not isinstance(chunk.get("choices", []), list) or not isinstance(chunk.get("usage") or {}, dict):
        raise BadResponse(f"chunk {n}: 'choices' must be a list and 'usage' an object: {data[:80]!r}")
    return chunk


@dataclass(frozen=True)
class Clock:
    """Unix time from a monotonic clock: immune to NTP steps during a run, still joinable."""

    unix0: float
    mono0: float

    @classmethod
    def start(cls) -> Clock:
        return cls(time.time(), time.monotonic())

    def now(self) -> float:
        return self.unix0 + (time.monotonic() - self.mono0)


def prompt_token_ids(point_id: str, attempt: int, index: int, length: int, id_range: tuple[int, int],
                     seed: int) -> list[int]:
    """Seeded random token ids, different for every (point, attempt, request)."""
    rng = np.random.default_rng([seed, zlib.crc32(point_id.encode()), attempt, index])
    return rng.integers(id_range[0], id_range[1], size=length).tolist()


def completion_body(model: str, prompt: list[int], output_len: int, usage: bool = True) -> dict:
    body = {"model": model, "prompt": prompt, "max_tokens": output_len, "min_tokens": output_len,
            "ignore_eos": True, "temperature": 0.0, "stream": True}
    if usage:
        body["stream_options"] = {"include_usage": True}
    return body


async def send_request(session: aiohttp.ClientSession, url: str, body: dict, clock: Clock,
                       timeout_s: float, stall_s: float, record: dict) -> dict:
    """POST ``body`` to ``url`` + ``/v1/completions`` and fill ``record`` with what happened.

    Fields set: ``send_time``, ``first_token_time``, ``finish_time`` (Unix s), ``token_times``
    (s after ``send_time``, one per token chunk), ``output_tokens``, ``status``, ``http_status``,
    ``error``; from ``servesim serve`` also ``server_arrival_time`` and ``server_token_times``
    (simulated s).  ``timeout_s`` bounds the whole request, ``stall_s`` the silence between two chunks.
    """
    payload = json.dumps(body, separators=(",", ":")).encode()  # encoded before the clock starts
    record.update(send_time=clock.now(), first_token_time=None, finish_time=None, token_times=[],
                  output_tokens=0, usage_completion_tokens=None, status="connect_error", http_status=None,
                  error=None)
    times: list[float] = record["token_times"]
    t0 = record["send_time"]
    state = {"done": False}

    async def stream() -> None:
        async with session.post(url.rstrip("/") + "/v1/completions", data=payload,
                                headers={"Content-Type": "application/json"},
                                timeout=aiohttp.ClientTimeout(total=None, sock_read=stall_s)) as resp:
            record["http_status"] = resp.status
            if resp.status != 200:
                record["status"] = "http_error"
                record["error"] = (await resp.read())[:2000].decode("utf-8", errors="replace")[:500]
                return
            record["status"] = "dropped"  # until the stream ends properly
            n = 0
            async for raw in resp.content:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    state["done"] = True
                    return
                n += 1
                chunk = parse_chunk(data, n)
                if chunk.get("choices"):
                    now = clock.now()
                    if record["first_token_time"] is None:
                        record["first_token_time"] = now
                    times.append(round(now - t0, 6))
                    if "servesim_t" in chunk:  # servesim serve's simulated clock (absent from vLLM)
                        record.setdefault("server_token_times", []).append(chunk["servesim_t"])
                        if "servesim_arrival_t" in chunk:
                            record["server_arrival_time"] = chunk["servesim_arrival_t"]
                usage = chunk.get("usage")
                tokens = usage.get("completion_tokens") if usage else None
                if isinstance(tokens, int) and not isinstance(tokens, bool) and tokens >= 0:
                    record["usage_completion_tokens"] = tokens

    try:
        await asyncio.wait_for(stream(), timeout_s)
    except aiohttp.ServerTimeoutError:
        record["status"] = "timeout"
        record["error"] = f"no data for {stall_s:g} s"
    except asyncio.TimeoutError:
        record["status"] = "timeout"
        record["error"] = f"no complete response within {timeout_s:g} s"
    except aiohttp.ClientConnectorError as exc:
        record["status"] = "connect_error"
        record["error"] = str(exc)[:500]
    except BadResponse as exc:
        record["status"] = "bad_response"
        record["error"] = str(exc)[:500]
    except asyncio.CancelledError:  # the run is being stopped: keep what was measured, then stop
        record["status"] = "interrupted"
        record["error"] = "the harness was stopped while the request was in flight"
        record["finish_time"] = clock.now()
        record["output_tokens"] = record["usage_completion_tokens"] or len(times)
        raise
    except (aiohttp.ClientError, ConnectionError, OSError, ValueError) as exc:
        record["status"] = "dropped" if record["http_status"] else "connect_error"
        record["error"] = f"{type(exc).__name__}: {exc}"[:500]
    done = state["done"]
    record["finish_time"] = clock.now()
    record["output_tokens"] = record["usage_completion_tokens"] or len(times)
    if done:
        record["status"] = "ok" if record["output_tokens"] >= record.get("max_tokens", 0) else "short"
    elif record["status"] == "dropped" and record["error"] is None:
        record["error"] = "stream ended before [DONE]"
    return record
