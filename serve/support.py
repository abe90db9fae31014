"""What ``servesim serve`` needs besides its handlers: options, token counting, EOS lengths,
vLLM's access-log and periodic stats lines.

* :class:`ServeOptions` holds the server's settings (the CLI flags), validated.
* Token counting without a tokenizer: token ids count one each, text one token per 4 UTF-8 bytes,
  chat messages their contents plus 4 template tokens each (:func:`count_prompt_tokens`,
  :func:`count_chat_tokens`); :func:`pseudo_token_ids` gives the ids ``/tokenize`` answers.
* :class:`EosLengths` draws the length at which a request without ``max_tokens`` stops, as a
  real model stops at its end-of-sequence token: from ShareGPT's output lengths (the shared
  ``traces/sharegpt_lengths_llama2.csv``) or a :class:`~servesim.sim.lengths.LengthDist`, one
  seeded stream, in arrival order.
* :class:`AccessLogger` prints uvicorn's line, ``INFO:     127.0.0.1:53412 - "POST
  /v1/completions HTTP/1.1" 200 OK``; :func:`stats_line` vLLM's ``LoggingStatLogger`` line.
"""
from __future__ import annotations

import math
import sys
import zlib
from dataclasses import dataclass
from http import HTTPStatus

import numpy as np
from aiohttp.abc import AbstractAccessLogger

from ..sim.data_paths import find_shared_data
from ..sim.lengths import LengthDist
from ..sim.traces import read_length_pairs
from .openai_protocol import ChatMessage


@dataclass(frozen=True)
class ServeOptions:
    """Settings of one server.  ``speed`` is simulated seconds per wall second."""

    speed: float = 1.0
    served_model_name: str = "model"
    api_keys: tuple[str, ...] = ()
    output_len_dist: str = "sharegpt"   # EOS-driven lengths of requests without max_tokens
    seed: int = 0
    access_log: bool = True
    log_stats: bool = True
    log_stats_interval_s: float = 10.0  # wall seconds, vLLM's VLLM_LOG_STATS_INTERVAL
    stream_write_timeout_s: float = 30.0  # a client that reads nothing this long is dropped
    keepalive_timeout_s: float = 5.0      # uvicorn's (and so vLLM's) timeout_keep_alive

    def __post_init__(self) -> None:
        if not (self.speed > 0 and math.isfinite(self.speed)):
            raise ValueError(f"--speed must be a positive finite factor (got {self.speed})")
        for name in ("log_stats_interval_s", "stream_write_timeout_s", "keepalive_timeout_s"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be > 0 s (got {value})")


def count_prompt_tokens(prompt: object) -> int:
    """Tokens of a validated completions ``prompt``: ids count one each, text one per 4 UTF-8
    bytes; a batch must hold exactly one prompt.  Raises ``ValueError`` naming the problem."""
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (list, str)):
        if len(prompt) != 1:
            raise ValueError(f"servesim serve takes one prompt per request, got a batch of {len(prompt)}")
        prompt = prompt[0]
    if isinstance(prompt, list):
        return len(prompt)
    if isinstance(prompt, str):
        return math.ceil(len(prompt.encode()) / 4)
    raise ValueError("prompt must be a string, a list of token ids, or a batch of one of those")


def max_token_id(prompt: object) -> int:
    """The largest token id of a token-id prompt (-1 for text)."""
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], list):
        prompt = prompt[0]
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
        return max(prompt)
    return -1


def _content_text(message: ChatMessage) -> str:
    content = message.content
    if isinstance(content, list):  # [{"type": "text", "text": ...}]
        return "".join(str(part.get("text", "")) for part in content)
    return content or ""


def count_chat_tokens(messages: list[ChatMessage]) -> int:
    """Chat prompt tokens: the contents at 4 bytes a token, plus 4 template tokens per message."""
    return sum(math.ceil(len(_content_text(m).encode()) / 4) + 4 for m in messages)


def pseudo_token_ids(text: str, vocab_size: int) -> list[int]:
    """Ids for ``/tokenize`` without a tokenizer: one per 4-byte piece, a hash of it in the vocabulary."""
    data = text.encode()
    return [zlib.crc32(data[i:i + 4]) % vocab_size for i in range(0, len(data), 4)]


