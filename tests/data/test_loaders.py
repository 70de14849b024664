import hashlib
import json
import lzma
import re
from importlib import resources
from pathlib import Path

import pytest

from polar_vbll.data import DataFile, get_task
from polar_vbll.data.loaders import READERS
from polar_vbll.errors import DataFormatError
from tests.conftest import write_jsonl

AI2_OK = {
    "id": "q1",
    "question": {
        "stem": "Why?",
        "choices": [{"text": "a", "label": "A"}, {"text": "b", "label": "B"}, {"text": "c", "label": "C"}],
    },
    "answerKey": "B",
}
WG_OK = {
    "qID": "w1",
    "sentence": "Tom gave Bob a gift because _ was kind.",
    "option1": "Tom",
    "option2": "Bob",
    "answer": "1",
}


def read(reader: str, path: Path):
    return READERS.get(reader)(DataFile(str(path)))


def assert_error(reader, path, line, field, match):
    with pytest.raises(DataFormatError) as info:
        read(reader, path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}:{line}:" if line else f"{path}:")
    if field:
        assert f"field '{field}'" in message
    assert re.search(match, message), message


def test_ai2_valid_and_digit_answer_key_mapped_by_position(tmp_path):
    digit = {**AI2_OK, "answerKey": "3"}
    digit_labels = {
        **AI2_OK,
        "question": {"stem": "x", "choices": [{"text": "a", "label": "1"}, {"text": "b", "label": "2"}]},
        "answerKey": "2",
    }
    items = read("ai2", write_jsonl(tmp_path / "a.jsonl", [AI2_OK, digit, digit_labels]))
    assert [it.answer for it in items] == [1, 2, 1]
    assert items[0].choices == ("a", "b", "c") and items[0].source.endswith("a.jsonl:1")


@pytest.mark.parametrize(
    ("row", "field", "match"),
    [
        ("{not json", None, "malformed JSON"),
        ({**AI2_OK, "answerKey": "F"}, "answerKey", "not one of the choice labels"),
        ({**AI2_OK, "answerKey": "7"}, "answerKey", "not one of the choice labels"),
        ({k: v for k, v in AI2_OK.items() if k != "answerKey"}, "answerKey", "missing"),
        ({**AI2_OK, "question": {"stem": "", "choices": []}}, "stem", "empty"),
        (
            {**AI2_OK, "question": {"stem": "x", "choices": [{"text": "a", "label": "A"}]}},
            "question.choices",
            "at least 2",
        ),
        ({**AI2_OK, "question": "text"}, "question", "expected dict"),
        ([1, 2], None, "expected a JSON object"),
    ],
)
def test_ai2_bad_rows_name_file_line_field(tmp_path, row, field, match):
    path = write_jsonl(tmp_path / "arc.jsonl", [AI2_OK, row])
    assert_error("ai2", path, 2, field, match)


@pytest.mark.parametrize(
    ("row", "field", "match"),
    [
        ({**WG_OK, "sentence": "No blank here."}, "sentence", "no '_' blank"),
        ({**WG_OK, "answer": "3"}, "answer", "must be '1' or '2'"),
        ({k: v for k, v in WG_OK.items() if k != "option2"}, "option2", "missing"),
        ({**WG_OK, "option1": 5}, "option1", "expected str"),
    ],
)
def test_winogrande_bad_rows(tmp_path, row, field, match):
    assert_error("winogrande", write_jsonl(tmp_path / "wg.jsonl", [WG_OK, WG_OK, row]), 3, field, match)


@pytest.mark.parametrize(
    ("reader", "row", "field", "match"),
    [
        ("sst2", {"idx": 0, "sentence": "good", "label": 2}, "label", "must be 0 or 1"),
        ("sst2", {"idx": 0, "sentence": "good", "label": True}, "label", "expected int"),
        ("boolq", {"question": "is it", "passage": "p", "answer": "yes"}, "answer", "expected bool"),
        ("boolq", {"question": "is it", "answer": True}, "passage", "missing"),
        ("jsonl", {"question": "q", "choices": ["a", "b"], "answer": 2}, "answer", "out of range"),
        ("jsonl", {"question": "q", "choices": ["a", ""], "answer": 0}, "choices[1]", "non-empty"),
        ("jsonl", {"question": "q", "choices": ["a"], "answer": 0}, "choices", "at least 2"),
    ],
)
def test_other_formats_bad_rows(tmp_path, reader, row, field, match):
    assert_error(reader, write_jsonl(tmp_path / "f.jsonl", [row]), 1, field, match)


