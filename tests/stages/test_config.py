from dataclasses import dataclass, field

import pytest

from stages.config import ConfigError, build_dataclass, load_config, parse_overrides


@dataclass(frozen=True)
class Inner:
    scale: float = 0.0


@dataclass(frozen=True)
class Outer:
    lr: float = 1e-3
    names: tuple[str, ...] = ()
    inner: Inner = field(default_factory=Inner)


def test_overrides_nest_parse_yaml_and_coerce_types(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 0.1\nnames: [a]\ninner: {scale: 1}\n")
    values = load_config(path, ["lr=2e-3", "names=[x, y]", "inner.scale=4"])
    config = build_dataclass(Outer, values)
    assert config == Outer(lr=0.002, names=("x", "y"), inner=Inner(scale=4.0))
    assert isinstance(config.inner.scale, float)


def test_config_override_picks_another_file(tmp_path):
    (tmp_path / "a.yaml").write_text("lr: 1\n")
    (tmp_path / "b.yaml").write_text("lr: 2\n")
    assert load_config(tmp_path / "a.yaml", [f"config={tmp_path / 'b.yaml'}"]) == {"lr": 2}


@pytest.mark.parametrize("bad", [["lr"], ["=3"]])
def test_malformed_overrides_are_refused(bad):
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(bad)


def test_unknown_fields_and_non_numbers_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['lrr'\]"):
        build_dataclass(Outer, {"lrr": 1})
    with pytest.raises(ConfigError, match=r"^config: lr must be a number, got 'fast'$"):
        build_dataclass(Outer, {"lr": "fast"})
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


@dataclass(frozen=True)
class Kinds:
    count: int = 0
    rate: float = 0.0
    flag: bool = False
    names: tuple[str, ...] = ()
    rgb: tuple[int, int, int] = (0, 0, 0)
    limit: int | None = None
    inner: Inner = field(default_factory=Inner)


@pytest.mark.parametrize("values, message", [
    ({"count": "abc"}, "count must be an integer, got 'abc'"),
    ({"count": True}, "count must be an integer, got True"),
    ({"count": 1.5}, "count must be an integer, got 1.5"),
    ({"rate": "fast"}, "rate must be a number, got 'fast'"),
    ({"rate": False}, "rate must be a number, got False"),
    ({"flag": "maybe"}, "flag must be true or false, got 'maybe'"),
    ({"flag": 1}, "flag must be true or false, got 1"),
    ({"names": {"a": 1}}, "names must be a list (a string each), got {'a': 1}"),
    ({"names": ["a", 2]}, "names must be a list (a string each), got ['a', 2]"),
    ({"rgb": [1, 2]}, "rgb must be a list of 3 (an integer each), got [1, 2]"),
    ({"limit": "x"}, "limit must be an integer or null, got 'x'"),
    ({"inner": 3}, "inner must be a mapping, got 3"),
    ({"inner": {"scale": "big"}}, "inner.scale must be a number, got 'big'"),
])
def test_a_value_of_the_wrong_type_is_one_error_naming_the_field_and_the_type(values, message):
    with pytest.raises(ConfigError) as info:
        build_dataclass(Kinds, values, where="cfg")
    assert str(info.value) == f"cfg: {message}"


def test_values_convert_to_the_field_type_and_a_single_value_is_a_one_element_list():
    config = build_dataclass(Kinds, {"count": 2.0, "rate": 1, "flag": True, "names": "only.json", "limit": None,
                                     "rgb": [1, 2, 3]})
    assert config == Kinds(count=2, rate=1.0, flag=True, names=("only.json",), rgb=(1, 2, 3), limit=None)
    assert type(config.count) is int and type(config.rate) is float
    assert build_dataclass(Kinds, parse_overrides(["count=1e3", "rate=2e-3"])) == Kinds(count=1000, rate=0.002)


@dataclass(frozen=True)
class Checked:
    trials: int = 1

    def __post_init__(self) -> None:
        if self.trials <= 0:
            raise ValueError("trials must be positive")


def test_validation_in_post_init_is_a_config_error_naming_the_place_once():
    with pytest.raises(ConfigError, match=r"^run: trials must be positive$"):
        build_dataclass(Checked, {"trials": 0}, where="run")
    from stages.cache_spec import cache_spec_from

    with pytest.raises(ConfigError, match=r"^cache: grid and trials must be positive$"):
        cache_spec_from({"trials": 0}, where="cache")
