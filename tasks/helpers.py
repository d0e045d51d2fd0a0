"""Small per-task functions named from the task YAMLs: schema adapters, derived fields, generators."""

import random


def boolq_from_olmes(doc: dict) -> dict:
    """OLMES BoolQ request docs → the super_glue schema (passage, question, label: 1 = yes)."""
    passage, _, rest = doc["query"].rpartition("\nQuestion: ")
    question = rest.removesuffix("\nAnswer:").removesuffix("?")
    return {"idx": doc["idx"], "passage": passage, "question": question, "label": int(doc["choices"][doc["gold"]] == "yes")}


def boolq_from_google(doc: dict) -> dict:
    """google/boolq (answer: bool) → the super_glue schema."""
    return {"passage": doc["passage"], "question": doc["question"], "label": int(doc["answer"])}


FRUITS = ["apple", "banana", "cherry", "grape", "lemon", "mango", "peach", "pear", "plum", "kiwi", "melon", "lime"]
COLORS = ["red", "blue", "green", "black", "white", "pink", "brown", "gray", "cyan", "teal", "navy", "gold"]


def fruit_or_color() -> dict[str, list[dict]]:
    """A learnable two-way task for checking that training works: is the word a fruit or a colour?"""
    rng = random.Random(0)

    def draw(count: int) -> list[dict]:
        docs = []
        for idx in range(count):
            label = rng.randrange(2)
            docs.append({"idx": idx, "word": rng.choice(COLORS if label else FRUITS), "label": label})
        return docs

    return {"train": draw(512), "eval": draw(128)}
