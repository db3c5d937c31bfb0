"""Data layer: examples, the word tokenizer, file loaders and task generators."""

from coconut_pytorch.data.example import Example
from coconut_pytorch.data.loaders import (
    format_icot_line,
    load_examples,
    load_icot_examples,
    load_json_examples,
    parse_icot_line,
    save_icot_examples,
    save_json_examples,
)
from coconut_pytorch.data.tasks import (
    TASKS,
    MultiplicationTask,
    PointerChaseTask,
    ProsQATask,
    RunningSumTask,
    Task,
    get_task,
    parse_prosqa_question,
    prosqa_statistics,
    verify_prosqa_example,
)
from coconut_pytorch.data.tokenizer import WordTokenizer, normalize

__all__ = [
    "Example",
    "WordTokenizer",
    "normalize",
    "load_examples",
    "load_json_examples",
    "load_icot_examples",
    "parse_icot_line",
    "save_json_examples",
    "save_icot_examples",
    "format_icot_line",
    "TASKS",
    "get_task",
    "Task",
    "ProsQATask",
    "MultiplicationTask",
    "RunningSumTask",
    "PointerChaseTask",
    "parse_prosqa_question",
    "verify_prosqa_example",
    "prosqa_statistics",
]
