"""Training examples: the task's prompt + " " + answer for the run's protocol, tokenized as lm-eval does."""

import torch

from ..tasks.registry import TaskSpec, training_pair


def encode_example(tokenizer, prompt: str, answer: str, max_length: int, loss_on: str) -> dict:
    """Token ids and labels for one example.

    The continuation tokens are `encode(prompt + " " + answer)[len(encode(prompt)):]`, the same
    split lm-eval uses when it scores " A" after "...Answer:", so training and evaluation see
    identical tokens (the reference trains on "Answer: A" but evaluates after "Answer: ").
    EOS is appended and supervised (the reference masks it because pad == eos). Over-long
    examples lose their oldest prompt tokens, never the answer.
    """
    context = tokenizer.encode(prompt)
    whole = tokenizer.encode(prompt + " " + answer) + [tokenizer.eos_token_id]
    answer_start = len(context)
    ids = whole[-max_length:]
    answer_start = max(0, answer_start - (len(whole) - len(ids)))
    labels = list(ids) if loss_on == "full" else [-100] * answer_start + ids[answer_start:]
    return {"input_ids": ids, "labels": labels}


def training_examples(
    spec: TaskSpec, docs: list[dict], tokenizer, max_length: int, loss_on: str, protocol: str = "letter"
) -> list[dict]:
    """The registry decides prompt and target per protocol (letters, or answer texts for cloze)."""
    return [encode_example(tokenizer, *training_pair(spec, doc, protocol), max_length, loss_on) for doc in docs]


def collate(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Dynamic padding to the longest example in the batch (right side)."""
    width = max(len(e["input_ids"]) for e in examples)
    batch = {"input_ids": [], "attention_mask": [], "labels": []}
    for example in examples:
        pad = width - len(example["input_ids"])
        batch["input_ids"].append(example["input_ids"] + [pad_id] * pad)
        batch["attention_mask"].append([1] * len(example["input_ids"]) + [0] * pad)
        batch["labels"].append(example["labels"] + [-100] * pad)
    return {key: torch.tensor(value) for key, value in batch.items()}


class LengthGroupedBatches(torch.utils.data.Sampler):
    """Batches of similar length, in a seeded random order: less padding, still shuffled.

    Each pass draws a permutation, cuts it into groups of 16 batches, sorts each group by
    length, splits it into batches and shuffles the batch order, so long and short batches
    still alternate through training.
    """

    GROUP = 16  # batches per sorted group: larger pads less but makes batches less random

    def __init__(self, lengths: list[int], batch_size: int, generator: torch.Generator, drop_last: bool = False):
        self.lengths, self.batch_size, self.generator, self.drop_last = lengths, batch_size, generator, drop_last

    def __len__(self) -> int:
        full, rest = divmod(len(self.lengths), self.batch_size)
        return full + (0 if self.drop_last or not rest else 1)

    def __iter__(self):
        order = torch.randperm(len(self.lengths), generator=self.generator).tolist()
        size = self.batch_size * self.GROUP
        batches = []
        for start in range(0, len(order), size):
            group = sorted(order[start : start + size], key=self.lengths.__getitem__, reverse=True)
            batches += [group[i : i + self.batch_size] for i in range(0, len(group), self.batch_size)]
        if self.drop_last:
            batches = [batch for batch in batches if len(batch) == self.batch_size]
        for index in torch.randperm(len(batches), generator=self.generator).tolist():
            yield batches[index]
