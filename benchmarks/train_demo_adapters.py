"""Trains the three demo adapters for SmolLM2-135M-Instruct on the model's own answers.

    python -m benchmarks.train_demo_adapters --out dataplane/demo_adapters

1. data: the base model answers a few hundred generated questions (lorafleet's engine,
   greedy, float32); each answer is cut to its leading sentences and restyled by code
   (benchmarks/demo_data.py) into ALL CAPITALS, pirate speech and a JSON object;
2. training: one LoRA per style with peft on transformers, on the CPU, loss on the answer
   tokens only; the adapters differ in rank and targets on purpose (caps r8 on q,v;
   pirate r16 on all seven projections; json r32 on the MLP);
3. saving: float16 safetensors (half the bytes; lorafleet's loader reads F16), with
   base_model_name_or_path set to the name a worker reports for this model, then a check
   with lorafleet's own loader and a few held-out answers through lorafleet's engine.

Seeded; prints how long each part took and appends it to
benchmarks/results/train_demo_adapters.jsonl. Needs the dev extra (transformers, peft).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import random
import tempfile
import time

import torch

from benchmarks.demo_data import HELD_OUT, STYLES, first_sentences, make_questions
from benchmarks.results import append_rows
from lorafleet.dataplane.engine.params import SamplingParams
from lorafleet.dataplane.model.smollm import MODEL_NAME, ensure_model
from lorafleet.dataplane.runner.factory import create_engine
from lorafleet.dataplane.runner.kv_cache import KVCacheBudget
from lorafleet.dataplane.server.detokenize import Detokenizer
from lorafleet.dataplane.server.tokenizer import Tokenizer

ANSWER_TOKENS = 48


@dataclasses.dataclass(frozen=True)
class AdapterPlan:
    """How one demo adapter is trained."""

    rank: int
    targets: tuple[str, ...]
    learning_rate: float
    num_epochs: int


PLANS = {
    "caps": AdapterPlan(8, ("q_proj", "v_proj"), 2e-3, 3),
    "pirate": AdapterPlan(16, ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                               "down_proj"), 1e-3, 2),
    "json": AdapterPlan(32, ("gate_proj", "up_proj", "down_proj"), 1e-3, 2),
}


def generate_answers(model_dir: pathlib.Path, questions: list[str],
                     max_tokens: int = ANSWER_TOKENS) -> list[str]:
    """The base model's greedy answers, one chat turn each, all in one continuous batch."""
    engine = create_engine(model_dir, device="cpu", dtype="float32",
                           kv_cache=KVCacheBudget(num_bytes=512 << 20))
    tokenizer = Tokenizer.from_dir(model_dir)
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    detokenizers = []
    for i, question in enumerate(questions):
        prompt = tokenizer.encode_chat([{"role": "user", "content": question}])
        engine.add_request(str(i), prompt, params=params)
        detokenizers.append(Detokenizer(tokenizer, tuple(prompt), ()))
    texts = [""] * len(questions)
    while engine.has_unfinished():
        for out in engine.step():
            texts[int(out.request_id)] += detokenizers[int(out.request_id)].process(out).text
    return texts


def encode_examples(tokenizer: Tokenizer, pairs: list[tuple[str, str]]) -> list[tuple]:
    """(input ids, labels) per (question, answer): labels only on the answer and its EOS."""
    eos = tokenizer.eos_token_ids[0]
    examples = []
    for question, answer in pairs:
        prompt = tokenizer.encode_chat([{"role": "user", "content": question}])
        target = tokenizer.encode(answer, add_special_tokens=False) + [eos]
        examples.append((prompt + target, [-100] * len(prompt) + target))
    return examples


def _batches(examples: list[tuple], batch_size: int, rng: random.Random, pad_id: int):
    """Shuffled, right-padded batches of (input_ids, attention_mask, labels)."""
    order = list(range(len(examples)))
    rng.shuffle(order)
    for start in range(0, len(order), batch_size):
        chunk = [examples[i] for i in order[start:start + batch_size]]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.full((len(chunk), width), pad_id)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        labels = torch.full((len(chunk), width), -100)
        for row, (x, y) in enumerate(chunk):
            ids[row, :len(x)], mask[row, :len(x)], labels[row, :len(y)] = (
                torch.tensor(x), 1, torch.tensor(y))
        yield ids, mask, labels


