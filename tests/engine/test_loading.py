"""Checkpoints, dtypes, KV cache sizing and request validation."""

from __future__ import annotations

import asyncio
import json
import shutil

import pytest
import torch

from lorafleet.dataplane.engine.outputs import ErrorKind
from lorafleet.dataplane.engine.params import SamplingParams
from lorafleet.dataplane.engine.prompt_rules import InvalidRequestError
from lorafleet.dataplane.engine.request import FinishReason
from lorafleet.dataplane.model.config import ModelConfig
from lorafleet.dataplane.runner.factory import create_engine, eos_token_ids
from lorafleet.dataplane.runner.kv_cache import (
    KVCacheBudget,
    KVCacheSizeError,
    bytes_per_block,
    count_kv_blocks,
)
from lorafleet.dataplane.server.frontend import Frontend
from lorafleet.dataplane.server.requests import PromptInput
from lorafleet.dataplane.server.tokenizer import Tokenizer
from tests.engine.conftest import make_prompts
from tests.engine.drive import GREEDY, make_engine, run_all, tokens_of


def test_sharded_checkpoint_loads_and_matches_transformers(checkpoints, hf_greedy):
    directory = checkpoints("llama-gqa", max_shard_size="40KB")
    assert (directory / "model.safetensors.index.json").exists()
    assert len(list(directory.glob("model-*.safetensors"))) > 1
    prompts = make_prompts((4, 21))
    engine = make_engine(directory)
    for i, prompt in enumerate(prompts):
        engine.add_request(f"r{i}", prompt, params=GREEDY)
    outputs = run_all(engine)
    assert [tokens_of(outputs[f"r{i}"]) for i in range(2)] == hf_greedy("llama-gqa", prompts)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_runs_close_to_transformers(dtype, checkpoints):
    import transformers

    directory = checkpoints("qwen2-bias")
    engine = make_engine(directory, dtype=dtype)
    assert engine.runner.inner.kv_cache.dtype == getattr(torch, dtype)
    prompt = make_prompts((13,))[0]
    engine.add_request("r", prompt, params=SamplingParams(max_tokens=8, temperature=0.0,
                                                          logprobs=0, ignore_eos=True))
    outputs = run_all(engine)["r"]
    assert len(tokens_of(outputs)) == 8
    model = transformers.AutoModelForCausalLM.from_pretrained(
        directory, dtype=getattr(torch, dtype))
    logits = model(torch.tensor([prompt])).logits[0, -1].float()
    first = outputs[0].logprobs[0]
    assert first.logprob == pytest.approx(torch.log_softmax(logits, -1)[first.token_id].item(),
                                          abs=0.05)


def test_kv_blocks_come_from_the_budget_minus_reserved_memory(checkpoints):
    directory = checkpoints("llama-gqa")
    config = ModelConfig.from_dir(directory)
    block_bytes = bytes_per_block(config, 16, torch.float32)
    seen = []

    def reserve(model):
        seen.append(model.weights.embed.shape)  # weights are placed before the hook runs
        return 10 * block_bytes

    engine = create_engine(directory, device="cpu", dtype="float32", reserve_memory=reserve,
                           kv_cache=KVCacheBudget(num_bytes=50 * block_bytes))
    assert seen == [(config.vocab_size, config.hidden_size)]
    assert engine.allocator.num_blocks == 40
    assert count_kv_blocks(KVCacheBudget(fraction=0.5), 100 * block_bytes, 0, block_bytes) == 50
    with pytest.raises(KVCacheSizeError, match="holds no block"):
        count_kv_blocks(KVCacheBudget(num_bytes=block_bytes), None, 1, block_bytes)


def test_requests_that_cannot_be_served_are_refused_clearly(checkpoints):
    """Adding is one-way: a refusal is the request's final output, with the reason."""
    engine = make_engine(checkpoints("llama-gqa"), num_blocks=8)
    engine.add_request("a", [1, 999999])
    engine.add_request("b", [5] * 20, params=SamplingParams(max_tokens=40))
    engine.add_request("d", [5])
    engine.add_request("d", [6])
    refused = [out for out in engine.step() if out.error_kind is ErrorKind.INVALID_REQUEST]
    assert [(out.request_id, out.finish_reason) for out in refused] == [
        ("a", FinishReason.ERROR), ("b", FinishReason.ERROR), ("d", FinishReason.ERROR)]
    assert "outside" in refused[0].error and "exceeds the KV cache" in refused[1].error
    assert "already in use" in refused[2].error
    assert run_all(engine)["d"][-1].finish_reason is not FinishReason.ERROR  # the first d runs


def test_the_frontend_refuses_by_the_same_rules_before_the_engine(checkpoints):
    engine = make_engine(checkpoints("llama-gqa"), num_blocks=8)
    frontend = Frontend(Tokenizer.from_dir(checkpoints("llama-gqa")), engine.limits)
    with pytest.raises(InvalidRequestError, match="exceeds the KV cache"):
        asyncio.run(frontend.token_ids(PromptInput(token_ids=(5,) * 20),
                                       SamplingParams(max_tokens=13)))
    with pytest.raises(InvalidRequestError, match="outside"):
        asyncio.run(frontend.token_ids(PromptInput(token_ids=(1, 999999)), SamplingParams()))
    frontend.close()


def test_chat_and_text_prompts_are_tokenized_by_the_frontend(checkpoints):
    engine = make_engine(checkpoints("llama-tied"))
    tokenizer = Tokenizer.from_dir(checkpoints("llama-tied"))
    frontend = Frontend(tokenizer, engine.limits)
    params = SamplingParams(max_tokens=4, ignore_eos=True)
    chat = ({"role": "user", "content": "Hello world!"},)
    chat_ids = asyncio.run(frontend.token_ids(PromptInput(messages=chat), params))
    text_ids = asyncio.run(frontend.token_ids(PromptInput(text="The quick brown fox"), params))
    frontend.close()
    assert chat_ids == tuple(tokenizer.encode_chat(list(chat)))
    assert text_ids == tuple(tokenizer.encode("The quick brown fox"))
    engine.add_request("chat", chat_ids, params=params)
    engine.add_request("text", text_ids, params=params)
    outputs = run_all(engine)
    assert outputs["chat"][-1].usage.num_prompt_tokens == len(chat_ids)
    assert all(len(tokens_of(o)) == 4 for o in outputs.values())


def test_eos_ids_read_without_a_tokenizer_equal_the_tokenizers(checkpoints, tmp_path):
    """The engine loads no tokenizer: its EOS ids come from the checkpoint's JSON files,
    and equal what the tokenizer reports, also when tokenizer_config.json names another
    EOS token than config.json."""
    directory = shutil.copytree(checkpoints("llama-gqa"), tmp_path / "model")
    config = ModelConfig.from_dir(directory)
    assert eos_token_ids(directory, config) == Tokenizer.from_dir(
        directory, eos_token_ids=config.eos_token_ids).eos_token_ids
    path = directory / "tokenizer_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "eos_token": "<|user|>"}))
    ids = eos_token_ids(directory, config)
    assert ids == Tokenizer.from_dir(directory, eos_token_ids=config.eos_token_ids).eos_token_ids
    assert len(ids) == 2 and ids[0] in config.eos_token_ids
