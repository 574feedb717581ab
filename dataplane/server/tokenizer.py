"""A checkpoint's tokenizer: tokenizer.json via `tokenizers`, chat template via jinja2."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping, Sequence

import jinja2
import jinja2.sandbox
from tokenizers import Tokenizer as _HFTokenizer


class ChatTemplateError(ValueError):
    """The checkpoint has no chat template, or rendering it failed."""

    status_code_name = "FAILED_PRECONDITION"


class Tokenizer:
    """Encodes text, decodes tokens and renders chat messages for one checkpoint."""

    def __init__(
        self, tokenizer: _HFTokenizer, *, chat_template: str | None = None,
        special_tokens: Mapping[str, str] | None = None, eos_token_ids: Sequence[int] = (),
    ) -> None:
        self._tokenizer = tokenizer
        self.chat_template = chat_template
        self._special_tokens = dict(special_tokens or {})
        self.eos_token_ids = tuple(eos_token_ids)

    @classmethod
    def from_dir(
        cls, model_dir: str | pathlib.Path, eos_token_ids: Sequence[int] = ()
    ) -> Tokenizer:
        """Reads tokenizer.json and, when present, tokenizer_config.json and
        chat_template.jinja of a checkpoint."""
        model_dir = pathlib.Path(model_dir)
        path = model_dir / "tokenizer.json"
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: the checkpoint has no tokenizer.json")
        tokenizer = _HFTokenizer.from_file(str(path))
        config_path = model_dir / "tokenizer_config.json"
        config = json.loads(config_path.read_text()) if config_path.exists() else {}
        special = {k: _token_text(config.get(k)) for k in ("bos_token", "eos_token")}
        eos = list(eos_token_ids)
        eos_id = tokenizer.token_to_id(special["eos_token"]) if special["eos_token"] else None
        if eos_id is not None and eos_id not in eos:
            eos.append(eos_id)
        return cls(tokenizer, chat_template=_chat_template(model_dir, config),
                   special_tokens={k: v for k, v in special.items() if v}, eos_token_ids=eos)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text` (with BOS etc. when the tokenizer's post-processor adds them)."""
        return self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, token_ids: list[int]) -> str:
        """Text of `token_ids`, special tokens skipped."""
        return self._tokenizer.decode(token_ids, skip_special_tokens=True)

    def render_chat(self, messages: Sequence[Mapping[str, str]]) -> str:
        """The conversation as text, ending with the assistant's turn prompt."""
        if not self.chat_template:
            raise ChatTemplateError("this checkpoint has no chat template; send a text prompt")
        for i, message in enumerate(messages):
            if not {"role", "content"} <= set(message):
                raise ChatTemplateError(f"message {i} needs 'role' and 'content'")
        env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise_template_error
        try:
            template = env.from_string(self.chat_template)
            return template.render(messages=list(messages), add_generation_prompt=True,
                                   **self._special_tokens)
        except jinja2.TemplateError as exc:
            raise ChatTemplateError(f"the chat template failed: {exc}") from exc

    def encode_chat(self, messages: Sequence[Mapping[str, str]]) -> list[int]:
        """Token ids of the rendered conversation (the template adds any special tokens)."""
        return self.encode(self.render_chat(messages), add_special_tokens=False)


def _chat_template(model_dir: pathlib.Path, config: dict) -> str | None:
    """chat_template.jinja, where current transformers saves it, else tokenizer_config.json's.

    transformers gives the .jinja file precedence when both exist; so does this.
    """
    path = model_dir / "chat_template.jinja"
    return path.read_text() if path.exists() else config.get("chat_template")


def _token_text(token) -> str | None:
    """A special token from tokenizer_config.json: a string or an AddedToken dict."""
    if isinstance(token, dict):
        return token.get("content")
    return token


def _raise_template_error(message: str) -> None:
    raise ChatTemplateError(message)