def train_adapter(model_dir: pathlib.Path, examples: list[tuple], plan: AdapterPlan, *,
                  batch_size: int, seed: int):
    """A peft LoRA model trained on `examples`; returns (model, final mean loss)."""
    import peft
    import transformers

    torch.manual_seed(seed)
    base = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = peft.LoraConfig(r=plan.rank, lora_alpha=2 * plan.rank, lora_dropout=0.0,
                             target_modules=list(plan.targets), task_type="CAUSAL_LM")
    model = peft.get_peft_model(base, config)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=plan.learning_rate, weight_decay=0.0)
    num_steps = plan.num_epochs * -(-len(examples) // batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 - s / num_steps)
    rng, losses = random.Random(seed), []
    for epoch in range(plan.num_epochs):
        losses = []
        for ids, mask, labels in _batches(examples, batch_size, rng, pad_id=0):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            losses.append(loss.item())
        print(f"  epoch {epoch + 1}/{plan.num_epochs}: mean loss {sum(losses) / len(losses):.3f}",
              flush=True)
    return model, sum(losses) / len(losses)


def save_adapter(model, out_dir: pathlib.Path) -> pathlib.Path:
    """adapter_config.json and float16 adapter_model.safetensors in `out_dir`."""
    from safetensors.torch import load_file, save_file

    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        tensors = load_file(f"{tmp}/adapter_model.safetensors")
        config = json.loads(pathlib.Path(tmp, "adapter_config.json").read_text())
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(torch.float16).contiguous() for k, v in sorted(tensors.items())},
              str(out_dir / "adapter_model.safetensors"), metadata={"format": "pt"})
    config["base_model_name_or_path"] = MODEL_NAME
    (out_dir / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    return out_dir


def check_adapters(model_dir: pathlib.Path, adapters: dict[str, pathlib.Path],
                   max_tokens: int = ANSWER_TOKENS) -> dict[str, dict[str, str]]:
    """Held-out answers per adapter (None: the base model), through lorafleet's engine."""
    from lorafleet.dataplane.config.worker_config import WorkerConfig
    from lorafleet.dataplane.engine_process.build import build_engine
    from lorafleet.dataplane.engine_process.messages import AdapterSource

    # Adapter slots (one per adapter, rank 32 at most) come out of the KV budget first.
    parts = build_engine(WorkerConfig(model_dir, device="cpu", dtype="float32",
                                      max_loras=len(adapters), max_lora_rank=32,
                                      kv_cache_bytes=384 << 20, worker_id="train"))
    engine, digests = parts.engine, {None: None}
    for name, path in adapters.items():
        digests[name] = parts.files.validate(str(path)).digest
        parts.host.add_source(AdapterSource(f"demo/{name}@1", str(path), digests[name]))
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    answers = {name: dict.fromkeys(HELD_OUT, "") for name in digests}
    tokenizer, detokenizers = Tokenizer.from_dir(model_dir), {}
    for name, digest in digests.items():
        for question in HELD_OUT:
            prompt = tokenizer.encode_chat([{"role": "user", "content": question}])
            engine.add_request(f"{name}|{question}", prompt, params=params, adapter=digest)
            detokenizers[f"{name}|{question}"] = Detokenizer(tokenizer, tuple(prompt), ())
    while engine.has_unfinished():
        for out in engine.step():
            name, question = out.request_id.split("|", 1)
            text = detokenizers[out.request_id].process(out).text
            answers[None if name == "None" else name][question] += text
        time.sleep(0.001)  # lets a background adapter load finish
    parts.close()
    return answers


def make_pairs(model_dir: pathlib.Path, num_questions: int, seed: int,
               answers_path: pathlib.Path | None) -> list[tuple[str, str]]:
    """(question, the base model's leading sentences) pairs; read from `answers_path`
    when it exists (a rerun need not ask again), else generated and written there."""
    if answers_path is not None and answers_path.exists():
        return [tuple(json.loads(line)) for line in answers_path.read_text().splitlines()]
    questions = make_questions(num_questions, seed)
    pairs = [(q, first_sentences(a)) for q, a in zip(questions, generate_answers(
        model_dir, questions), strict=True)]
    pairs = [(q, a) for q, a in pairs if a]
    if answers_path is not None:
        answers_path.write_text("".join(json.dumps(pair) + "\n" for pair in pairs))
    return pairs


def main(argv: list[str] | None = None) -> int:
    """Makes the data, trains every adapter named, saves and checks them."""
    args = _parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    timings, started = {}, time.perf_counter()
    model_dir = ensure_model()
    timings["model"] = time.perf_counter() - started
    started = time.perf_counter()
    pairs = make_pairs(model_dir, args.num_questions, args.seed, args.answers)
    timings["data"] = time.perf_counter() - started
    print(f"data: {len(pairs)} answers in {timings['data']:.0f} s", flush=True)
    tokenizer = Tokenizer.from_dir(model_dir)
    saved = {}
    for name in args.adapters:
        started, plan = time.perf_counter(), PLANS[name]
        if args.num_epochs is not None:
            plan = dataclasses.replace(plan, num_epochs=args.num_epochs)
        print(f"{name}: r{plan.rank} on {','.join(plan.targets)}", flush=True)
        examples = encode_examples(tokenizer, [(q, STYLES[name](a)) for q, a in pairs])
        model, loss = train_adapter(model_dir, examples, plan, batch_size=args.batch_size,
                                    seed=args.seed)
        saved[name] = save_adapter(model, args.out / name)
        timings[name] = time.perf_counter() - started
        print(f"{name}: trained in {timings[name]:.0f} s, final loss {loss:.3f}", flush=True)
    _report(model_dir, saved, timings, args, len(pairs))
    return 0


def _report(model_dir, saved, timings, args, num_examples) -> None:
    """Prints the timing table and held-out answers; appends the timings as JSON lines."""
    for name, by_question in check_adapters(model_dir, saved).items():
        for question, answer in by_question.items():
            print(f"[{name or 'base'}] {question} -> {answer!r}")
    print(f"{'part':<10}{'seconds':>10}")
    for part, seconds in timings.items():
        print(f"{part:<10}{seconds:>10.1f}")
    append_rows("train_demo_adapters", [{"part": p, "seconds": round(s, 1)}
                                        for p, s in timings.items()],
                threads=args.threads, num_examples=num_examples, seed=args.seed)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("dataplane/demo_adapters"),
                        help="folder that gets one subfolder per adapter")
    parser.add_argument("--adapters", nargs="+", choices=list(PLANS), default=list(PLANS),
                        help="which adapters to train (default: all)")
    parser.add_argument("--num-questions", type=int, default=300)
    parser.add_argument("--answers", type=pathlib.Path, default=None,
                        help="JSON-lines file of the base model's answers: read if it "
                             "exists, else written after they are generated")
    parser.add_argument("--num-epochs", type=int, default=None,
                        help="epochs for every adapter (default: each adapter's own)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    return parser


if __name__ == "__main__":
    raise SystemExit(main())
