"""Diff of two versions (version_diff): schema, rows, profile changes, and the streaming key merge.

Fast: plain files under tmp_path, no registry. The registry-backed diff (catalog + CLI) is in test_cli.py.
"""
from __future__ import annotations

import tracemalloc

import pytest

from dataset_registry.version_diff import DiffError, KeyOrderError, diff_versions, key_diff


def write(path, text: str):
    path.write_text(text, encoding="utf-8", newline="")
    return path


def prof(type_, nulls=0, empty=0, min_=None, max_=None, distinct=0):
    return {"type": type_, "nulls": nulls, "empty": empty, "min": min_, "max": max_, "distinct": distinct}


BASE = "id,item,price\n1,tea,3.50\n2,,0.00\n3,mug,9.99\n5,\"a,b\",1.00\n"
TARGET = "id,item,price,qty\n1,tea,3.50,1\n2,\"\",0.00,2\n5,\"a,b\",1.25,1\n7,cup,2.00,\n"


def test_contract_shape_schema_rows_columns_and_keys(tmp_path):
    base = {"columns": ["id", "item", "price"], "rows": 4,
            "profile": {"id": prof("INT", min_="1", max_="5", distinct=4),
                        "item": prof("VARCHAR", nulls=1, min_="a,b", max_="tea", distinct=3),
                        "price": prof("DECIMAL", min_="0.00", max_="9.99", distinct=4)}}
    target = {"columns": ["id", "item", "price", "qty"], "rows": 4,
              "profile": {"id": prof("INT", min_="1", max_="7", distinct=4),
                          "item": prof("VARCHAR", empty=1, min_="", max_="tea", distinct=4),
                          "price": prof("DOUBLE", min_="0.00", max_="3.50", distinct=4),
                          "qty": prof("INT", nulls=1, min_="1", max_="2", distinct=2)}}
    result = diff_versions(base, target, key=["id"], base_file=write(tmp_path / "b.csv", BASE),
                           target_file=write(tmp_path / "t.csv", TARGET))
    assert result == {
        "schema": {"added": ["qty"], "removed": [], "changed": {"price": {"base": "DECIMAL", "target": "DOUBLE"}}},
        "rows": {"base": 4, "target": 4},
        "columns": {
            "id": {"max": {"base": "5", "target": "7"}},
            "item": {"nulls": {"base": 1, "target": 0}, "empty": {"base": 0, "target": 1},
                     "min": {"base": "a,b", "target": ""}, "distinct": {"base": 3, "target": 4}},
            "price": {"max": {"base": "9.99", "target": "3.50"}},
        },
        # 3 removed, 7 added; 2 changed (NULL -> ""), 5 changed (price); 1 same on the common columns
        "keys": {"added": 1, "removed": 1, "changed": 2},
    }


def test_without_key_there_is_no_keys_entry_and_no_file_is_needed():
    base = {"columns": ["a", "b"], "rows": 10, "profile": {}}
    target = {"columns": ["b", "c"], "rows": 12, "profile": {}}
    assert diff_versions(base, target) == {"schema": {"added": ["c"], "removed": ["a"], "changed": {}},
                                           "rows": {"base": 10, "target": 12}, "columns": {}}


def test_versions_without_profile_take_columns_from_the_header_and_rows_from_the_merge(tmp_path):
    result = diff_versions({}, {}, key=["id"], base_file=write(tmp_path / "b.csv", BASE),
                           target_file=write(tmp_path / "t.csv", TARGET))
    assert result["schema"] == {"added": ["qty"], "removed": [], "changed": {}}
    assert result["rows"] == {"base": 4, "target": 4}
    assert result["keys"] == {"added": 1, "removed": 1, "changed": 2}


def test_same_layout_null_and_empty_string_differ_and_identical_rows_do_not(tmp_path):
    base = write(tmp_path / "b.csv", 'id,v\n1,\n2,""\n3,x\n4,"multi\nline"\n')
    target = write(tmp_path / "t.csv", 'id,v\n1,""\n2,""\n3,x\n4,"multi\nline"\n')
    assert key_diff(base, target, ["id"]) == {"added": 0, "removed": 0, "changed": 1,
                                              "base_rows": 4, "target_rows": 4}


def test_numeric_keys_compare_by_value_and_composite_keys_work(tmp_path):
    base = write(tmp_path / "b.csv", "d,n,v\n2024-01-01,9,a\n2024-01-01,10,b\n2024-01-02,-1,c\n")
    target = write(tmp_path / "t.csv", "d,n,v\n2024-01-01,10,b\n2024-01-01,100,z\n2024-01-02,-1,C\n")
    assert key_diff(base, target, ["d", "n"], types={"n": "INT"}) == {
        "added": 1, "removed": 1, "changed": 1, "base_rows": 3, "target_rows": 3}
    # without types, values that read as numbers still compare as numbers
    assert key_diff(base, target, ["d", "n"])["changed"] == 1


