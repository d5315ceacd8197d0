import pytest

from dataset_registry.names import InvalidNameError, tag_name, validate_output, validate_project, validate_version

HOSTILE = ["$(touch x)", "--upload-pack=x", "-x", "a b", "..", "a/b", "", "x" * 65, "../x", "/etc/passwd",
           "v1\x00", "v1\n", "ѵ1", "v１", "x" * 10_000, "v1..2", "v1.lock", "v.", ";rm -rf /", "`id`", None, 12]


@pytest.mark.parametrize("bad", HOSTILE)
def test_hostile_versions_are_refused_naming_the_rule(bad):
    with pytest.raises(InvalidNameError) as err:
        validate_version(bad)
    assert "must match" in str(err.value) or "git tags may not" in str(err.value)


@pytest.mark.parametrize("good", ["v1", "2024-03-01", "v20240302T000000", "A.b_c-9", "x" * 64])
def test_valid_versions(good):
    assert validate_version(good) == good


@pytest.mark.parametrize("bad", ["Demo", "1abc", "a" * 41, "a/b", "../a", "-a", "a b", "", "démo"])
def test_bad_project_names(bad):
    with pytest.raises(InvalidNameError, match=r"\^\[a-z\]"):
        validate_project(bad)


@pytest.mark.parametrize("bad", ["../train.csv", "a/b.csv", ".hidden", "-x.csv", "train.csv.dvc", ""])
def test_bad_output_names(bad):
    with pytest.raises(InvalidNameError):
        validate_output(bad)


def test_tag_scheme():
    assert tag_name("demo", "v1") == "demo/v1"


def test_none_is_a_reserved_version():
    with pytest.raises(InvalidNameError, match="reserved"):
        validate_version("None")
    assert validate_version("None1") == "None1"