def test_blank_lines_are_skipped_and_line_numbers_stay_true(tmp_path):
    path = write_jsonl(
        tmp_path / "f.jsonl",
        [
            {"question": "q", "choices": ["a", "b"], "answer": 0},
            "",
            {"question": "q", "choices": ["a", "b"], "answer": 5},
        ],
    )
    assert_error("jsonl", path, 3, "answer", "out of range")


@pytest.mark.parametrize("reader", ["sst2", "winogrande", "ai2", "boolq", "jsonl", "mmlu_csv"])
def test_empty_split_is_an_error(tmp_path, reader):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n", encoding="utf-8")
    assert_error(reader, path, None, None, "contains no examples")


def test_mmlu_csv_quoted_multiline_and_bad_rows(tmp_path):
    good = '"What is\nthis?",a,b,c,d,C\nSecond,a,b,c,d,A\n'
    path = tmp_path / "m.csv"
    path.write_text(good, encoding="utf-8")
    items = read("mmlu_csv", path)
    assert [it.answer for it in items] == [2, 0] and items[0].question == "What is\nthis?"
    assert items[1].source.endswith("m.csv:3")
    path.write_text(good + "q,a,b,c,d,E\n", encoding="utf-8")
    assert_error("mmlu_csv", path, 4, "answer", "must be one of A, B, C, D")
    path.write_text(good + "q,a,b,c\n", encoding="utf-8")
    assert_error("mmlu_csv", path, 4, None, "expected 6 columns")


def test_a_utf8_bom_is_accepted(tmp_path):
    """Editors on Windows start UTF-8 files with a byte-order mark; the first row must still parse."""
    path = tmp_path / "f.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"question": "q", "choices": ["a", "b"], "answer": 1}).encode())
    assert [item.answer for item in read("jsonl", path)] == [1]


def test_missing_file(tmp_path):
    assert_error("jsonl", tmp_path / "nope.jsonl", None, None, "file not found")


def _manifest() -> dict:
    return json.loads(resources.files("polar_vbll.data").joinpath("bundled", "MANIFEST.json").read_text())


def test_bundled_files_are_byte_identical_to_their_sources():
    for relpath, info in _manifest()["files"].items():
        raw = lzma.decompress(resources.files("polar_vbll.data").joinpath("bundled", relpath + ".xz").read_bytes())
        assert len(raw) == info["bytes"] and hashlib.sha256(raw).hexdigest() == info["sha256"], relpath


EXPECTED_COUNTS = {  # from the data README (published split sizes)
    "sst2": {"train": 67349, "validation": 872},
    "wg_s": {"train": 640, "validation": 1267},
    "wg_m": {"train": 2558, "validation": 1267},
    "arc_c": {"train": 1119, "validation": 299, "test": 1172},
    "arc_e": {"train": 2251, "validation": 570, "test": 2376},
    "obqa": {"train": 4957, "validation": 500, "test": 500},
    "boolq": {"train": 9427, "validation": 3270},
    "mmlu_chem": {"train": 5, "validation": 8, "test": 100},
    "mmlu_phys": {"train": 5, "validation": 11, "test": 102},
}


@pytest.mark.parametrize("task", sorted(EXPECTED_COUNTS))
def test_loaded_counts_equal_published_counts(task):
    spec = get_task(task)
    assert {split: len(spec.load(split)) for split in spec.splits} == EXPECTED_COUNTS[task]
    manifest = _manifest()["files"]
    for split, file in spec.files.items():
        assert manifest[file.path]["examples"] == EXPECTED_COUNTS[task][split]


SHARED_README = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "README.md"


@pytest.mark.skipif(not SHARED_README.exists(), reason="no ../shared/data checkout beside the project")
def test_manifest_matches_the_shared_data_readme():
    table = {
        m.group(1): (int(m.group(2)), m.group(3))
        for m in re.finditer(r"^\| ([\w/.-]+) \| (\d+) \| \d+ \| ([0-9a-f]{64}) \|", SHARED_README.read_text(), re.M)
    }
    assert table == {k: (v["examples"], v["sha256"]) for k, v in _manifest()["files"].items()}
