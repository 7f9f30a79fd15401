"""Property tests (hypothesis) of the two parsers of input paperops does not control: the model server's request
validator (tasks/model_server.py) and the config path (`--set` parsing, read_profile, recipes.load_config). Whatever
comes in is either accepted as exactly what the consumer expects or refused with the project's own error, which
names the problem without quoting the input — never another exception."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from recipes import load_config
from settings.config import ConfigError, apply_override, parse_override, read_profile
from tasks.model_server import InputSpec, RequestRejected, parse_request

# Every string a generated request holds carries this, so an error message that quotes the request is caught.
MARKER = "QUOTED-INPUT"
TENSOR = InputSpec("tensor", np.dtype("float32"), (-1, 3, 2), {"max_new_tokens": "long", "temperature": "double"})
STRINGS = InputSpec("strings", params={"max_new_tokens": "long"})

scalars = (st.none() | st.booleans() | st.integers() | st.floats()
           | st.integers(min_value=-2**70, max_value=2**70) | st.text(max_size=12).map(MARKER.__add__))
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8).map(MARKER.__add__),
                                                                         inner, max_size=4), max_leaves=30)
# Nested lists shaped like a tensor, with every kind of number (and the odd non-number) at the leaves.
numbers = st.floats() | st.integers(min_value=-2**64, max_value=2**64) | st.booleans() | st.none()
tensors = st.integers(1, 3).flatmap(lambda n: st.lists(st.lists(st.lists(numbers, min_size=1, max_size=3),
                                                                 min_size=1, max_size=4), min_size=n, max_size=n))


def _body(inputs: object, params: object | None = None) -> bytes:
    payload = {"inputs": inputs} if params is None else {"inputs": inputs, "params": params}
    return json.dumps(payload).encode()  # NaN and Infinity go out as the literals a hostile client would send


def _accepted_or_refused_cleanly(body: bytes, spec: InputSpec) -> None:
    try:
        parsed = parse_request(body, spec)
    except RequestRejected as refused:
        assert 400 <= refused.status < 500
        assert MARKER not in refused.message and len(refused.message) < 300
        return
    if spec.kind == "tensor":
        assert parsed.inputs.dtype == spec.dtype and parsed.inputs.ndim == len(spec.shape)
        assert all(want in (-1, got) for want, got in zip(spec.shape, parsed.inputs.shape)) and len(parsed.inputs)
        assert np.isfinite(parsed.inputs).all()
    else:
        assert parsed.inputs.ndim == 1 and len(parsed.inputs) and all(isinstance(s, str) for s in parsed.inputs)
    assert set(parsed.params) <= set(spec.params)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(inputs=json_values | tensors, params=st.none() | json_values)
def test_any_json_request_is_parsed_to_the_signature_or_refused_with_a_4xx_that_quotes_nothing(inputs, params):
    for spec in (TENSOR, STRINGS):
        _accepted_or_refused_cleanly(_body(inputs, params), spec)


@settings(max_examples=300)
@given(body=st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
@example(body=b"[" * 50_000 + b"]" * 50_000)
@example(body=b'{"inputs": ' + b"[" * 5_000 + b"]" * 5_000 + b"}")
@example(body=b'{"inputs": [1' + b"0" * 5_000 + b"]}")
@example(body=b'{"inputs": [[[1e999, 1], [1, 1], [1, 1]]]}')
@example(body=b'{"inputs": ["\\ud800"]}')
def test_any_body_at_all_is_parsed_or_refused_with_a_4xx(body):
    for spec in (TENSOR, STRINGS):
        _accepted_or_refused_cleanly(body, spec)


@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=3, max_dims=3, min_side=1, max_side=4).map(
    lambda shape: (shape[0], 3, 2)), elements=st.floats(width=32, allow_nan=False, allow_infinity=False)))
def test_a_finite_tensor_of_the_signature_arrives_unchanged(array):
    parsed = parse_request(_body(array.tolist(), {"max_new_tokens": 5}), TENSOR)
    assert np.array_equal(parsed.inputs, array) and parsed.params == {"max_new_tokens": 5}


# ------------------------------------------------------------------------------------------------------ configs

PPT_TINY = load_config("ppt", "tiny").as_dict()


def _dotted_keys(section: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in section.items():
        keys.append(prefix + key)
        if isinstance(value, dict):
            keys += _dotted_keys(value, f"{prefix}{key}.")
    return keys


known_keys = st.sampled_from(_dotted_keys(PPT_TINY))
any_keys = known_keys | st.text(st.characters(blacklist_characters="="), min_size=1, max_size=20) \
    | st.builds(lambda k, extra: f"{k}.{extra}", known_keys, st.text(alphabet="abcxyz_0", min_size=1, max_size=6))
yaml_values = (st.text(max_size=40)
               | json_values.map(json.dumps)
               | st.sampled_from(["2001-13-45", "2001-01-01", "!!float abc", "!!timestamp x", "!!binary /w==",
                                  "!!set {a, b}", "!!int 0x", "&a [*a]", "{a: " * 40 + "1" + "}" * 40,
                                  "!!python/object:os.system x", ".nan", "-.inf", "0x1F", "~", "[a, [b, {c: d}]]"]))
# Eight levels of anchors, each nine references to the one before: 9**8 leaves from a few hundred characters.
billion_laughs = "[&a0 1, " + ", ".join(f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)) + "]"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.text(max_size=60) | st.builds("{}={}".format, any_keys, yaml_values))
@example(text="seed=" + "[" * 1_500 + "]" * 1_500)  # PyYAML's composer recurses: RecursionError
@example(text="data.expect=" + billion_laughs)
def test_any_override_parses_to_plain_data_or_raises_a_config_error_naming_it(text):
    key = text.partition("=")[0].strip()
    try:
        keys, value = parse_override(text)
    except ConfigError as exc:
        assert key in str(exc) if "=" in text and key else "expected key=value" in str(exc)
        return
    assert keys == key.split(".")
    json.dumps(value)  # plain data: what JSON holds


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=any_keys, value=yaml_values)
def test_load_config_with_any_override_validates_or_names_the_key(key, value):
    text = f"{key}={value}"
    try:
        resolved = load_config("ppt", "tiny", [text])
    except ConfigError as exc:  # the key, or the part of it the schema stops at (a default section has no YAML)
        parts = key.strip().split(".")
        assert any(".".join(parts[:n]) in str(exc) for n in range(len(parts), 0, -1)), str(exc)
        return
    resolved.digest()  # what the pipeline computes first: a validated config is always hashable


@settings(max_examples=100)
@given(path=st.lists(st.text(max_size=6), min_size=1, max_size=4), value=json_values)
def test_apply_override_sets_the_value_or_says_which_prefix_is_a_value(path, value):
    data = json.loads(json.dumps(PPT_TINY))
    try:
        apply_override(data, path, value, "k=v")
    except ConfigError as exc:
        assert "is a value, not a section" in str(exc)
        return
    node = data
    for part in path:
        node = node[part]
    assert node is value or node == value


@settings(max_examples=25)
@given(profile=st.text(max_size=12))
def test_read_profile_knows_its_profiles_or_names_them(profile):
    path = Path(__file__).resolve().parents[2] / "configs" / "ppt.yaml"
    try:
        data = read_profile(path, profile)
    except ConfigError as exc:
        assert "profiles: tiny, full" in str(exc)
        return
    assert profile in ("tiny", "full") and isinstance(data, dict)


def test_the_float32_bound_is_the_dtype_maximum():
    # A check the properties above rely on: the largest finite float32 passes, the next float64 above it does not.
    largest = float(np.finfo(np.float32).max)
    row = [[largest, 0.0]] * 3
    assert parse_request(_body([row]), TENSOR).inputs.max() == np.float32(largest)
    with pytest.raises(RequestRejected, match="beyond the float32 range"):
        parse_request(_body([[[math.nextafter(largest, math.inf), 0.0]] * 3]), TENSOR)


def test_the_input_spec_is_read_from_the_logged_signature():
    from mlflow.models import infer_signature

    images = infer_signature(np.zeros((2, 28, 28), np.float32), np.zeros((2, 10), np.float32))
    assert InputSpec.from_signature(images) == InputSpec("tensor", np.dtype("float32"), (-1, 28, 28), {})
    prompts = infer_signature(["ROMEO:\n", "To be"], ["a", "b"], params={"max_new_tokens": 32})
    spec = InputSpec.from_signature(prompts)
    assert spec == InputSpec("strings", None, (-1,), {"max_new_tokens": "long"})
    parsed = parse_request(_body(["ROMEO:\n"], {"max_new_tokens": 4}), spec)
    assert parsed.inputs.tolist() == ["ROMEO:\n"] and parsed.params == {"max_new_tokens": 4}
    with pytest.raises(ValueError, match="one unnamed input"):
        InputSpec.from_signature(infer_signature({"a": np.zeros(2), "b": np.zeros(2)}))
