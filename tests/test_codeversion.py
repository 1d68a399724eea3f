"""The code version a rule carries as a parameter: it changes with what the named modules do, and
only with that."""

import ast

import pytest

from transfergrid.codeversion import code_version, normalised_source

MODULE = '''"""A module docstring."""

import math


def area(radius):
    """A function docstring."""
    # A comment.
    return math.pi * radius**2


class Circle:
    """A class docstring."""

    def describe(self):
        """Only a docstring."""
'''


@pytest.fixture
def package(tmp_path):
    (tmp_path / "geometry.py").write_text(MODULE)
    (tmp_path / "units.py").write_text("SCALE = 1.0\n")
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "page.html.j2").write_text("<p>{{ area }}</p>\n")
    return tmp_path


def version(package, *names):
    return code_version(package, names or ("geometry.py", "units.py", "templates/page.html.j2"))


def test_the_version_is_a_short_digest_independent_of_the_order_of_the_names(package):
    first = version(package)
    assert len(first) == 16 and int(first, 16) >= 0
    assert version(package, "templates/page.html.j2", "units.py", "geometry.py", "units.py") == first


@pytest.mark.parametrize(
    "edit",
    [
        lambda text: text.replace("radius**2", "radius**3"),
        lambda text: text + "\nDEFAULT_RADIUS = 1\n",
        lambda text: text.replace("import math", "import math as m").replace("math.pi", "m.pi"),
    ],
)
def test_a_change_to_what_the_code_does_changes_the_version(package, edit):
    before = version(package)
    module = package / "geometry.py"
    module.write_text(edit(module.read_text()))
    assert version(package) != before


@pytest.mark.parametrize(
    "edit",
    [
        lambda text: text.replace("# A comment.", "# Another comment, longer."),
        lambda text: text.replace("A function docstring.", "What the area of a circle is."),
        lambda text: text.replace('"""A module docstring."""', '"""Geometry.\n\nTwo lines now."""'),
        lambda text: text.replace("return math.pi * radius**2", "return (\n        math.pi * radius ** 2\n    )"),
        lambda text: text + "\n\n# a trailing comment\n",
    ],
)
def test_comments_docstrings_and_layout_leave_the_version_alone(package, edit):
    before = version(package)
    module = package / "geometry.py"
    module.write_text(edit(module.read_text()))
    assert version(package) == before


def test_a_body_that_was_only_a_docstring_stays_valid_python(package):
    normalised = normalised_source(package / "geometry.py").decode()
    ast.parse(normalised)
    assert "docstring" not in normalised and "comment" not in normalised


def test_other_files_count_byte_for_byte(package):
    before = version(package)
    (package / "templates" / "page.html.j2").write_text("<p>{{ area }} </p>\n")
    assert version(package) != before


def test_a_file_counts_under_its_name(package):
    before = version(package, "units.py")
    (package / "scale.py").write_text((package / "units.py").read_text())
    assert version(package, "scale.py") != before


def test_a_module_outside_the_named_ones_does_not_count(package):
    before = version(package)
    (package / "other.py").write_text("X = 1\n")
    assert version(package) == before


def test_a_named_file_that_does_not_exist_is_an_error(package):
    with pytest.raises(FileNotFoundError, match=r"missing\.py"):
        version(package, "missing.py")
