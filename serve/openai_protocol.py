"""The OpenAI request bodies ``servesim serve`` accepts, as pydantic models after vLLM's own.

vLLM validates requests with pydantic models (``vllm/entrypoints/openai/completion/protocol.py``,
``chat_completion/protocol.py``, ``serve/tokenize/protocol.py``); these are the subset of their
fields that change what the simulator does, with vLLM's types and defaults, so a body vLLM
refuses is refused here with a located error (HTTP 400, ``param`` naming the field) before
anything is submitted.  Fields servesim ignores are accepted, as vLLM accepts unknown fields.

Errors use vLLM's body ``{"error": {"message", "type", "param", "code"}}`` (:func:`error_body`):
type ``Bad Request`` for a body that fails validation (vLLM's ``validation_exception_handler``),
``BadRequestError`` / ``NotFoundError`` for what the serving layer refuses.
"""
from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

TokenId = Annotated[int, Field(ge=0)]


class OpenAIBaseModel(BaseModel):
    """Unknown fields are kept and ignored (vLLM logs and ignores them too)."""

    model_config = ConfigDict(extra="allow")


class StreamOptions(OpenAIBaseModel):
    include_usage: bool | None = False
    continuous_usage_stats: bool | None = False


class _Generation(OpenAIBaseModel):
    """What completions and chat share."""

    model: str | None = None
    n: int = 1
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False
    min_tokens: int = Field(0, ge=0)
    temperature: float | None = None
    seed: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _stream_options_need_stream(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("stream_options") and not data.get("stream"):
            raise ValueError("Stream options can only be defined when `stream=True`.")
        return data

    @property
    def include_usage(self) -> tuple[bool, bool]:
        """(usage chunk at the end, usage on every chunk), as vLLM's ``should_include_usage``."""
        opts = self.stream_options
        usage = bool(opts and opts.include_usage)
        return usage, usage and bool(opts and opts.continuous_usage_stats)


class CompletionRequest(_Generation):
    prompt: list[TokenId] | list[list[TokenId]] | str | list[str] | None = None
    max_tokens: int | None = 16

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            if data.get("max_tokens") is None:  # vLLM's normalize_null_max_tokens
                data = {**data, "max_tokens": 16}
            prompt = data.get("prompt")
            if prompt is None or prompt == "":
                raise ValueError("Either prompt or prompt_embeds must be provided and non-empty.")
        return data


class ChatMessage(OpenAIBaseModel):
    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatCompletionRequest(_Generation):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None


class TokenizeRequest(OpenAIBaseModel):
    """``/tokenize``: a completion ``prompt`` or chat ``messages``."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None

    @model_validator(mode="after")
    def _one_of(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give either prompt or messages")
        return self


class DetokenizeRequest(OpenAIBaseModel):
    model: str | None = None
    tokens: list[Annotated[int, Field(ge=0, le=2**63 - 1)]]


def error_body(message: str, err_type: str = "BadRequestError", code: int = 400,
               param: str | None = None) -> dict:
    """vLLM's ``ErrorResponse`` as JSON."""
    return {"error": {"message": message, "type": err_type, "param": param, "code": code}}


_INTERNAL = frozenset({"function-wrap", "function-after", "function-before", "function-plain", "json-or-python",
                       "lax-or-strict", "chain", "default", "nullable", "tagged-union", "union", "str", "int",
                       "float", "bool", "list", "dict", "none"})


def clean_loc(loc: tuple) -> str:
    """A pydantic error location as a dotted field path without pydantic's union-branch markers
    (``prompt.list[constrained-int].1`` -> ``prompt.1``), as vLLM's ``clean_loc_for_param``."""
    parts = [str(p) for p in loc if not any(c in str(p) for c in "[](){}") and str(p).lower() not in _INTERNAL]
    return ".".join(parts) if parts else ".".join(str(p) for p in loc)


def validation_error_body(exc: ValidationError) -> dict:
    """A pydantic error as vLLM's ``validation_exception_handler`` answers it: 400, the location
    of the first error as ``param``, every error in the message."""
    errors = exc.errors(include_url=False)
    lines = []
    for err in errors:
        loc = clean_loc(err["loc"]) or "body"
        lines.append(f"{loc}: {err['msg']} (got {err.get('input')!r:.80})")
    label = "error" if len(errors) == 1 else "errors"
    param = clean_loc(errors[0]["loc"]) if errors and errors[0]["loc"] else None
    return error_body(f"{len(errors)} validation {label}: " + "; ".join(lines), "Bad Request", 400, param)


__all__ = ["ChatCompletionRequest", "ChatMessage", "CompletionRequest", "DetokenizeRequest", "StreamOptions",
           "TokenizeRequest", "ValidationError", "error_body", "validation_error_body"]
