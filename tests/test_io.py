import pytest

from proxynorm.files import atomic_target


def test_atomic_target_replaces_on_success_and_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "sub" / "f.json"
    with atomic_target(path) as tmp:
        tmp.write_text("new")
    assert path.read_text() == "new"
    with pytest.raises(RuntimeError), atomic_target(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError
    assert path.read_text() == "new" and [p.name for p in path.parent.iterdir()] == ["f.json"]
    with atomic_target(path) as a, atomic_target(path) as b:  # concurrent writers
        assert a != b
        a.write_text("a")
        b.write_text("b")
    assert path.read_text() == "a"  # the last rename wins; nothing is left behind
    assert [p.name for p in path.parent.iterdir()] == ["f.json"]
