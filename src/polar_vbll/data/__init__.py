"""Tasks, their bundled data and the encoding of prompts into batches."""

from .encoding import EncodedExample, collate, encode_items, encoded_batches, iter_batches, label_token_ids
from .loaders import READERS, DataFile, MCItem
from .tasks import TASKS, TEMPLATES, PromptTemplate, TaskSpec, get_task, list_tasks

__all__ = [
    "DataFile",
    "EncodedExample",
    "MCItem",
    "PromptTemplate",
    "READERS",
    "TASKS",
    "TEMPLATES",
    "TaskSpec",
    "collate",
    "encode_items",
    "encoded_batches",
    "get_task",
    "iter_batches",
    "label_token_ids",
    "list_tasks",
]
