"""A checkpoint whose chat template is in chat_template.jinja (as current transformers
saves it) rather than in tokenizer_config.json."""

from __future__ import annotations

import json

import pytest

from lorafleet.dataplane.model.demo import write_tokenizer
from lorafleet.dataplane.server.tokenizer import ChatTemplateError, Tokenizer

MESSAGES = [{"role": "user", "content": "Hi"}]


@pytest.fixture
def checkpoint(tmp_path):
    """tokenizer.json and a tokenizer_config.json with no chat template."""
    write_tokenizer(tmp_path)
    config_path = tmp_path / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    del config["chat_template"]
    config_path.write_text(json.dumps(config))
    return tmp_path


def test_template_only_in_chat_template_jinja_is_used(checkpoint):
    (checkpoint / "chat_template.jinja").write_text(
        "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}[assistant] {% endif %}")
    tokenizer = Tokenizer.from_dir(checkpoint)
    assert tokenizer.render_chat(MESSAGES) == "[user] Hi\n[assistant] "


def test_chat_template_jinja_wins_over_tokenizer_config(checkpoint):
    config_path = checkpoint / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = "old {{ messages[0]['content'] }}"
    config_path.write_text(json.dumps(config))
    (checkpoint / "chat_template.jinja").write_text("new {{ messages[0]['content'] }}")
    assert Tokenizer.from_dir(checkpoint).render_chat(MESSAGES) == "new Hi"


def test_no_template_anywhere_still_says_so(checkpoint):
    with pytest.raises(ChatTemplateError, match="no chat template"):
        Tokenizer.from_dir(checkpoint).render_chat(MESSAGES)
