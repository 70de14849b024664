import pytest

from polar_vbll.data import TASKS, TEMPLATES, get_task, list_tasks
from polar_vbll.data.loaders import MCItem
from polar_vbll.errors import PolarVBLLError
from tests.conftest import write_jsonl

ITEM = MCItem("1", "What is water?", ("ice", "gas", "liquid"), 2, context="Water is wet.")


def test_registry_has_every_task_of_the_protocol():
    assert list_tasks() == ["sst2", "wg_s", "wg_m", "arc_c", "arc_e", "obqa", "boolq", "mmlu_chem", "mmlu_phys"]


@pytest.mark.parametrize("name", list(TASKS))
def test_label_words_match_the_class_count(name):
    task = get_task(name)
    assert len(task.label_words()) == task.num_classes
    assert task.eval_split in task.splits


def test_templates_render_to_answer_prompts():
    assert TEMPLATES.get("qa_newline").render(ITEM) == "Question: What is water?\nA. ice\nB. gas\nC. liquid\nAnswer:"
    assert TEMPLATES.get("qa_oneline").render(ITEM).endswith("Choices: A. ice. B. gas. C. liquid. Answer:")
    assert TEMPLATES.get("passage_yes_no").render(ITEM) == "Passage: Water is wet.\nQuestion: What is water?\nAnswer:"
    assert get_task("sst2").label_words() == [" negative", " positive"]
    assert get_task("arc_e").label_words() == [" A", " B", " C", " D", " E"]


def test_template_override_and_validation():
    assert get_task("arc_e", "qa_oneline").template.id == "qa_oneline@1"
    with pytest.raises(PolarVBLLError, match="2 labels for 5 classes"):
        get_task("arc_e", "sentiment")
    with pytest.raises(PolarVBLLError, match="unknown prompt template 'nope'"):
        get_task("arc_e", "nope")


def test_unknown_task_and_split():
    with pytest.raises(PolarVBLLError, match="unknown task 'arc_x'.*known: sst2"):
        get_task("arc_x")
    with pytest.raises(PolarVBLLError, match="task 'sst2' has no split 'test'"):
        get_task("sst2").load("test")


def test_arc_has_variable_choice_counts_within_five_classes():
    counts = {len(item.choices) for item in get_task("arc_e").load("validation")}
    assert max(counts) <= 5 and min(counts) >= 3


def test_user_task_from_file_and_folder(tmp_path):
    rows = [
        {"question": "q1", "choices": ["a", "b", "c"], "answer": 1},
        {"question": "q2", "choices": ["a", "b"], "answer": 0, "context": "ctx"},
    ]
    single = get_task(str(write_jsonl(tmp_path / "mine.jsonl", rows)))
    assert single.name == "mine" and single.splits == ["mine"] and single.num_classes == 3
    assert single.eval_split == "mine" and [it.answer for it in single.load("mine")] == [1, 0]
    write_jsonl(tmp_path / "ds" / "train.jsonl", rows)
    write_jsonl(tmp_path / "ds" / "validation.jsonl", rows[:1])
    folder = get_task(str(tmp_path / "ds"))
    assert folder.splits == ["train", "validation"] and folder.eval_split == "validation"
    with pytest.raises(PolarVBLLError, match="no \\*.jsonl split files"):
        get_task(str((tmp_path / "empty").mkdir() or tmp_path / "empty"))
