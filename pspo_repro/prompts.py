"""The paper's prompt: a system message plus the question, rendered by the model's chat template."""

from __future__ import annotations

from typing import Any

# The authors' system message asks for careful step-by-step work in English and a final `#### N` line.
NUMERIC_SYSTEM_PROMPT = (
    "You are a careful math tutor. Solve the problem step by step, in English only. "
    "End your response with a final line of the form '#### <final numeric answer only>'."
)
# MATH-style answers are expressions, so these benchmarks ask for the conventional \boxed{} answer.
LATEX_SYSTEM_PROMPT = (
    "You are a careful math tutor. Solve the problem step by step, in English only. "
    "Put your final answer inside \\boxed{}."
)
SYSTEM_PROMPTS = {"numeric": NUMERIC_SYSTEM_PROMPT, "latex": LATEX_SYSTEM_PROMPT}


def chat_messages(question: str, kind: str = "numeric") -> list[dict[str, str]]:
    """The conversation sent to the model: the system message for ``kind``, then the question."""
    if kind not in SYSTEM_PROMPTS:
        raise ValueError(f"unknown answer kind {kind!r}; allowed: {', '.join(SYSTEM_PROMPTS)}")
    return [
        {"role": "system", "content": SYSTEM_PROMPTS[kind]},
        {"role": "user", "content": question},
    ]


def render_prompt(tokenizer: Any, question: str, kind: str = "numeric") -> str:
    """The prompt text exactly as generation sees it (chat template with the generation prompt)."""
    return tokenizer.apply_chat_template(
        chat_messages(question, kind), tokenize=False, add_generation_prompt=True
    )
