"""The prompt: a system message plus the question, rendered by the model's chat template.

The system message is an experimental input, like a hyperparameter, so it is a named setting
(``system_prompt``) that training prompts, validation and evaluation all read:

- ``default``: ours. A careful step-by-step solution in English ending with a ``#### N`` line; for
  MATH-style answers (``kind="latex"``) the conventional ``\\boxed{}`` instead.
- ``authors``: the authors' exact wording (``format_dataset`` in their ``maths_dataset_loading.py``),
  which they used for every benchmark, MATH-500 included, so it asks for ``####`` whatever the kind.
"""

from __future__ import annotations

from typing import Any

NUMERIC_SYSTEM_PROMPT = (
    "You are a careful math tutor. Solve the problem step by step, in English only. "
    "End your response with a final line of the form '#### <final numeric answer only>'."
)
# MATH-style answers are expressions, so these benchmarks ask for the conventional \boxed{} answer.
LATEX_SYSTEM_PROMPT = (
    "You are a careful math tutor. Solve the problem step by step, in English only. "
    "Put your final answer inside \\boxed{}."
)
AUTHORS_SYSTEM_PROMPT = (
    "You are a careful math solver. Think through the solution and show the steps. Use English only. "
    "End the response with the final answer only in the format: '#### <final numeric answer only>'"
)
# style -> answer kind -> system message
SYSTEM_PROMPTS: dict[str, dict[str, str]] = {
    "default": {"numeric": NUMERIC_SYSTEM_PROMPT, "latex": LATEX_SYSTEM_PROMPT},
    "authors": {"numeric": AUTHORS_SYSTEM_PROMPT, "latex": AUTHORS_SYSTEM_PROMPT},
}
DEFAULT = "default"


def check_system_prompt(name: str) -> None:
    """Raise a ValueError naming ``name`` and the allowed names unless it is a known system prompt."""
    if name not in SYSTEM_PROMPTS:
        raise ValueError(f"unknown system_prompt {name!r}; allowed: {', '.join(SYSTEM_PROMPTS)}")


def system_message(kind: str = "numeric", system_prompt: str = DEFAULT) -> str:
    """The system message of style ``system_prompt`` for answers of ``kind``."""
    check_system_prompt(system_prompt)
    messages = SYSTEM_PROMPTS[system_prompt]
    if kind not in messages:
        raise ValueError(f"unknown answer kind {kind!r}; allowed: {', '.join(messages)}")
    return messages[kind]


def chat_messages(question: str, kind: str = "numeric", system_prompt: str = DEFAULT) -> list[dict[str, str]]:
    """The conversation sent to the model: the system message for ``kind``, then the question."""
    return [
        {"role": "system", "content": system_message(kind, system_prompt)},
        {"role": "user", "content": question},
    ]


def render_prompt(tokenizer: Any, question: str, kind: str = "numeric", system_prompt: str = DEFAULT) -> str:
    """The prompt text exactly as generation sees it (chat template with the generation prompt)."""
    return tokenizer.apply_chat_template(
        chat_messages(question, kind, system_prompt), tokenize=False, add_generation_prompt=True
    )
