"""The three steering-judge rubrics, the rating parser and the overall score (AXBENCH.md §3.2).

AxBench rates each steered generation with three separate ternary prompts (concept, instruction,
fluency) because one combined prompt rates worse, and fluency is needed because word salad can
score on concept and instruction. The prompts below are written for axflow; they keep AxBench's
scales and its `Rating: [[s]]` answer format so replies parse the same way.

Two differences. The prompt texts are our own (same scales and answer format; not switchable).
Deviation: AxBench scores an unparseable reply as 0. `parse_rating` returns None instead, so a
judge failure is never mistaken for a bad generation; the judge config key `unparseable: zero`
(protocol=axbench) restores AxBench's rule in the OpenAI-compatible judges.
"""

from __future__ import annotations

import re

ASPECTS = ("concept", "instruction", "fluency")

_ANSWER_FORMAT = (
    "Start with a short explanation of your judgement (one to three sentences). Then write, as "
    "the very last line, `Rating: [[s]]`, where s is 0, 1 or 2."
)

CONCEPT_PROMPT = (
    "You will check a piece of text for one thing only: whether it involves a given concept.\n\n"
    "Concept: {concept}\n\n"
    "Text:\n<<<\n{generation}\n>>>\n\n"
    "Do not judge grammar, coherence, style or completeness; look only at how the concept shows "
    "up in the text.\n"
    "0 = the concept does not appear in the text.\n"
    "1 = the concept appears, but only faintly, in passing, or forced in awkwardly.\n"
    "2 = the concept is clearly present and fits naturally into the text.\n\n" + _ANSWER_FORMAT
)

INSTRUCTION_PROMPT = (
    "You will check whether a piece of text is on the topic of an instruction it was written "
    "in response to.\n\n"
    "Instruction: {instruction}\n\n"
    "Text:\n<<<\n{generation}\n>>>\n\n"
    "Do not judge whether the text is correct, complete, helpful or well written; look only at "
    "whether it is about what the instruction asks.\n"
    "0 = the text has nothing to do with the instruction.\n"
    "1 = the text touches the instruction's topic only loosely or indirectly.\n"
    "2 = the text is clearly about what the instruction asks.\n\n" + _ANSWER_FORMAT
)

FLUENCY_PROMPT = (
    "You will check how fluent a piece of text is.\n\n"
    "Text:\n<<<\n{generation}\n>>>\n\n"
    "Judge only the language: whether it reads as natural, grammatical prose. Do not judge "
    "whether it is relevant, correct or complete, and do not penalise it for stopping "
    "mid-sentence at the end.\n"
    "0 = not fluent: hard or impossible to understand, or stuck repeating itself.\n"
    "1 = understandable, but with noticeable errors, awkward phrasing or odd word choices.\n"
    "2 = fluent: reads naturally, like text a careful writer would produce.\n\n" + _ANSWER_FORMAT
)

PROMPTS = {
    "concept": CONCEPT_PROMPT,
    "instruction": INSTRUCTION_PROMPT,
    "fluency": FLUENCY_PROMPT,
}


def judge_prompt(aspect: str, *, concept: str, instruction: str, generation: str) -> str:
    """The judge prompt for one aspect ("concept", "instruction" or "fluency") of a generation."""
    try:
        template = PROMPTS[aspect]
    except KeyError:
        raise ValueError(f"unknown judge aspect {aspect!r}; use one of {ASPECTS}") from None
    # str.replace, not str.format: generations may contain braces.
    return (
        template.replace("{concept}", concept)
        .replace("{instruction}", instruction)
        .replace("{generation}", generation)
    )


_RATING = re.compile(r"rating\s*:", re.IGNORECASE)
_STRIP = " \t\r\n[]\"'*`"


def parse_rating(text: str | None) -> float | None:
    """The score after the last "Rating:" in a judge reply, or None if there is no valid one.

    Brackets, quotes, asterisks and backticks around the number and a trailing period are
    ignored; only the first line after the marker is read. Scores outside [0, 2] are invalid.
    """
    if not text:
        return None
    matches = list(_RATING.finditer(text))
    if not matches:
        return None
    tail = text[matches[-1].end() :].strip(_STRIP)
    value = tail.splitlines()[0] if tail else ""
    value = value.strip(_STRIP).rstrip(".").strip(_STRIP)
    try:
        score = float(value)
    except ValueError:
        return None
    if not 0.0 <= score <= 2.0:  # also rejects nan
        return None
    return score