class EosLengths:
    """Output lengths at which requests without ``max_tokens`` stop (a model's EOS), drawn from
    ``dist``: ``sharegpt`` (ShareGPT output lengths) or a LengthDist text form such as
    ``lognormal:250:1.0``.  One generator seeded by ``seed``; draws happen in request order."""

    def __init__(self, dist: str, seed: int = 0) -> None:
        self.dist = dist
        self.rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])
        self.table: np.ndarray | None = None
        self.length_dist: LengthDist | None = None
        self.note = ""
        if dist == "sharegpt":
            try:
                self.table = read_length_pairs(find_shared_data("traces/sharegpt_lengths_llama2.csv"))[1]
            except FileNotFoundError as exc:
                self.note = (f"no ShareGPT length table ({exc}); requests without max_tokens run to "
                             "max_model_len (pass --output-len-dist, e.g. lognormal:250:1.0)")
        else:
            self.length_dist = LengthDist.parse(dist)
            self.length_dist.sample(1, np.random.default_rng(0))  # fails now for impossible params

    def draw(self) -> int | None:
        """The next EOS length, or None when no distribution is available."""
        if self.table is not None:
            return int(self.table[self.rng.integers(self.table.size)])
        if self.length_dist is not None:
            return int(self.length_dist.sample(1, self.rng)[0])
        return None


class AccessLogger(AbstractAccessLogger):
    """uvicorn's access line, which vLLM's server prints for every request."""

    def log(self, request, response, time: float) -> None:  # noqa: A002 (aiohttp's signature)
        peer = request.transport.get_extra_info("peername") if request.transport else None
        host, port = (peer[0], peer[1]) if peer else ("-", 0)
        try:
            phrase = HTTPStatus(response.status).phrase
        except ValueError:
            phrase = ""
        version = f"{request.version.major}.{request.version.minor}"
        print(f'INFO:     {host}:{port} - "{request.method} {request.path_qs} HTTP/{version}" '
              f"{response.status} {phrase}", flush=True)


def stats_line(prompt_tps: float, generation_tps: float, state: dict, prefix_hit_rate: float) -> str:
    """vLLM v1's ``LoggingStatLogger`` line (throughputs per simulated second)."""
    return (f"INFO Engine 000: Avg prompt throughput: {prompt_tps:.1f} tokens/s, Avg generation throughput: "
            f"{generation_tps:.1f} tokens/s, Running: {state['running']} reqs, Waiting: {state['waiting']} reqs, "
            f"GPU KV cache usage: {100 * state['kv_usage']:.1f}%, Prefix cache hit rate: {100 * prefix_hit_rate:.1f}%")


def log(line: str) -> None:
    print(line, file=sys.stdout, flush=True)


def raise_fd_limit(target: int = 65536) -> int:
    """Raise the soft open-files limit towards ``target`` (vLLM's ``set_ulimit``); returns the limit."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = target if hard == resource.RLIM_INFINITY else min(target, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    return soft


class QuietAcceptErrors:
    """A loop exception handler that reports ``accept()`` failing for lack of file descriptors once
    per ``interval_s`` with a count, instead of asyncio's traceback per attempt (hundreds a
    second when the fd limit is reached).  Everything else goes to the default handler."""

    def __init__(self, fd_limit: int, interval_s: float = 10.0) -> None:
        self.fd_limit, self.interval_s = fd_limit, interval_s
        self.count, self.last = 0, -math.inf

    def __call__(self, loop, context: dict) -> None:
        message = str(context.get("message", ""))
        if self._is_retry_after_close(context):
            return  # an accept retry that asyncio scheduled fired after the listening socket closed
        if not message.startswith("socket.accept() out of system resource"):
            loop.default_exception_handler(context)
            return
        self.count += 1
        now = loop.time()
        if now - self.last >= self.interval_s:
            exc = context.get("exception")
            log(f"WARNING cannot accept connections: {getattr(exc, 'strerror', exc)} (open-files limit "
                f"{self.fd_limit}); {self.count} refusal(s) since the last warning; raise `ulimit -n`")
            self.count, self.last = 0, now

    @staticmethod
    def _is_retry_after_close(context: dict) -> bool:
        """After a refused ``accept()``, asyncio re-arms the listening socket one second later
        (``BaseSelectorEventLoop._start_serving`` by ``call_later``), once per refusal; if the server
        shut down meanwhile the socket's fd is -1 and each retry raises ``ValueError: Invalid file
        descriptor: -1``: a traceback per refusal at shutdown, about nothing."""
        callback = getattr(context.get("handle"), "_callback", None)
        return (isinstance(context.get("exception"), ValueError)
                and getattr(callback, "__name__", "") == "_start_serving")


__all__ = ["AccessLogger", "EosLengths", "ServeOptions", "count_chat_tokens", "count_prompt_tokens", "log",
           "max_token_id", "pseudo_token_ids", "stats_line"]
