"""Training examples: the task's prompt + " " + answer for the run's protocol, tokenized as lm-eval does."""

import functools
from collections.abc import Callable, Sequence
from typing import overload

import torch

from ...base.upstream import length_grouped_sampler
from ...tasks.registry import TaskSpec, training_pair


def encode_example(
    tokenizer, prompt: str, answer: str, max_length: int, loss_on: str, truncation_side: str = "left", supervise_eos: bool = True
) -> dict:
    """Token ids and labels for one example.

    The continuation tokens are `encode(prompt + " " + answer)[len(encode(prompt)):]`, the same
    split lm-eval uses when it scores " A" after "...Answer:", so training and evaluation see
    identical tokens (the reference trains on "Answer: A" but evaluates after "Answer: ").
    EOS is appended. Our defaults: EOS is supervised, and over-long examples lose their oldest
    prompt tokens, never the answer. The reference's data steps (its train.py:113-128): EOS is not
    supervised (its collator masks pad == eos), and over-long examples lose their end, the answer
    first, while BOS and EOS stay (the tokenizer truncates the text and then adds its special tokens).
    """
    context = tokenizer.encode(prompt)
    text = tokenizer.encode(prompt + " " + answer)
    if truncation_side == "left":
        ids = (text + [tokenizer.eos_token_id])[-max_length:]
        answer_start = max(0, len(context) - (len(text) + 1 - len(ids)))
    else:
        ids = text[: max_length - 1] + [tokenizer.eos_token_id]
        answer_start = min(len(context), len(ids) - 1)
    labels = list(ids) if loss_on == "full" else [-100] * answer_start + ids[answer_start:]
    if not supervise_eos:
        labels[-1] = -100
    return {"input_ids": ids, "labels": labels}


class EncodedExamples(Sequence):
    """Training examples, tokenized when first read. A short run reads a few hundred of BoolQ's 9,427
    (10 steps of 8, plus the length-sorted groups they come from): encoding them all up front cost
    more than the training did. The registry decides prompt and target per protocol."""

    def __init__(
        self,
        sources: list[tuple[TaskSpec, list[dict]]],
        tokenizer,
        max_length: int,
        loss_on: str,
        protocol: str = "letter",
        truncation_side: str = "left",
        supervise_eos: bool = True,
    ):
        self._docs = [(spec, doc) for spec, docs in sources for doc in docs]
        self._encode = functools.partial(
            encode_example, tokenizer, max_length=max_length, loss_on=loss_on, truncation_side=truncation_side, supervise_eos=supervise_eos
        )
        self.eos_id = tokenizer.eos_token_id  # the pad id under train.pad_token=eos
        self._protocol = protocol
        self._encoded: dict[int, dict] = {}

    def __len__(self) -> int:
        return len(self._docs)

    @overload
    def __getitem__(self, index: int) -> dict: ...
    @overload
    def __getitem__(self, index: slice) -> list[dict]: ...
    def __getitem__(self, index: int | slice) -> dict | list[dict]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        index = range(len(self))[index]  # negative indices; IndexError past the end
        if index not in self._encoded:
            spec, doc = self._docs[index]
            self._encoded[index] = self._encode(*training_pair(spec, doc, self._protocol))
        return self._encoded[index]

    def length(self, index: int) -> int:
        return len(self[index]["input_ids"])


def collate(examples: list[dict], pad_id: int, side: str = "right", multiple_of: int | None = None) -> dict[str, torch.Tensor]:
    """Dynamic padding to the longest example in the batch, rounded up to `multiple_of`.

    Ours pads on the right; the reference's collator (its train.py:137-138) pads on the left, to a
    multiple of 8. Pads are never attended to nor supervised.
    """
    width = max(len(e["input_ids"]) for e in examples)
    if multiple_of:
        width = -(-width // multiple_of) * multiple_of
    batch: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": [], "labels": []}
    for example in examples:
        pad = width - len(example["input_ids"])
        row = {"input_ids": example["input_ids"], "attention_mask": [1] * len(example["input_ids"]), "labels": example["labels"]}
        for key, fill in (("input_ids", pad_id), ("attention_mask", 0), ("labels", -100)):
            batch[key].append(row[key] + [fill] * pad if side == "right" else [fill] * pad + row[key])
    return {key: torch.tensor(value) for key, value in batch.items()}


def hf_length_grouped_batches(
    length: Callable[[int], int], count: int, batch_size: int, grad_accum: int, generator: torch.Generator, drop_last: bool = False
):
    """HF Trainer's batches under group_by_length (the reference's train.py:194): transformers' own
    LengthGroupedSampler over batch_size × grad_accum (Trainer._get_train_sampler), cut into batches
    of batch_size; it reads every example's length up front. The Trainer draws from torch's global
    generator right after seeding it, its DataLoader taking one 64-bit draw for worker seeds first;
    giving the DataLoader the same `generator` repeats that sequence, so the first epoch's order is
    the Trainer's for the same seed. Later epochs differ: there, the Trainer's generator has also
    served every dropout mask."""
    sampler = length_grouped_sampler()(batch_size * grad_accum, lengths=[length(i) for i in range(count)], generator=generator)
    return torch.utils.data.BatchSampler(sampler, batch_size, drop_last)


class LengthGroupedBatches(torch.utils.data.Sampler):
    """Batches of similar length, in a seeded random order: less padding, still shuffled.

    Each pass draws a permutation, cuts it into groups of 16 batches, sorts each group by
    length, splits it into batches and shuffles the batch order, so long and short batches
    still alternate through training.
    """

    GROUP = 16  # batches per sorted group: larger pads less but makes batches less random

    def __init__(self, length: Callable[[int], int], count: int, batch_size: int, generator: torch.Generator, drop_last: bool = False):
        self.length, self.count, self.batch_size, self.generator, self.drop_last = length, count, batch_size, generator, drop_last

    def __len__(self) -> int:
        full, rest = divmod(self.count, self.batch_size)
        return full + (0 if self.drop_last or not rest else 1)

    def __iter__(self):
        order = torch.randperm(self.count, generator=self.generator).tolist()
        size = self.batch_size * self.GROUP
        groups = [order[start : start + size] for start in range(0, self.count, size)]
        # Batch sizes do not depend on lengths, so the batch order is drawn first and a group is
        # sorted (its lengths read) only when one of its batches comes up.
        batches = [
            (group, start)
            for group, members in enumerate(groups)
            for start in range(0, len(members), self.batch_size)
            if not self.drop_last or len(members) - start >= self.batch_size
        ]
        by_length = {}
        for index in torch.randperm(len(batches), generator=self.generator).tolist():
            group, start = batches[index]
            if group not in by_length:
                by_length[group] = sorted(groups[group], key=self.length, reverse=True)
            yield by_length[group][start : start + self.batch_size]