def test_not_sorted_by_the_key_is_refused_naming_file_row_and_order_by(tmp_path):
    base = write(tmp_path / "b.csv", "id,name\n1,b\n2,a\n")
    target = write(tmp_path / "t.csv", "id,name\n1,b\n3,c\n2,a\n")
    with pytest.raises(KeyOrderError) as err:
        key_diff(base, target, ["id"], types={"id": "INT"}, target_label="shop/v2 (orders.csv)")
    message = str(err.value)
    assert "shop/v2 (orders.csv) is not sorted by the key (id)" in message
    assert "data row 3 (id='2') comes after id='3'" in message
    assert "`ORDER BY id`" in message
    # sorted by id, not by name: a name key is refused with a binary-collation ORDER BY
    with pytest.raises(KeyOrderError, match=r"base is not sorted .*data row 2 .*ORDER BY name COLLATE utf8mb4_bin"):
        key_diff(base, target, ["name"], types={"name": "VARCHAR"})
    # a case-insensitive order is not byte order
    ci = write(tmp_path / "ci.csv", "name\napple\nBanana\n")
    with pytest.raises(KeyOrderError, match="data row 2"):
        key_diff(ci, ci, ["name"])


def test_repeated_key_is_refused(tmp_path):
    path = write(tmp_path / "b.csv", "id,v\n1,a\n1,b\n")
    with pytest.raises(KeyOrderError, match=r"not unique on the key \(id\): data row 2 repeats id='1'"):
        key_diff(path, path, ["id"])


def test_bad_inputs(tmp_path):
    base = write(tmp_path / "b.csv", BASE)
    with pytest.raises(DiffError, match=r"key column\(s\) sku not in the file's columns \(id, item, price\)"):
        key_diff(base, base, ["sku"])
    with pytest.raises(DiffError, match="needs both versions' files"):
        diff_versions({}, {}, key=["id"])
    with pytest.raises(DiffError, match="data row 2 has 2 fields, the header has 3"):
        key_diff(base, write(tmp_path / "short.csv", "id,item,price\n1,a,1\n2,b\n"), ["id"])
    with pytest.raises(DiffError, match="data row 1 of text.csv: id=.x. is not a number, but the profile says id is BIGINT"):
        key_diff(base, write(tmp_path / "text.csv", "id,item,price\nx,a,1\n"), ["id"], types={"id": "BIGINT"},
                 target_label="text.csv")
    with pytest.raises(DiffError, match="empty"):
        key_diff(base, write(tmp_path / "empty.csv", ""), ["id"])


def test_memory_stays_bounded_on_a_large_file(tmp_path):
    rows = 300_000
    base, target = tmp_path / "b.csv", tmp_path / "t.csv"
    with open(base, "w", newline="") as b, open(target, "w", newline="") as t:
        b.write("id,name,amount\n")
        t.write("id,name,amount\n")
        for i in range(rows):
            line = f"{i},name {i} with some text,{i % 997}.25\n"
            if i % 10 != 3:  # every tenth row removed
                b.write(line)
            if i % 7 == 5:
                t.write(f"{i},changed,{i % 997}.25\n")
            else:
                t.write(line)
        for i in range(rows, rows + 1000):  # added at the end
            t.write(f"{i},new,1.00\n")
    tracemalloc.start()
    try:
        result = key_diff(base, target, ["id"], types={"id": "INT"})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert base.stat().st_size > 8_000_000
    only_in_target = sum(1 for i in range(rows) if i % 10 == 3)
    changed = sum(1 for i in range(rows) if i % 7 == 5 and i % 10 != 3)
    assert result == {"added": only_in_target + 1000, "removed": 0, "changed": changed,
                      "base_rows": rows - only_in_target, "target_rows": rows + 1000}
    assert peak < 512 * 1024, f"peak {peak} bytes: the merge must not hold the files"


def test_without_types_a_number_like_text_key_keeps_its_text(tmp_path):
    """Pre-profile versions have no types: ``01234`` and ``1234`` (zip codes) are two keys, not one."""
    base = write(tmp_path / "b.csv", "zip,v\n01234,a\n")
    target = write(tmp_path / "t.csv", "zip,v\n1234,a\n")
    assert key_diff(base, target, ["zip"]) == {"added": 1, "removed": 1, "changed": 0, "base_rows": 1, "target_rows": 1}
