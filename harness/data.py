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
