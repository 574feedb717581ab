"""What the benchmark sends: seeded requests with adapter popularity, lengths and arrivals.

Everything here is pure Python and deterministic for a seed, so two runs (or the server
and the in-process engine) see exactly the same requests.
"""

from __future__ import annotations

import argparse
import bisect
import dataclasses
import itertools
import math
import random
from collections.abc import Iterator

FIRST_TOKEN_ID = 10  # below are the tokenizer's special tokens


@dataclasses.dataclass(frozen=True)
class Lengths:
    """A length distribution: fixed N, uniform in [low, high], or lognormal(median, sigma)
    clipped to [1, high]."""

    kind: str
    a: float
    b: float = 0.0

    def sample(self, rng: random.Random, high: int) -> int:
        """One length, at least 1 and at most `high`."""
        if self.kind == "fixed":
            value = self.a
        elif self.kind == "uniform":
            value = rng.randint(int(self.a), int(self.b))
        else:
            value = round(rng.lognormvariate(math.log(self.a), self.b))
        return max(1, min(int(value), high))


def parse_lengths(text: str) -> Lengths:
    """'64' or 'fixed:64', 'uniform:16:256', 'lognormal:128:0.8' (median, sigma)."""
    kind, _, rest = text.partition(":") if ":" in text else ("fixed", "", text)
    try:
        numbers = [float(x) for x in rest.split(":")]
    except ValueError:
        numbers = []
    arity = {"fixed": 1, "uniform": 2, "lognormal": 2}
    if kind not in arity or len(numbers) != arity[kind] or min(numbers) <= 0:
        raise argparse.ArgumentTypeError(
            f"expected fixed:N, uniform:LOW:HIGH or lognormal:MEDIAN:SIGMA (positive), got {text!r}")
    if kind == "uniform" and numbers[0] > numbers[1]:
        raise argparse.ArgumentTypeError(f"uniform:LOW:HIGH needs LOW <= HIGH, got {text!r}")
    return Lengths(kind, *numbers)


@dataclasses.dataclass(frozen=True)
class Popularity:
    """Which adapter each request names.

    zipf: adapter k (0-based) has weight 1/(k+1)^alpha (alpha 0 is uniform); cycle: request i
    takes adapter i mod N, so any window of N consecutive requests holds N distinct ones.
    A `base_share` of requests (drawn first) names no adapter.
    """

    adapters: tuple[str, ...]
    kind: str = "zipf"
    alpha: float = 1.0
    base_share: float = 0.0

    def picker(self, rng: random.Random):
        """A function from request index to adapter name ('' for the base model)."""
        if not self.adapters:
            return lambda index: ""
        weights = [1.0 / (k + 1) ** self.alpha for k in range(len(self.adapters))]
        cumulative = list(itertools.accumulate(weights))

        def pick(index: int) -> str:
            if self.base_share and rng.random() < self.base_share:
                return ""
            if self.kind == "cycle":
                return self.adapters[index % len(self.adapters)]
            spot = rng.random() * cumulative[-1]
            return self.adapters[bisect.bisect_right(cumulative, spot)]
        return pick


@dataclasses.dataclass(frozen=True)
class RequestSpec:
    """One request: adapter ('' = base model), prompt ids, output length, and for open
    loop its send time in seconds after the start."""

    index: int
    adapter: str
    prompt: tuple[int, ...]
    max_tokens: int
    send_at: float | None = None

    @property
    def tenant(self) -> str:
        """The adapter name's prefix before '/', or 'base'."""
        return self.adapter.split("/", 1)[0] if self.adapter else "base"


@dataclasses.dataclass(frozen=True)
class WorkloadSpec:
    """What to send: popularity, lengths, Poisson `rate` in req/s (None: closed loop), and
    at most `num_requests` requests (None: as many as the run asks for)."""

    popularity: Popularity
    prompt_lengths: Lengths
    output_lengths: Lengths
    vocab: int
    num_requests: int | None = None
    max_len: int = 2048
    rate: float | None = None
    seed: int = 0


def iter_requests(spec: WorkloadSpec) -> Iterator[RequestSpec]:
    """The seeded requests, lazily; output lengths are cut so prompt + output fit `max_len`."""
    rng = random.Random(spec.seed)
    pick = spec.popularity.picker(random.Random(spec.seed + 1))
    clock, top = 0.0, spec.vocab - 1
    counter = itertools.count() if spec.num_requests is None else range(spec.num_requests)
    for index in counter:
        num_prompt = spec.prompt_lengths.sample(rng, spec.max_len - 1)
        num_output = spec.output_lengths.sample(rng, spec.max_len - num_prompt)
        prompt = tuple(rng.randint(FIRST_TOKEN_ID, top) for _ in range(num_prompt))
        send_at = None
        if spec.rate is not None:
            clock += rng.expovariate(spec.rate)
            send_at = clock
        yield RequestSpec(index, pick(index), prompt, num_output, send_at)


def make_requests(spec: WorkloadSpec) -> list[RequestSpec]:
    """All `spec.num_requests` requests as a list."""
    if spec.num_requests is None:
        raise ValueError("make_requests needs num_requests")
    return list(iter_requests(spec))
